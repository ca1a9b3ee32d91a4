"""The working-set file ``prefetch`` installs from: a recorded trace's pages as a FaaSnap-style loading set.

The file sits beside its trace (``TRACE`` with suffix ``.ws``), little-endian::

    header   64 B  magic b"FCRWSET3", u64 page_size, u64 n, u64 mem_size, u64 n_blocks, u64 data_offset,
                   u64 index_offset, u64 blocks_per_page
    meta     JSON from offset 64 to index_offset (space-padded to 8 bytes): ``mem`` (identity of the
             memory file the pages were read from: path, size, snapshot id) and ``trace`` (path, size
             and SHA-256 of the trace it was built from); prefetch refuses a set from another snapshot
    index    n × u64 memory-file offsets (loading order), n × u8 kind (0 data, 1 hole), and for pages
             larger than 4 KiB n × blocks_per_page/8 bytes: bitmap of the 4 KiB blocks of each data page
             that hold data (bit i of byte i/8: block i)
    data     at data_offset (4 KiB aligned): the n_blocks stored 4 KiB blocks, entry by entry in index
             order, each entry's blocks in address order

Loading order (``ORDERS``; the file's meta says which, and each order has its own file beside the trace):

* ``runs`` (default) — the working set is cut into runs of pages adjacent in the memory file, and the
  runs are ordered by the first fault on any of their pages (address order inside a run);
* ``touch`` — REAP's first-touch order, page by page (pages adjacent in both time and file still form
  one run);
* ``file`` — memory-file offset order (what replaying a trace sorted by offset does).

Installing it is then one sequential read of the file and one ioctl per run. For 2 MiB pages only the
4 KiB blocks holding data are stored (a probe-like working set touches a few blocks of every 2 MiB
page: storing whole pages made the file 16 times larger); the server assembles each page in a zeroed
staging buffer.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError, FormatError
from firecracer.fsio import atomic_output, file_sha256, open_regular
from firecracer.uffd import abi
from firecracer.uffd.memfile import MemoryFile, identity_mismatch
from firecracer.uffd.trace import Trace, load_trace

WS_MAGIC = b"FCRWSET3"
BLOCK = 4096
_WS_HEADER = struct.Struct("<8sQQQQQQQ")
KIND_DATA = 0
KIND_HOLE = 1
#: Loading orders of a working-set file (module doc); the first is the default.
ORDERS = ("runs", "touch", "file")
DEFAULT_ORDER = ORDERS[0]


def ws_path_for(trace_path: str | Path, order: str = DEFAULT_ORDER) -> Path:
    """The working-set file beside a trace: ``trace.npz`` → ``trace.ws`` (``trace.touch.ws``,
    ``trace.file.ws`` for the other loading orders)."""
    p = Path(trace_path)
    if p.suffix == ".ws":
        return p
    suffix = ".ws" if order == DEFAULT_ORDER else f".{order}.ws"
    return p.with_suffix(suffix) if p.suffix == ".npz" else p.with_name(p.name + suffix)


def check_order(order: str) -> str:
    """``order`` if it is one of ``ORDERS``; else ``FirecracerError`` listing them."""
    if order not in ORDERS:
        raise FirecracerError(f"unknown loading order {order!r} (use {', '.join(ORDERS)})")
    return order


def loading_order(offsets: npt.NDArray[np.uint64], page_size: int,
                  kinds: npt.NDArray[np.uint8] | None = None, order: str = DEFAULT_ORDER
                  ) -> npt.NDArray[np.int64]:
    """Permutation of ``offsets`` (unique, first-fault order) into loading ``order`` (see module doc).

    ``runs``: runs are maximal sets of pages adjacent in the file (and of one kind, when ``kinds`` is
    given); they keep the rank of their earliest page, so a page is never installed later than one first
    faulted after it, except pages of the same run. ``touch``: the first-fault order itself. ``file``:
    by offset.
    """
    n = int(offsets.size)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if check_order(order) == "touch":
        return np.arange(n, dtype=np.int64)
    by_addr = np.argsort(offsets, kind="stable")
    if order == "file":
        return by_addr.astype(np.int64)
    so = offsets[by_addr]
    brk = np.ones(n, dtype=bool)
    brk[1:] = so[1:] != so[:-1] + np.uint64(page_size)
    if kinds is not None:
        sk = kinds[by_addr]
        brk[1:] |= sk[1:] != sk[:-1]
    run_id = np.cumsum(brk) - 1
    rank = np.minimum.reduceat(by_addr, np.flatnonzero(brk))  # earliest first-fault index per run
    perm = np.lexsort((so, rank[run_id]))  # by run rank, then address
    out: npt.NDArray[np.int64] = by_addr[perm].astype(np.int64)
    return out


def _data_blocks(mem: MemoryFile, off: int, ps: int) -> npt.NDArray[np.bool_]:
    """Which 4 KiB blocks of the page at ``off`` hold data (vs holes of the sparse memory file)."""
    nb = ps // BLOCK
    if mem.dense:
        return np.ones(nb, dtype=bool)
    out = np.zeros(nb, dtype=bool)
    for start, length, is_data in mem.split(off, ps, BLOCK):
        if is_data:
            out[(start - off) // BLOCK:(start - off + length) // BLOCK] = True
    return out


def trace_identity(path: str | Path) -> dict[str, object]:
    """Path, size and SHA-256 of a trace file: which recording a working set was built from."""
    p = Path(path)
    return {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": file_sha256(p)}


def check_trace_matches(trace: Trace, mem: MemoryFile, trace_path: str | Path) -> None:
    """Refuse, in one line naming both, a trace recorded on another memory file than ``mem``."""
    why = identity_mismatch(trace.meta.get("mem"), mem.identity)
    if why:
        raise FirecracerError(f"trace {trace_path} does not belong to memory file {mem.path}: {why}")


def write_working_set(trace: Trace | str | Path, mem: MemoryFile, out: str | Path, *,
                      trace_path: str | Path | None = None, order: str = DEFAULT_ORDER) -> Path:
    """Write the working-set file for ``trace`` with page contents from ``mem`` (off the critical path).

    The pages are those the guest faulted on (``Trace.working_set()``), in loading ``order``. The file
    records ``mem``'s identity, the trace's and the order (see the module doc).

    :raises FirecracerError: the trace was recorded on another memory file (its identity differs).
    """
    if isinstance(trace, str | Path):
        trace_path = trace
    tr = load_trace(trace) if isinstance(trace, str | Path) else trace
    check_trace_matches(tr, mem, trace_path or "(in memory)")
    meta = json.dumps({"mem": mem.identity, "order": check_order(order),
                       "trace": trace_identity(trace_path) if trace_path is not None else None}).encode()
    meta += b" " * (-len(meta) % 8)
    ps = tr.page_size
    if ps < BLOCK or ps % BLOCK or ps & (ps - 1):
        raise FormatError(getattr(trace, "name", str(trace)), 0, f"page size {ps} is not a power of two "
                          f">= {BLOCK}")
    nb = ps // BLOCK
    offs = tr.working_set().astype(np.uint64)
    offs = offs[offs + np.uint64(ps) <= np.uint64(mem.size)]
    blocks = np.stack([_data_blocks(mem, int(o), ps) for o in offs.tolist()]) if offs.size else \
        np.zeros((0, nb), dtype=bool)
    kinds = np.where(blocks.any(axis=1), KIND_DATA, KIND_HOLE).astype(np.uint8)
    perm = loading_order(offs, ps, kinds, order)
    offs, kinds, blocks = offs[perm], kinds[perm], blocks[perm]
    n = int(offs.size)
    n_blocks = int(blocks.sum())
    index_offset = _WS_HEADER.size + len(meta)
    bitmap = np.packbits(blocks, axis=1, bitorder="little") if nb > 1 else np.zeros((n, 0), np.uint8)
    index_len = 9 * n + bitmap.size
    data_offset = -(-(index_offset + index_len) // BLOCK) * BLOCK
    out = Path(out)
    with atomic_output(out, "working-set file") as tmp, open(tmp, "wb") as fh:
        fh.write(_WS_HEADER.pack(WS_MAGIC, ps, n, mem.size, n_blocks, data_offset, index_offset, nb))
        fh.write(meta)
        fh.write(offs.astype("<u8").tobytes())
        fh.write(kinds.tobytes())
        fh.write(bitmap.tobytes())
        fh.write(b"\0" * (data_offset - index_offset - index_len))
        buf = bytearray()
        for o, blk in zip(offs.tolist(), blocks, strict=True):
            if nb == 1 or blk.all():
                if blk.any():
                    buf += mem.pread(ps, o)
            else:
                # runs of data blocks: one read each
                edges = np.flatnonzero(np.diff(np.concatenate(([0], blk.view(np.int8), [0]))))
                for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
                    buf += mem.pread((b - a) * BLOCK, o + a * BLOCK)
            if len(buf) >= 16 << 20:
                fh.write(buf)
                buf = bytearray()
        fh.write(buf)
    return out


def ws_page_size(path: str | Path) -> int | None:
    """The page size a working-set file was built for; None if it is not a current one (rebuild it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_WS_HEADER.size)
    except OSError:
        return None
    if len(head) < _WS_HEADER.size or head[:8] != WS_MAGIC:
        return None
    return int(_WS_HEADER.unpack(head)[1])


class WorkingSet:
    """A working-set file mapped into memory (read ahead sequentially; see ``populate``).

    ``offsets``/``kinds`` are the index; ``src(i)`` is the address of entry ``i``'s first stored block,
    ``blocks(i)`` which 4 KiB blocks of the page are stored (all, for 4 KiB pages). ``runs()`` groups
    consecutive entries that are adjacent in the memory file and of one kind, so each run of 4 KiB
    pages (or of fully stored huge pages) is installed with one ioctl.

    ``populate``: ``True`` maps it with ``MAP_POPULATE`` (the whole file is read before this returns);
    ``"async"`` starts the sequential read-ahead and returns at once, so installs can start while the
    file is still being read (each install then waits only for its own pages); ``False`` neither.
    """

    def __init__(self, path: str | Path, *, mem_size: int | None = None,
                 populate: bool | str = True) -> None:
        self.path = Path(path)
        fd = open_regular(self.path, "working set")
        try:
            self.file_size = os.fstat(fd).st_size
            head = os.pread(fd, _WS_HEADER.size, 0)
            if len(head) < _WS_HEADER.size:
                raise FormatError(self.path, 0, "working set shorter than its header")
            magic, ps, n, msize, n_blocks, data_offset, index_offset, nb = _WS_HEADER.unpack(head)
            if magic != WS_MAGIC:
                raise FormatError(self.path, 0, f"not a firecracer working set of this version (magic "
                                  f"{magic!r}, want {WS_MAGIC!r}): rebuild it with 'firecracer uffd "
                                  "working-set'")
            self.meta: dict[str, Any] = {}
            meta_len = index_offset - _WS_HEADER.size
            if meta_len < 0 or meta_len > 1 << 20:
                raise FormatError(self.path, 0, f"index offset {index_offset} leaves no room for its header "
                                  "or an oversized meta")
            if meta_len:
                try:
                    meta = json.loads(os.pread(fd, meta_len, _WS_HEADER.size))
                except ValueError as exc:
                    raise FormatError(self.path, 0, f"meta is not JSON ({exc})") from None
                self.meta = meta if isinstance(meta, dict) else {}
            if ps < BLOCK or ps & (ps - 1) or nb != ps // BLOCK or data_offset % BLOCK:
                raise FormatError(self.path, 0, f"bad page size {ps}, blocks per page {nb} or data "
                                  f"offset {data_offset}")
            bitmap_len = n * (nb // 8) if nb > 1 else 0
            if data_offset + n_blocks * BLOCK != self.file_size or \
                    index_offset + 9 * n + bitmap_len > data_offset:
                raise FormatError(self.path, 0, f"size {self.file_size} does not match its header "
                                  f"({n} entries, {n_blocks} blocks of {BLOCK} bytes)")
            if mem_size is not None and msize != mem_size:
                raise FormatError(self.path, 0, f"recorded for a {msize}-byte memory file, this one has "
                                  f"{mem_size} bytes")
            self.page_size, self.n, self.mem_size, self.n_blocks = ps, n, msize, n_blocks
            order = self.meta.get("order", DEFAULT_ORDER)  # files from before orders were loaded as runs
            self.order = order if order in ORDERS else DEFAULT_ORDER
            self.data_offset = data_offset
            flags = abi.MAP_PRIVATE | (abi.MAP_POPULATE if populate is True else 0)
            if populate:  # one big sequential read of the whole file
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            self.addr = abi.mmap(self.file_size, abi.PROT_READ, flags, fd, 0)
        finally:
            os.close(fd)
        raw = ctypes_bytes(self.addr + index_offset, 9 * n + bitmap_len)
        self.offsets: npt.NDArray[np.uint64] = np.frombuffer(raw[: 8 * n], dtype="<u8").astype(np.uint64)
        self.kinds: npt.NDArray[np.uint8] = np.frombuffer(raw[8 * n: 9 * n], dtype=np.uint8).copy()
        if nb > 1:
            bits = np.frombuffer(raw[9 * n:], dtype=np.uint8).reshape(n, nb // 8)
            unpacked = np.unpackbits(bits, axis=1, bitorder="little")
            self.block_map: npt.NDArray[np.bool_] = unpacked.astype(bool)
        else:
            self.block_map = np.ones((n, 1), dtype=bool)
        self.block_map[self.kinds != KIND_DATA] = False
        if n and (int(self.offsets.max()) + ps > msize or (self.offsets % np.uint64(ps)).any()):
            self.close()
            raise FormatError(self.path, 0, "an offset is unaligned or beyond the memory file")
        if int(self.block_map.sum()) != n_blocks or (self.kinds == KIND_DATA).sum() != \
                int(self.block_map.any(axis=1).sum()):
            self.close()
            raise FormatError(self.path, 0, "index kinds or block maps disagree with the stored block count")
        # first stored block of each entry in the data area
        per = self.block_map.sum(axis=1).astype(np.int64)
        self.first_block = np.cumsum(per) - per
        self.full = per == ps // BLOCK  # entries stored whole: copied straight from the mapping

    @property
    def n_data(self) -> int:
        """Entries holding data."""
        return int((self.kinds == KIND_DATA).sum())

    def src(self, i: int) -> int:
        """Our address of entry ``i``'s first stored block (its whole page when ``full[i]``)."""
        return int(self.addr + self.data_offset + int(self.first_block[i]) * BLOCK)

    def pieces(self, i: int) -> list[tuple[int, int, int]]:
        """``(offset in page, our address, length)`` of each run of stored blocks of entry ``i``."""
        blk = self.block_map[i]
        edges = np.flatnonzero(np.diff(np.concatenate(([0], blk.view(np.int8), [0]))))
        out = []
        src = self.src(i)
        for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            out.append((a * BLOCK, src, (b - a) * BLOCK))
            src += (b - a) * BLOCK
        return out

    def runs(self, region_offsets: list[int] | None = None
             ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(first_entry, length)`` of runs: consecutive entries adjacent in the file and of one kind.

        ``region_offsets`` (file offsets where regions start) also break runs, so a run never crosses
        a region boundary. Huge pages not stored whole are runs of their own (they are assembled).
        """
        n = self.n
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        brk = np.ones(n, dtype=bool)
        if n > 1:
            adj = self.offsets[1:] == self.offsets[:-1] + np.uint64(self.page_size)
            brk[1:] = ~adj | (self.kinds[1:] != self.kinds[:-1])
            if self.page_size > BLOCK:
                data = self.kinds == KIND_DATA
                partial = data & ~self.full
                brk[1:] |= partial[1:] | partial[:-1]
        if region_offsets:
            brk |= np.isin(self.offsets, np.array(region_offsets, dtype=np.uint64))
        starts = np.flatnonzero(brk).astype(np.int64)
        lengths = np.diff(np.append(starts, n)).astype(np.int64)
        return starts, lengths

    def verify_against(self, mem: MemoryFile, samples: int = 4) -> None:
        """Compare a few stored pages with the memory file; ``FormatError`` if they differ (stale file)."""
        data_idx = np.flatnonzero(self.kinds == KIND_DATA)
        if data_idx.size == 0:
            return
        pick = data_idx[np.linspace(0, data_idx.size - 1, min(samples, data_idx.size)).astype(np.int64)]
        for i in pick.tolist():
            if any(ctypes_bytes(src, length) != mem.pread(length, int(self.offsets[i]) + poff)
                   for poff, src, length in self.pieces(i)):
                raise FormatError(self.path, 0, f"page at offset {int(self.offsets[i]):#x} differs from "
                                  f"{mem.path}: the working set was recorded from another snapshot")

    def close(self) -> None:
        """Unmap (idempotent)."""
        if self.addr:
            abi.munmap(self.addr, self.file_size)
            self.addr = 0

    def describe(self) -> dict[str, Any]:
        """Facts for metrics."""
        starts, _ = self.runs()
        return {"path": str(self.path), "order": self.order, "pages": self.n, "data_pages": self.n_data,
                "page_size": self.page_size, "stored_blocks": self.n_blocks, "bytes": self.file_size,
                "runs": int(starts.size)}


def ctypes_bytes(addr: int, length: int) -> bytes:
    """Copy ``length`` bytes at ``addr`` in our address space."""
    return ctypes.string_at(addr, length)


def prepare_working_set(trace_path: Path, mem: MemoryFile, order: str = DEFAULT_ORDER) -> Path:
    """The working-set file prefetch installs from ``trace_path`` in loading ``order``, checked against
    ``mem`` (built if it is missing, of an older format or of another order); its path.

    :raises FirecracerError: the trace, or the working set, was recorded on another memory file (one
        line naming both), or the working set's pages differ from this memory file's.
    """
    check_trace_matches(load_trace(trace_path), mem, trace_path)
    ws_path = ws_path_for(trace_path, order)
    if ws_page_size(ws_path) is None:  # missing, or an older format: (re)build it
        write_working_set(trace_path, mem, ws_path, order=order)
        return ws_path
    ws = WorkingSet(ws_path, mem_size=mem.size, populate=False)
    try:
        if ws.order != order:  # e.g. given by its own path: the file is the loading set, so rebuild
            ws.close()
            write_working_set(trace_path, mem, ws_path, order=order)
            ws = WorkingSet(ws_path, mem_size=mem.size, populate=False)
        why = identity_mismatch(ws.meta.get("mem"), mem.identity)
        if why:
            raise FirecracerError(f"working set {ws_path} does not belong to memory file "
                                  f"{mem.path}: {why}; rebuild it with 'firecracer uffd "
                                  f"working-set {trace_path} {mem.path} --force'")
        made_from = ws.meta.get("trace")
        if isinstance(made_from, dict) and \
                made_from.get("sha256") != trace_identity(trace_path)["sha256"]:
            raise FirecracerError(f"working set {ws_path} was built from another trace than {trace_path} "
                                  f"({made_from.get('path')}); rebuild it with 'firecracer uffd "
                                  f"working-set {trace_path} {mem.path} --force'")
        ws.verify_against(mem, samples=16)
    finally:
        ws.close()
    return ws_path
