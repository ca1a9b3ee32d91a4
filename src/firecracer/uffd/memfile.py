"""The snapshot memory file as the page server sees it: one read-only mapping plus its data/hole map.

Firecracker's memory files can be sparse (holes never written); pages in holes are served with
``UFFDIO_ZEROPAGE`` instead of copying zeros. Holes are found once with ``SEEK_DATA``/``SEEK_HOLE``.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from pathlib import Path

from firecracer.errors import FirecracerError
from firecracer.uffd import abi

#: The snapshot description a memory file named ``mem`` or ``mem.merged`` sits beside (vmm layout).
_SNAPSHOT_JSON = "snapshot.json"


def mem_identity(path: str | Path, size: int, mem_id: str | None = None) -> dict[str, object]:
    """What a memory file is, for traces and working sets recorded on it: its size and, when known, the
    id of the snapshot it belongs to (given, or read from the ``snapshot.json`` beside a file named
    ``mem``/``mem.merged``). Two files with different ids are different guests whatever their sizes."""
    p = Path(path)
    if mem_id is None and p.name in ("mem", "mem.merged", "mem.fcz"):
        import json

        try:
            with open(p.parent / _SNAPSHOT_JSON, "rb") as f:
                data = json.loads(f.read(4 << 20))
            if isinstance(data, dict) and data.get("format") == "firecracer-snapshot" and data.get("id"):
                mem_id = str(data["id"])
        except (OSError, ValueError):
            pass
    return {"path": str(p.resolve()), "size": size, "id": mem_id}


def identity_mismatch(recorded: object, current: dict[str, object]) -> str | None:
    """Why a recorded memory identity (from a trace or working set) is not ``current``, or None.

    Recordings made before identities existed carry none: they pass here (content checks still apply).
    """
    if not isinstance(recorded, dict):
        return None
    rs, cs = recorded.get("size"), current.get("size")
    rid, cid = recorded.get("id"), current.get("id")
    if rid and cid and rid != cid:
        return (f"recorded on snapshot {rid} (memory file {recorded.get('path')}), but this memory file "
                f"{current.get('path')} belongs to snapshot {cid}")
    if isinstance(rs, int) and isinstance(cs, int) and rs != cs:
        return (f"recorded on a {rs:,}-byte memory file ({recorded.get('path')}), but {current.get('path')} "
                f"has {cs:,} bytes")
    return None


class MemoryFile:
    """A memory file mapped ``PROT_READ``/``MAP_PRIVATE`` at ``addr`` (our address space), with holes.

    ``populate=True`` adds ``MAP_POPULATE`` (read the whole file up front, like Firecracker's example
    handler); off by default so cold restores read only what they serve.
    """

    #: Pages can be copied straight from ``addr + off`` (a compressed file's only after ``ensure``).
    direct = True

    def __init__(self, path: str | Path, *, populate: bool = False, mem_id: str | None = None) -> None:
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise FirecracerError(f"cannot open memory file {self.path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise FirecracerError(f"memory file {self.path} is not a regular file")
            self.size = st.st_size
            if self.size <= 0:
                raise FirecracerError(f"memory file {self.path} is empty")
            flags = abi.MAP_PRIVATE | (abi.MAP_POPULATE if populate else 0)
            self.addr = abi.mmap(self.size, abi.PROT_READ, flags, self.fd, 0)
            self.data_start, self.data_end = scan_data(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.dense = len(self.data_start) == 1 and self.data_start[0] == 0 and self.data_end[0] == self.size
        self.identity = mem_identity(self.path, self.size, mem_id)

    def close(self) -> None:
        """Unmap and close (idempotent)."""
        if self.fd >= 0:
            abi.munmap(self.addr, self.size)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MemoryFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure(self, off: int, length: int) -> None:
        """Make ``[off, off+length)`` readable at ``addr + off``: always, for a mapped file."""

    def pread(self, length: int, off: int) -> bytes:
        """``length`` bytes of memory at ``off`` (what working sets are built from)."""
        return os.pread(self.fd, length, off)

    @property
    def data_bytes(self) -> int:
        """Bytes of the file that hold data (not holes)."""
        return sum(e - s for s, e in zip(self.data_start, self.data_end, strict=True))

    def has_data(self, off: int, length: int) -> bool:
        """Whether any byte of ``[off, off+length)`` holds data (a page is a hole only if all of it is)."""
        if self.dense:
            return True
        i = bisect.bisect_right(self.data_start, off + length - 1) - 1
        return i >= 0 and self.data_end[i] > off

    def split(self, off: int, length: int, unit: int = 4096) -> list[tuple[int, int, bool]]:
        """``[off, off+length)`` cut into ``(start, length, is_data)`` pieces at data/hole boundaries.

        Boundaries fall on multiples of ``unit`` (the page size): a unit with any data is data.
        """
        if self.dense:
            return [(off, length, True)]
        if unit > 4096:
            out: list[tuple[int, int, bool]] = []
            for u in range(off, off + length, unit):
                d = self.has_data(u, unit)
                if out and out[-1][2] == d:
                    out[-1] = (out[-1][0], out[-1][1] + unit, d)
                else:
                    out.append((u, unit, d))
            return out
        return self._split4k(off, length)

    def _split4k(self, off: int, length: int) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        end = off + length
        pos = off
        i = max(bisect.bisect_right(self.data_start, pos) - 1, 0)
        while pos < end:
            while i < len(self.data_start) and self.data_end[i] <= pos:
                i += 1
            if i >= len(self.data_start) or self.data_start[i] >= end:
                out.append((pos, end - pos, False))
                break
            ds, de = self.data_start[i], self.data_end[i]
            if ds > pos:
                out.append((pos, ds - pos, False))
                pos = ds
            nxt = min(de, end)
            out.append((pos, nxt - pos, True))
            pos = nxt
        return out


def scan_data(fd: int, size: int, align: int = 4096) -> tuple[list[int], list[int]]:
    """Data extents ``[start, end)`` of a file via ``SEEK_DATA``/``SEEK_HOLE``, page-aligned outward.

    A file system without hole support reports one extent covering the file (its ``SEEK_DATA`` either
    answers "data here" or fails with something other than ENXIO). This is the one scanner of sparse
    files in the project; snapshot hole accounting and the FUSE recorder use it too.
    """
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            return [0], [size]  # SEEK_DATA unsupported: treat everything as data, never as zeros
        if data >= size:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        s = data - data % align
        e = min(size, -(-min(hole, size) // align) * align)
        if starts and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            starts.append(s)
            ends.append(e)
        pos = max(hole, data + 1)
    return starts, ends
