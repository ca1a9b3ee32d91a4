"""Restore strategies (what to install, when) and the working-set file prefetch installs from.

Strategies, chosen per restore (the string is what ``--strategy`` takes and traces record):

* ``ondemand`` — one page per fault.
* ``fault-around:N`` — on a fault, the aligned block of N pages around it, missing pages only.
* ``prefetch:TRACE`` — REAP-style record and replay: before resume, install the working set recorded in
  TRACE (from its ``.ws`` file: one sequential read, contiguous runs per ioctl), then serve misses on
  demand. ``prefetch-background:TRACE`` installs it from a thread racing the vCPUs instead.
* ``eager`` — copy all of memory at the hand-off (Firecracker's ``fault_all`` example).

Working-set file (``TRACE`` with suffix ``.ws``), little-endian::

    header   64 B  magic b"FCRWSET1", u64 page_size, u64 n, u64 mem_size, u64 n_data, u64 data_offset,
                   u64 index_offset, u64 meta_len (0 in files written before identities existed)
    meta     meta_len bytes of JSON at offset 64: ``mem`` (identity of the memory file the pages were read
             from: path, size, snapshot id) and ``trace`` (path, size and SHA-256 of the trace it was
             built from)
    index    n × u64 memory-file offsets (recorded first-fault order), then n × u8 kind (0 data, 1 hole)
    data     at data_offset (page aligned): the n_data data pages, in index order
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError, FormatError
from firecracer.fsio import atomic_output, open_regular
from firecracer.uffd import abi
from firecracer.uffd.memfile import MemoryFile, identity_mismatch
from firecracer.uffd.trace import Trace, load_trace

KINDS = ("ondemand", "fault-around", "prefetch", "eager")
WS_MAGIC = b"FCRWSET1"
_WS_HEADER = struct.Struct("<8sQQQQQQQ")
KIND_DATA = 0
KIND_HOLE = 1


@dataclass(frozen=True)
class Strategy:
    """A parsed ``--strategy`` value."""

    kind: str
    around: int = 1
    trace: Path | None = None
    background: bool = False

    def __str__(self) -> str:
        if self.kind == "fault-around":
            return f"fault-around:{self.around}"
        if self.kind == "prefetch":
            return f"prefetch{'-background' if self.background else ''}:{self.trace}"
        return self.kind

    @property
    def family(self) -> str:
        """The name without parameters (``fault-around:16`` → ``fault-around``)."""
        return self.kind


def parse_strategy(text: str) -> Strategy:
    """Parse ``ondemand`` | ``fault-around:N`` | ``prefetch[-background]:TRACE`` | ``eager``.

    Raises ``FirecracerError`` naming the accepted forms; a prefetch TRACE must exist.
    """
    kind, _, arg = text.partition(":")
    if kind == "ondemand" and not arg:
        return Strategy("ondemand")
    if kind == "eager" and not arg:
        return Strategy("eager")
    if kind == "fault-around":
        try:
            n = int(arg) if arg else 16
        except ValueError:
            n = 0
        if n < 1 or n > 1 << 18:
            raise FirecracerError(f"fault-around needs a block size 1..262144 pages, got {arg!r}")
        return Strategy("fault-around", around=n)
    if kind in ("prefetch", "prefetch-background"):
        if not arg:
            raise FirecracerError(f"{kind} needs a recorded trace: {kind}:TRACE")
        path = Path(arg)
        if not path.exists():
            raise FirecracerError(f"prefetch trace {path} does not exist (record one with --trace first)")
        return Strategy("prefetch", trace=path, background=kind == "prefetch-background")
    raise FirecracerError(f"unknown strategy {text!r} (use ondemand, fault-around:N, prefetch:TRACE, "
                          "prefetch-background:TRACE or eager)")


def ws_path_for(trace_path: str | Path) -> Path:
    """The working-set file beside a trace: ``trace.npz`` → ``trace.ws``."""
    p = Path(trace_path)
    if p.suffix == ".ws":
        return p
    return p.with_suffix(".ws") if p.suffix == ".npz" else p.with_name(p.name + ".ws")


def trace_identity(path: str | Path) -> dict[str, object]:
    """Path, size and SHA-256 of a trace file: which recording a working set was built from."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": h.hexdigest()}


def check_trace_matches(trace: Trace, mem: MemoryFile, trace_path: str | Path) -> None:
    """Refuse, in one line naming both, a trace recorded on another memory file than ``mem``."""
    why = identity_mismatch(trace.meta.get("mem"), mem.identity)
    if why:
        raise FirecracerError(f"trace {trace_path} does not belong to memory file {mem.path}: {why}")


def write_working_set(trace: Trace | str | Path, mem: MemoryFile, out: str | Path, *,
                      trace_path: str | Path | None = None) -> Path:
    """Write the working-set file for ``trace`` with page contents from ``mem`` (off the critical path).

    The pages are those the guest faulted on (``Trace.working_set()``), in first-fault order. The file
    records ``mem``'s identity and the trace's (see the module doc).

    :raises FirecracerError: the trace was recorded on another memory file (its identity differs).
    """
    if isinstance(trace, str | Path):
        trace_path = trace
    tr = load_trace(trace) if isinstance(trace, str | Path) else trace
    check_trace_matches(tr, mem, trace_path or "(in memory)")
    meta = json.dumps({"mem": mem.identity,
                       "trace": trace_identity(trace_path) if trace_path is not None else None}).encode()
    meta += b" " * (-len(meta) % 8)
    ps = tr.page_size
    offs = tr.working_set().astype(np.uint64)
    offs = offs[offs + np.uint64(ps) <= np.uint64(mem.size)]
    kinds = np.array([KIND_DATA if mem.has_data(int(o), ps) else KIND_HOLE for o in offs.tolist()],
                     dtype=np.uint8)
    n = int(offs.size)
    data_offs = offs[kinds == KIND_DATA]
    index_offset = _WS_HEADER.size + len(meta)
    data_offset = -(-(index_offset + 9 * n) // ps) * ps
    out = Path(out)
    with atomic_output(out, "working-set file") as tmp, open(tmp, "wb") as fh:
        fh.write(_WS_HEADER.pack(WS_MAGIC, ps, n, mem.size, int(data_offs.size), data_offset,
                                 index_offset, len(meta)))
        fh.write(meta)
        fh.write(offs.astype("<u8").tobytes())
        fh.write(kinds.tobytes())
        fh.write(b"\0" * (data_offset - index_offset - 9 * n))
        chunk = 4096  # pages per write
        for i in range(0, data_offs.size, chunk):
            part = data_offs[i:i + chunk]
            buf = bytearray()
            for o in part.tolist():
                buf += os.pread(mem.fd, ps, o)
            fh.write(buf)
    return out


class WorkingSet:
    """A working-set file mapped into memory with one sequential read (``MAP_POPULATE``).

    ``offsets``/``kinds`` are the index; ``src(i)`` is the address of entry ``i``'s page contents.
    ``runs()`` groups consecutive entries that are adjacent in the memory file and of one kind, so each
    run is installed with one ioctl.
    """

    def __init__(self, path: str | Path, *, mem_size: int | None = None, populate: bool = True) -> None:
        self.path = Path(path)
        fd = open_regular(self.path, "working set")
        try:
            self.file_size = os.fstat(fd).st_size
            head = os.pread(fd, _WS_HEADER.size, 0)
            if len(head) < _WS_HEADER.size:
                raise FormatError(self.path, 0, "working set shorter than its header")
            magic, ps, n, msize, n_data, data_offset, index_offset, meta_len = _WS_HEADER.unpack(head)
            if magic != WS_MAGIC:
                raise FormatError(self.path, 0, f"not a firecracer working set (magic {magic!r})")
            self.meta: dict[str, Any] = {}
            if meta_len:
                if _WS_HEADER.size + meta_len > index_offset or meta_len > 1 << 20:
                    raise FormatError(self.path, 0, f"meta of {meta_len} bytes does not fit before the index")
                try:
                    meta = json.loads(os.pread(fd, meta_len, _WS_HEADER.size))
                except ValueError as exc:
                    raise FormatError(self.path, 0, f"meta is not JSON ({exc})") from None
                self.meta = meta if isinstance(meta, dict) else {}
            if ps < 4096 or ps & (ps - 1) or data_offset % ps:
                raise FormatError(self.path, 0, f"bad page size {ps} or data offset {data_offset}")
            if data_offset + n_data * ps != self.file_size or index_offset + 9 * n > data_offset:
                raise FormatError(self.path, 0, f"size {self.file_size} does not match its header "
                                  f"({n} entries, {n_data} data pages of {ps} bytes)")
            if mem_size is not None and msize != mem_size:
                raise FormatError(self.path, 0, f"recorded for a {msize}-byte memory file, this one has "
                                  f"{mem_size} bytes")
            self.page_size, self.n, self.mem_size, self.n_data = ps, n, msize, n_data
            self.data_offset = data_offset
            flags = abi.MAP_PRIVATE | (abi.MAP_POPULATE if populate else 0)
            if populate:  # start one big sequential read of the whole file before mapping it
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            self.addr = abi.mmap(self.file_size, abi.PROT_READ, flags, fd, 0)
        finally:
            os.close(fd)
        raw = (ctypes_bytes(self.addr + index_offset, 9 * n))
        self.offsets: npt.NDArray[np.uint64] = np.frombuffer(raw[: 8 * n], dtype="<u8").astype(np.uint64)
        self.kinds: npt.NDArray[np.uint8] = np.frombuffer(raw[8 * n:], dtype=np.uint8).copy()
        if n and (int(self.offsets.max()) + ps > msize or (self.offsets % np.uint64(ps)).any()):
            self.close()
            raise FormatError(self.path, 0, "an offset is unaligned or beyond the memory file")
        if int((self.kinds == KIND_DATA).sum()) != n_data:
            self.close()
            raise FormatError(self.path, 0, "index kinds disagree with the data page count")
        # slot of each data entry in the data area (holes have none)
        self.slot = np.cumsum(self.kinds == KIND_DATA, dtype=np.int64) - 1

    def src(self, i: int) -> int:
        """Our address of entry ``i``'s page contents (entry must be data)."""
        return int(self.addr + self.data_offset + int(self.slot[i]) * self.page_size)

    def runs(self, region_offsets: list[int] | None = None
             ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(first_entry, length)`` of runs: consecutive entries adjacent in the file and of one kind.

        ``region_offsets`` (file offsets where regions start) also break runs, so a run never crosses
        a region boundary.
        """
        n = self.n
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        brk = np.ones(n, dtype=bool)
        if n > 1:
            adj = self.offsets[1:] == self.offsets[:-1] + np.uint64(self.page_size)
            brk[1:] = ~adj | (self.kinds[1:] != self.kinds[:-1])
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
            want = os.pread(mem.fd, self.page_size, int(self.offsets[i]))
            if ctypes_bytes(self.src(i), self.page_size) != want:
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
        return {"path": str(self.path), "pages": self.n, "data_pages": self.n_data,
                "bytes": self.file_size, "runs": int(starts.size)}


def ctypes_bytes(addr: int, length: int) -> bytes:
    """Copy ``length`` bytes at ``addr`` in our address space."""
    import ctypes

    return ctypes.string_at(addr, length)
