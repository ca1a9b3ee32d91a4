"""A compressed memory file as the page server's source: frames decompressed on demand, a bounded cache.

:class:`CompressedMemoryFile` looks like a :class:`~firecracer.uffd.memfile.MemoryFile` to the installer
and the strategies (``addr``, ``size``, the data/hole map, ``identity``), but its ``addr`` is an anonymous
mapping of the memory's size in which only decompressed frames hold data. Whoever copies from
``addr + off`` first calls ``ensure(off, length)``: the frames are decompressed into place, and they stay
until this thread's next ``ensure`` (so a UFFDIO_COPY never reads a frame evicted meanwhile, also with
clones served in parallel). Least-recently-used frames beyond the cache (``FIRECRACER_UFFD_ZCACHE_MIB``,
default 64 MiB) are dropped with ``MADV_DONTNEED``. ``direct`` is False: the C and Python fast loops,
which copy from ``addr`` without asking, are not used for it.

:func:`open_memory` opens either kind by its first bytes.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from firecracer.uffd import abi
from firecracer.uffd.memfile import MemoryFile, mem_identity
from firecracer.uffd.zmem import ZMemFile, is_zmem

_SNAPSHOT_JSON = "snapshot.json"


def open_memory(path: str | Path, *, populate: bool = False, mem_id: str | None = None) -> MemoryFile:
    """The page server's view of ``path``: a raw memory file, or a compressed one (by its magic)."""
    if is_zmem(path):
        return CompressedMemoryFile(path, mem_id=mem_id)
    return MemoryFile(path, populate=populate, mem_id=mem_id)


def _snapshot_record(path: Path) -> dict[str, Any] | None:
    """``mem.compressed`` of the ``snapshot.json`` beside ``path``, when there is one."""
    try:
        with open(path.parent / _SNAPSHOT_JSON, "rb") as f:
            data = json.loads(f.read(4 << 20))
    except (OSError, ValueError):
        return None
    rec = data.get("mem", {}).get("compressed") if isinstance(data, dict) and \
        isinstance(data.get("mem"), dict) else None
    return rec if isinstance(rec, dict) and rec.get("file") == path.name else None


class CompressedMemoryFile(MemoryFile):
    """A ``mem.fcz`` served frame by frame (see the module doc); checked against the ``snapshot.json``
    beside it at open.

    :raises FormatError: the file is damaged, truncated, or not the one ``snapshot.json`` describes.
    """

    direct = False

    def __init__(self, path: str | Path, *, mem_id: str | None = None,
                 cache_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.z = ZMemFile(self.path)
        try:
            rec = _snapshot_record(self.path)
            if rec is not None:
                self.z.check_record(rec, str(self.path.parent / _SNAPSHOT_JSON))
            self.fd = self.z.fd
            self.size = self.z.size
            self.frame_size = self.z.frame_size
            self.data_start, self.data_end = self.z.data_start, self.z.data_end
            self.dense = self.data_start == [0] and self.data_end == [self.size]
            self.addr = abi.mmap(self.size, abi.PROT_READ | abi.PROT_WRITE,
                                 abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_NORESERVE)
        except BaseException:
            self.z.close()
            raise
        sid = self.z.meta.get("snapshot_id")
        self.identity = mem_identity(self.path, self.size, mem_id or (str(sid) if sid else None))
        if cache_bytes is None:
            cache_bytes = int(float(os.environ.get("FIRECRACER_UFFD_ZCACHE_MIB") or 64) * (1 << 20))
        self.capacity = max(4, cache_bytes // self.frame_size)
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._pins: dict[int, range] = {}  # thread ident -> frames its last ensure() covered
        self._lock = threading.Lock()
        self.stats = {"frames_decompressed": 0, "bytes_decompressed": 0, "decompress_ms": 0.0,
                      "cache_hits": 0, "evictions": 0}

    def close(self) -> None:
        """Unmap the cache and close the file (idempotent)."""
        if self.fd >= 0:
            abi.munmap(self.addr, self.size)
            self.z.close()
            self.fd = -1

    def ensure(self, off: int, length: int) -> None:
        """Make ``[off, off+length)`` readable at ``addr + off`` until this thread's next call (frames
        without data are skipped: the server zero-fills their pages)."""
        if not self.has_data(off, length):
            return
        fs = self.frame_size
        frames = range(off // fs, (off + length - 1) // fs + 1)
        me = threading.get_ident()
        with self._lock:
            self._pins[me] = frames
            for i in frames:
                if i in self._lru:
                    self._lru.move_to_end(i)
                    self.stats["cache_hits"] += 1
                elif self.z.frame_len[i]:
                    t = time.perf_counter()
                    data = self.z.read_frame(i)
                    ctypes.memmove(self.addr + i * fs, data, len(data))
                    self._lru[i] = None
                    self.stats["frames_decompressed"] += 1
                    self.stats["bytes_decompressed"] += len(data)
                    self.stats["decompress_ms"] += (time.perf_counter() - t) * 1000
            if len(self._lru) > self.capacity:
                self._evict()

    def _evict(self) -> None:
        """Drop the least recently used frames down to capacity, from the old end only: this runs on
        every fault once the cache is full, so it must not walk (or copy) the whole cache."""
        kept: list[int] = []  # pinned frames met on the way: another thread is copying from them
        while len(self._lru) > self.capacity:
            i, _ = self._lru.popitem(last=False)
            if any(i in r for r in self._pins.values()):
                kept.append(i)
                continue
            abi.madvise(self.addr + i * self.frame_size, self.z.frame_bytes(i), abi.MADV_DONTNEED)
            self.stats["evictions"] += 1
        for i in reversed(kept):  # back at the old end, in their order
            self._lru[i] = None
            self._lru.move_to_end(i, last=False)

    def pread(self, length: int, off: int) -> bytes:
        """Uncompressed bytes (working sets are built from these), bypassing the cache."""
        return self.z.pread(length, off)

    def describe(self) -> dict[str, Any]:
        """For the page server's metrics: the file and what decompressing cost."""
        return {"file": str(self.path), "frame_size": self.frame_size, "frames": self.z.n_frames,
                "compressed_bytes": self.z.file_size, "cache_frames": self.capacity,
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in self.stats.items()}}
