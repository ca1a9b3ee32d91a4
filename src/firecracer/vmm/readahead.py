"""``readahead:TRACE``: the File backend, with the recorded working set in the host page cache first.

FaaSnap and SnapBPF restore with Firecracker's File backend and load the pages a restore will touch into
the host page cache before (or while) the guest runs: Firecracker maps the memory file ``MAP_PRIVATE``,
so a guest access to a page already cached costs a minor fault instead of a read from storage. Here the
set is the trace's working set (the pages a recorded restore faulted on): every range is first handed to
the kernel with ``posix_fadvise(WILLNEED)`` (asynchronous: the reads are queued together, so storage
serves many at once instead of one ``pread`` at a time — 8,000 scattered runs took 650 ms one by one
here), then read with ``pread`` into a scratch buffer, since the kernel may drop a WILLNEED and only a read
that returned has surely put its pages in the cache.

* ``readahead:TRACE`` reads the set before ``PUT /snapshot/load``, in file-offset order with nearby runs
  merged (few, large, sequential reads: what storage serves fastest);
* ``readahead-background:TRACE`` reads it from a thread racing the vCPUs, in first-touch runs (the page
  server's default loading order), so the pages the guest wants first are read first.

The trace must come from a restore of the same snapshot (its memory-file identity is checked), as for
``prefetch``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError
from firecracer.uffd import abi
from firecracer.uffd.memfile import identity_mismatch, mem_identity
from firecracer.uffd.trace import load_trace
from firecracer.uffd.workingset import loading_order

#: Runs closer than this in the file are read as one (a read of a few extra pages beats another seek);
#: ``FIRECRACER_READAHEAD_MERGE_KIB`` overrides it (measured in docs/uffd.md).
MERGE_GAP = 64 << 10
#: The largest single read (the scratch buffer's size).
CHUNK = 4 << 20
KINDS = ("readahead", "readahead-background")


@dataclass(frozen=True)
class Readahead:
    """A parsed ``readahead[-background]:TRACE``."""

    trace: Path
    background: bool = False

    @classmethod
    def parse(cls, text: str) -> Readahead | None:
        """The readahead named by a ``--strategy`` value, or None when it names another strategy."""
        name, _, arg = text.partition(":")
        if name not in KINDS:
            return None
        if not arg:
            raise FirecracerError(f"{name} needs a recorded trace: {name}:TRACE")
        path = Path(arg)
        if not path.is_file():
            raise FirecracerError(f"readahead trace {path} does not exist (record one with an ondemand "
                                  "restore and --trace first)")
        return cls(path, name == "readahead-background")

    def __str__(self) -> str:
        return f"{KINDS[self.background]}:{self.trace}"


@dataclass
class ReadaheadResult:
    """What one readahead did: pages of the working set, bytes and reads issued, milliseconds."""

    pages: int = 0
    bytes: int = 0
    reads: int = 0
    ms: float = 0.0
    done: bool = False
    error: str = ""
    started_ns: int = field(default_factory=time.monotonic_ns)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pages": self.pages, "bytes": self.bytes, "reads": self.reads,
                               "ms": round(self.ms, 3), "done": self.done}
        if self.error:
            out["error"] = self.error
        return out


def plan_reads(trace: Path, mem: Path, mem_id: str | None, *, background: bool
               ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], int]:
    """``(offsets, lengths, pages)``: the reads that bring ``trace``'s working set of ``mem`` into the cache.

    :raises FirecracerError: the trace was recorded on another memory file, or does not fit this one.
    """
    tr = load_trace(trace)
    size = mem.stat().st_size
    why = identity_mismatch(tr.meta.get("mem"), mem_identity(mem, size, mem_id))
    if why:
        raise FirecracerError(f"readahead trace {trace} does not belong to memory file {mem}: {why}")
    ps = tr.page_size
    offs = tr.working_set().astype(np.uint64)
    if offs.size and int(offs.max()) + ps > size:
        raise FirecracerError(f"readahead trace {trace} names pages beyond the {size:,}-byte memory file "
                              f"{mem}")
    pages = int(offs.size)
    if pages == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), 0
    if background:  # first-touch runs: runs of file-adjacent pages, by their first fault
        offs = offs[loading_order(offs, ps)]
        brk = np.ones(offs.size, dtype=bool)
        brk[1:] = offs[1:] != offs[:-1] + np.uint64(ps)
    else:  # by offset, runs closer than MERGE_GAP merged
        offs = np.sort(offs)
        brk = np.ones(offs.size, dtype=bool)
        gap = int(os.environ.get("FIRECRACER_READAHEAD_MERGE_KIB") or MERGE_GAP >> 10) << 10
        brk[1:] = offs[1:] > offs[:-1] + np.uint64(ps + gap)
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], offs.size) - 1
    lo = offs[starts]
    lengths = offs[ends] + np.uint64(ps) - lo
    return lo, lengths, pages


def read_into_cache(mem: Path, offsets: npt.NDArray[np.uint64], lengths: npt.NDArray[np.uint64],
                    result: ReadaheadResult, stop: threading.Event | None = None) -> ReadaheadResult:
    """Read each ``[offset, offset+length)`` of ``mem`` (into a reused buffer: only the cache is wanted)."""
    t0 = time.monotonic_ns()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(mem, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pairs = list(zip(offsets.tolist(), lengths.tolist(), strict=True))
        for off, length in pairs:  # queue them all (see the module doc), then wait for each in order
            os.posix_fadvise(fd, off, length, os.POSIX_FADV_WILLNEED)
        for off, length in pairs:
            while length > 0:
                if stop is not None and stop.is_set():
                    result.error = "stopped (the VM was killed first)"
                    return result
                n = os.preadv(fd, [view[:min(length, CHUNK)]], off)
                if n <= 0:
                    break  # past the end: a shorter file than planned is not ours to fix here
                result.bytes += n
                result.reads += 1
                off += n
                length -= n
        result.done = True
    except OSError as exc:
        result.error = f"reading {mem}: {exc.strerror or exc}"
    finally:
        os.close(fd)
        result.ms = (time.monotonic_ns() - t0) / 1e6
    return result


class ReadaheadJob:
    """A readahead run now (``start`` returns when it is done) or from a thread racing the vCPUs."""

    def __init__(self, spec: Readahead, mem: Path, mem_id: str | None) -> None:
        self.spec = spec
        self.mem = mem
        self.offsets, self.lengths, pages = plan_reads(spec.trace, mem, mem_id, background=spec.background)
        self.result = ReadaheadResult(pages=pages)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Read now (``readahead``), or start the racing thread (``readahead-background``)."""
        if not self.spec.background:
            read_into_cache(self.mem, self.offsets, self.lengths, self.result)
            if self.result.error:
                raise FirecracerError(f"readahead: {self.result.error}")
            return
        self._thread = threading.Thread(target=read_into_cache, name="readahead", daemon=True,
                                        args=(self.mem, self.offsets, self.lengths, self.result, self._stop))
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End a racing read (idempotent): the VM it raced is gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> ReadaheadResult:
        """The result, once the racing thread finished (or ``timeout`` passed)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result


def resident(path: Path) -> npt.NDArray[np.bool_]:
    """Which 4 KiB pages of ``path`` are in the host page cache (mmap + ``mincore``; no page is touched):
    how a readahead, or a benchmark's cold start, is checked."""
    size = path.stat().st_size
    n = -(-size // 4096)
    if n == 0:
        return np.zeros(0, dtype=bool)
    vec = (ctypes.c_ubyte * n)()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        addr = abi.mmap(size, abi.PROT_READ, abi.MAP_PRIVATE, fd, 0)
    finally:
        os.close(fd)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise FirecracerError(f"mincore on {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        abi.munmap(addr, size)
    out: npt.NDArray[np.bool_] = (np.frombuffer(bytes(vec), dtype=np.uint8) & 1).astype(bool)
    return out
