"""The compressed memory file (``mem.fcz``): guest memory as independently decompressible zstd frames.

Sabre and CodeSandbox keep snapshot memory compressed and decompress what a restore needs; a page
server can then serve any page after decompressing one frame, never the whole file. This module is the
format's one owner: :func:`compress_memory` writes it, :class:`ZMemFile` reads and validates it (every
other module goes through them). Layout, little-endian::

    header   64 B  magic b"FCRZMEM1", u64 mem_size, u64 frame_size, u64 n_frames, u64 n_extents,
                   u64 index_offset, u32 meta_len, u32 crc32 (of everything from index_offset to the end),
                   u64 reserved (0)
    frames   from offset 64: one zstd frame per frame_size bytes of memory that holds data, in memory
             order, each with its content size and zstd's content checksum; a frame whose pages are all
             zero is not stored at all (length 0)
    index    at index_offset: n_frames × u64 file offset, n_frames × u32 compressed length (0: zeros),
             n_extents × (u64 start, u64 end): the data map, 4 KiB pages that are neither holes of the
             source file nor all zero (the page server serves the rest with UFFDIO_ZEROPAGE)
    meta     JSON (meta_len bytes): codec, level, zstd version, the source's size and content SHA-256
             (all of it, holes read as zeros: what ``decompress_memory`` must give back), snapshot id

The index sits at the end so the file is written in one pass; the header is written last. Every frame
offset must equal 64 plus the lengths before it, so a damaged index, a truncated file or a damaged
frame is found (at open, or when that frame is read) and named in one line, never served as zeros.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from firecracer.errors import FirecracerError, FormatError
from firecracer.fsio import atomic_output, open_regular
from firecracer.uffd.memfile import scan_data

MAGIC = b"FCRZMEM1"
FORMAT = "firecracer-zmem"
PAGE = 4096
HEADER = struct.Struct("<8sQQQQQIIQ")
#: 16 KiB: a JVM's memory compressed 2.9x in 16 KiB frames and 3.1x in 64 KiB ones, but one frame took 25 µs
#: to decompress against 68 µs, and an on-demand fault decompresses a frame (docs/uffd.md)
DEFAULT_FRAME = 16 << 10
DEFAULT_LEVEL = 3
MAX_FRAME = 64 << 20
_ZERO = bytes(1 << 20)


def _extents(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint64]:
    """(start, end) byte pairs of the runs of True pages in ``mask`` (one bool per 4 KiB page)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return (edges.reshape(-1, 2).astype(np.uint64) * np.uint64(PAGE)).reshape(-1, 2)


@dataclass(frozen=True)
class ZMemInfo:
    """What :func:`compress_memory` wrote: sizes in bytes, the data map's size, the time it took."""

    path: Path
    mem_size: int
    frame_size: int
    frames: int
    data_frames: int
    data_bytes: int  # 4 KiB pages holding non-zero data
    compressed_bytes: int  # the whole file
    content_sha256: str
    level: int
    ms: float

    @property
    def ratio(self) -> float:
        """Data bytes per compressed byte (what zstd saves on the pages that hold data)."""
        return self.data_bytes / self.compressed_bytes if self.compressed_bytes else 0.0


def compress_memory(src: str | Path, out: str | Path, *, level: int = DEFAULT_LEVEL,
                    frame_size: int = DEFAULT_FRAME, snapshot_id: str | None = None) -> ZMemInfo:
    """Write ``out`` (atomically) from the raw memory file ``src``; reads only its data extents.

    :raises FirecracerError: bad level or frame size, or ``src`` unreadable (one line).
    """
    if frame_size < PAGE or frame_size > MAX_FRAME or frame_size & (frame_size - 1):
        raise FirecracerError(f"frame size {frame_size} must be a power of two from 4 KiB to 64 MiB")
    if not 1 <= level <= 22:
        raise FirecracerError(f"zstd level {level} must be 1..22")
    t0 = time.perf_counter()
    src = Path(src)
    fd = open_regular(src, "memory file")
    try:
        size = os.fstat(fd).st_size
        if size <= 0 or size % PAGE:
            raise FormatError(src, 0, f"memory file of {size} bytes is not a whole number of 4 KiB pages")
        n_frames = -(-size // frame_size)
        starts, ends = scan_data(fd, size)
        has = np.zeros(n_frames, dtype=bool)
        for s, e in zip(starts, ends, strict=True):
            has[s // frame_size:-(-e // frame_size)] = True
        nonzero = np.zeros(size // PAGE, dtype=bool)
        lens = np.zeros(n_frames, dtype=np.uint32)
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        sha = hashlib.sha256()
        pos = HEADER.size
        done = 0  # content hashed up to here
        out = Path(out)
        with atomic_output(out, "compressed memory file") as tmp, open(tmp, "wb") as fh:
            fh.write(bytes(HEADER.size))
            for i in np.flatnonzero(has).tolist():
                off = i * frame_size
                length = min(frame_size, size - off)
                buf = os.pread(fd, length, off)
                if len(buf) != length:
                    raise FirecracerError(f"{src}: changed while it was compressed (short read at {off:#x})")
                pages = np.frombuffer(buf, dtype=np.uint64).reshape(-1, PAGE // 8).any(axis=1)
                _hash_zeros(sha, off - done)
                sha.update(buf)
                done = off + length
                if not pages.any():
                    continue
                nonzero[off // PAGE:off // PAGE + pages.size] = pages
                frame = cctx.compress(buf)
                fh.write(frame)
                lens[i] = len(frame)
                pos += len(frame)
            _hash_zeros(sha, size - done)
            ext = _extents(nonzero)
            offs = np.full(n_frames, HEADER.size, dtype=np.uint64)
            offs[1:] += np.cumsum(lens[:-1], dtype=np.uint64)
            index = offs.astype("<u8").tobytes() + lens.astype("<u4").tobytes() + ext.astype("<u8").tobytes()
            meta = json.dumps({"format": FORMAT, "version": 1, "codec": "zstd", "level": level,
                               "zstd": zstandard.ZSTD_VERSION, "source": {"path": str(src.resolve()),
                               "size": size, "sha256": sha.hexdigest()},
                               "snapshot_id": snapshot_id}).encode()
            tail = index + meta
            fh.write(tail)
            fh.seek(0)
            fh.write(HEADER.pack(MAGIC, size, frame_size, n_frames, len(ext), pos, len(meta),
                                 zlib.crc32(tail), 0))
    finally:
        os.close(fd)
    total = pos + len(tail)
    return ZMemInfo(out, size, frame_size, n_frames, int((lens > 0).sum()), int(nonzero.sum()) * PAGE, total,
                    sha.hexdigest(), level, (time.perf_counter() - t0) * 1000)


def _hash_zeros(sha: Any, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZERO))
        sha.update(_ZERO[:k] if k < len(_ZERO) else _ZERO)
        n -= k


def is_zmem(path: str | Path) -> bool:
    """Whether ``path`` is a regular file starting with this format's magic (False if it cannot be read;
    a FIFO or device is never read, so this cannot block)."""
    try:
        fd = open_regular(path)
    except FormatError:
        return False
    try:
        return os.pread(fd, len(MAGIC), 0) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


class ZMemFile:
    """A compressed memory file opened and validated (header, index CRC, frame offsets, data map).

    ``frame_off``/``frame_len`` are the frame table, ``data_start``/``data_end`` the data map (sorted,
    4 KiB aligned). :meth:`read_frame` decompresses one frame (checked: zstd checksum and length).

    :raises FormatError: not this format, truncated, a damaged or inconsistent index (one line naming
        the file and what is wrong).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd = open_regular(self.path, "compressed memory file")
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        self._dctx = zstandard.ZstdDecompressor()

    def _bad(self, why: str) -> FormatError:
        return FormatError(self.path, 0, why)

    def _load(self) -> None:
        self.file_size = fsize = os.fstat(self.fd).st_size
        head = os.pread(self.fd, HEADER.size, 0)
        if len(head) >= len(MAGIC) and head[:len(MAGIC)] != MAGIC:
            raise self._bad(f"not a firecracer compressed memory file (magic {head[:8]!r}, want {MAGIC!r})")
        if len(head) < HEADER.size:
            raise self._bad(f"truncated: {fsize} bytes, shorter than its {HEADER.size}-byte header")
        _m, size, fs, n, n_ext, idx_off, meta_len, crc, _r = HEADER.unpack(head)
        if size <= 0 or size % PAGE or fs < PAGE or fs > MAX_FRAME or fs & (fs - 1) or n != -(-size // fs):
            raise self._bad(f"header is damaged (memory {size} bytes, frame size {fs}, {n} frames)")
        if n_ext > size // PAGE:
            raise self._bad(f"header is damaged ({n_ext} data extents for {size // PAGE} pages)")
        index_len = 12 * n + 16 * n_ext
        end = idx_off + index_len + meta_len
        if idx_off < HEADER.size or fsize < end:
            raise self._bad(f"truncated: {fsize:,} bytes, its header says {end:,} (frames end at "
                            f"{idx_off:,}, then a {index_len:,}-byte index and {meta_len}-byte meta)")
        if fsize > end:
            raise self._bad(f"{fsize - end:,} bytes after the end its header gives ({end:,}): damaged or "
                            "appended to")
        tail = os.pread(self.fd, index_len + meta_len, idx_off)
        if len(tail) != index_len + meta_len:
            raise self._bad("truncated while being read")
        if zlib.crc32(tail) != crc:
            raise self._bad(f"index is damaged (CRC-32 of the {index_len + meta_len:,} bytes at "
                            f"{idx_off:#x} does not match the header)")
        self.frame_off = np.frombuffer(tail[:8 * n], dtype="<u8").astype(np.uint64)
        self.frame_len = np.frombuffer(tail[8 * n:12 * n], dtype="<u4").astype(np.uint64)
        ext = np.frombuffer(tail[12 * n:index_len], dtype="<u8").astype(np.uint64).reshape(-1, 2)
        want = np.full(n, HEADER.size, dtype=np.uint64)
        want[1:] += np.cumsum(self.frame_len[:-1], dtype=np.uint64)
        bad = np.flatnonzero(want != self.frame_off)
        if bad.size or int(self.frame_len.sum()) != idx_off - HEADER.size:
            i = int(bad[0]) if bad.size else n - 1
            raise self._bad(f"index is inconsistent: frame {i} at {int(self.frame_off[i]):#x}, expected "
                            f"{int(want[i]):#x} (frames must lie back to back up to {idx_off:#x})")
        if ext.size and ((ext % np.uint64(PAGE)).any() or (ext[:, 1] <= ext[:, 0]).any()
                         or (ext[1:, 0] <= ext[:-1, 1]).any() or int(ext[-1, 1]) > size):
            raise self._bad("index is inconsistent: data extents unaligned, unsorted, overlapping or beyond "
                            "the memory")
        covered = np.zeros(n, dtype=bool)
        for s, e in ext.tolist():
            covered[s // fs:-(-e // fs)] = True
        empty = np.flatnonzero(covered & (self.frame_len == 0))
        if empty.size:
            raise self._bad(f"index is inconsistent: frame {int(empty[0])} holds data but has no bytes")
        try:
            meta = json.loads(tail[index_len:])
        except ValueError as exc:
            raise self._bad(f"meta is not JSON ({exc})") from None
        self.meta: dict[str, Any] = meta if isinstance(meta, dict) else {}
        self.size, self.frame_size, self.n_frames = int(size), int(fs), int(n)
        self.data_start: list[int] = ext[:, 0].astype(int).tolist()
        self.data_end: list[int] = ext[:, 1].astype(int).tolist()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ZMemFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def content_sha256(self) -> str | None:
        """SHA-256 of the uncompressed memory (holes as zeros), as recorded when it was written."""
        src = self.meta.get("source")
        return str(src["sha256"]) if isinstance(src, dict) and src.get("sha256") else None

    @property
    def data_bytes(self) -> int:
        """Bytes of the data map (pages that hold non-zero data)."""
        return sum(e - s for s, e in zip(self.data_start, self.data_end, strict=True))

    def frame_bytes(self, i: int) -> int:
        """Uncompressed length of frame ``i`` (the last may be short)."""
        return min(self.frame_size, self.size - i * self.frame_size)

    def read_frame(self, i: int) -> bytes:
        """Frame ``i`` decompressed (zeros for a frame not stored).

        :raises FormatError: the frame is damaged or truncated (names it, its offset and the memory it holds).
        """
        clen, off = int(self.frame_len[i]), int(self.frame_off[i])
        ulen = self.frame_bytes(i)
        if clen == 0:
            return bytes(ulen)
        where = (f"frame {i} (file offset {off:#x}, {clen:,} bytes; memory {i * self.frame_size:#x}-"
                 f"{i * self.frame_size + ulen:#x})")
        buf = os.pread(self.fd, clen, off)
        if len(buf) != clen:
            raise self._bad(f"{where} is truncated ({len(buf)} bytes readable)")
        try:
            data = self._dctx.decompress(buf, max_output_size=ulen)
        except zstandard.ZstdError as exc:
            raise self._bad(f"{where} is damaged: {exc}") from None
        if len(data) != ulen:
            raise self._bad(f"{where} is damaged: decompressed to {len(data):,} bytes, not {ulen:,}")
        return data

    def pread(self, length: int, off: int) -> bytes:
        """``length`` bytes of the uncompressed memory at ``off`` (decompresses the frames it spans)."""
        fs = self.frame_size
        out = bytearray()
        pos, end = off, min(off + length, self.size)
        while pos < end:
            i = pos // fs
            frame = self.read_frame(i)
            a = pos - i * fs
            b = min(len(frame), end - i * fs)
            out += frame[a:b]
            pos = i * fs + b
        return bytes(out)

    def check_record(self, record: dict[str, Any], where: str) -> None:
        """Refuse a file that is not the one ``record`` (``snapshot.json``'s ``mem.compressed``) describes.

        :raises FormatError: sizes, frame size, frame count or content hash differ (names both files).
        """
        checks = (("memory size", record.get("size"), self.size),
                  ("frame size", record.get("frame_size"), self.frame_size),
                  ("frames", record.get("frames"), self.n_frames),
                  ("file size", record.get("compressed_bytes"), self.file_size),
                  ("content SHA-256", (record.get("raw") or {}).get("sha256"), self.content_sha256))
        for what, want, have in checks:
            if want is not None and want != have:
                raise self._bad(f"does not match {where}: {what} {have!r} here, {want!r} there (replaced or "
                                "damaged; recompress the snapshot)")

    def decompress_to(self, out: str | Path) -> str:
        """Write the uncompressed memory to ``out`` (atomically, sparse: only the data map is written) and
        return its content SHA-256.

        :raises FormatError: a damaged frame, or contents whose hash is not the recorded one.
        """
        sha = hashlib.sha256()
        fs = self.frame_size
        with atomic_output(out, "memory file") as tmp, open(tmp, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # guest memory
            fh.truncate(self.size)
            done = 0
            for i in np.flatnonzero(self.frame_len).tolist():
                data = self.read_frame(i)
                _hash_zeros(sha, i * fs - done)
                sha.update(data)
                done = i * fs + len(data)
                for s, e in self._extents_in(i * fs, done):
                    os.pwrite(fh.fileno(), data[s - i * fs:e - i * fs], s)
            _hash_zeros(sha, self.size - done)
            digest = sha.hexdigest()
            want = self.content_sha256
            if want and digest != want:
                raise self._bad(f"decompressed contents have SHA-256 {digest[:16]}…, the file recorded "
                                f"{want[:16]}…: damaged")
        return digest

    def _extents_in(self, a: int, b: int) -> list[tuple[int, int]]:
        """Data-map extents clipped to ``[a, b)``."""
        import bisect

        i = max(bisect.bisect_right(self.data_start, a) - 1, 0)
        out = []
        while i < len(self.data_start) and self.data_start[i] < b:
            s, e = max(self.data_start[i], a), min(self.data_end[i], b)
            if s < e:
                out.append((s, e))
            i += 1
        return out

    def verify(self) -> None:
        """Decompress every frame and compare the contents' hash with the recorded one.

        :raises FormatError: the first damaged frame, or a hash mismatch.
        """
        sha = hashlib.sha256()
        done = 0
        for i in np.flatnonzero(self.frame_len).tolist():
            data = self.read_frame(i)
            _hash_zeros(sha, i * self.frame_size - done)
            sha.update(data)
            done = i * self.frame_size + len(data)
        _hash_zeros(sha, self.size - done)
        want = self.content_sha256
        if want and sha.hexdigest() != want:
            raise self._bad("decompressed contents do not have the recorded SHA-256: damaged")
