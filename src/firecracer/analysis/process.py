"""A process restore (CRIU, CRaC's engine) as a recording the other stages read.

A VM restore speaks in guest-physical pages; a process restore has none: CRIU's images hold the JVM's
pages by *virtual* address. To let ``analyze``, ``view`` and ``--compare`` treat both alike, a process
restore's recording lays the JVM's dumped pages out in one **image space**: page *i* is the *i*-th dumped
page in virtual-address order (``page_paddr = i × 4096`` in ``memmap.npz``, ``meta.address_space =
"criu-image"``), each row naming the JVM's pid, the virtual address and its mapping (from the JVM's
``/proc/PID/maps`` at the checkpoint). The trace's ``gpa``/``file_off`` are image-space addresses and
``hva`` the JVM's virtual address. So the existing join attributes every page by ``(pid, vaddr)`` to its
mapping and NMT region, exactly as for a VM restore, and pages of a VM restore and a process restore of
the same JVM compare by virtual address (``analysis.compare``'s guest-virtual keys).

Faults come from CRIU's lazy-pages daemon (``firecracer.guest.crac``): one page each, in order, cut at
the first response. A page that was not in the images (never written anonymous memory) is filled with
zeros by the daemon: it is kept, with ``FLAG_ZERO``, and given an image-space slot after the dumped ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.memmap import (
    ADDRESS_SPACE_PROCESS as ADDRESS_SPACE,
)
from firecracer.analysis.memmap import (
    FORMAT as MEMMAP_FORMAT,
)
from firecracer.analysis.memmap import (
    PERM_R,
    PERM_SHARED,
    PERM_W,
    PERM_X,
    PM_EXCLUSIVE,
    PM_FILE,
    Memmap,
)
from firecracer.errors import FormatError
from firecracer.uffd.trace import FLAG_FAULTING, FLAG_ZERO, Action, Trace, make_trace

PAGE = 4096
_MAPS = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+([r-][w-][x-][ps])\s+([0-9a-f]+)\s+\S+\s+\d+\s*(.*)$")


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    perms: int
    offset: int
    name: str


def parse_maps(text: str, where: str = "maps.txt") -> list[Vma]:
    """``/proc/PID/maps`` lines, sorted by start; a malformed line is a ``FormatError`` naming it."""
    out: list[Vma] = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MAPS.match(line)
        if not m:
            raise FormatError(where, no, f"not a /proc/PID/maps line: {line[:120]!r}")
        p = m.group(3)
        perms = ((PERM_R if p[0] == "r" else 0) | (PERM_W if p[1] == "w" else 0)
                 | (PERM_X if p[2] == "x" else 0) | (PERM_SHARED if p[3] == "s" else 0))
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        if end <= start or start % PAGE or end % PAGE:
            raise FormatError(where, no, f"bad range {m.group(1)}-{m.group(2)}")
        out.append(Vma(start, end, perms, int(m.group(4), 16), m.group(5).strip()))
    out.sort(key=lambda v: v.start)
    return out


def expand_ranges(ranges: Sequence[Sequence[int]]) -> npt.NDArray[np.uint64]:
    """``[[vaddr, nr_pages], …]`` → sorted distinct page addresses."""
    if not ranges:
        return np.zeros(0, dtype=np.uint64)
    starts = np.array([int(r[0]) for r in ranges], dtype=np.uint64)
    counts = np.array([int(r[1]) for r in ranges], dtype=np.int64)
    if (counts < 0).any() or (starts % np.uint64(PAGE)).any():
        raise FormatError("dumped ranges", 0, "page ranges must be page-aligned with non-negative counts")
    total = int(counts.sum())
    if total > 1 << 26:
        raise FormatError("dumped ranges", 0, f"{total:,} pages is more than a JVM's images can hold")
    rep = np.repeat(starts, counts)
    offs = np.arange(total, dtype=np.uint64) - np.repeat(np.cumsum(counts) - counts, counts).astype(np.uint64)
    return np.unique(rep + offs * np.uint64(PAGE))


@dataclass(frozen=True)
class ProcessImage:
    """The JVM's pages in image space: ``vaddr[i]`` sits at image address ``i × 4096``."""

    pid: int
    exe: str
    vmas: list[Vma]
    vaddr: npt.NDArray[np.uint64]  # sorted; dumped pages, then (merged in order) zero-filled fault pages
    dumped: npt.NDArray[np.bool_]

    def index_of(self, va: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        idx = np.searchsorted(self.vaddr, va)
        ok = (idx < self.vaddr.size) & (self.vaddr[np.minimum(idx, max(self.vaddr.size - 1, 0))] == va)
        if not ok.all():
            bad = va[~ok][0]
            raise FormatError("process trace", 0, f"page {int(bad):#x} is not in the process image")
        return idx.astype(np.int64)

    def memmap(self, extra_meta: dict[str, Any] | None = None) -> Memmap:
        starts = np.array([v.start for v in self.vmas], dtype=np.uint64)
        ends = np.array([v.end for v in self.vmas], dtype=np.uint64)
        vi = np.searchsorted(starts, self.vaddr, side="right").astype(np.int64) - 1
        inside = (vi >= 0) & (self.vaddr < ends[np.maximum(vi, 0)]) if starts.size else np.zeros(
            self.vaddr.size, dtype=bool)
        if not inside.all():
            bad = self.vaddr[~inside][0]
            raise FormatError("maps.txt", 0, f"dumped page {int(bad):#x} lies in no mapping of the JVM")
        named = np.array([bool(v.name) and not v.name.startswith("[") for v in self.vmas], dtype=bool)
        pm = np.full(self.vaddr.size, PM_EXCLUSIVE, dtype=np.uint8)
        if named.size:
            pm[named[vi]] |= PM_FILE
        n = self.vaddr.size
        meta = {"format": MEMMAP_FORMAT, "version": 1, "page_size": PAGE, "owner_exe": [self.exe],
                "map_name": [v.name for v in self.vmas], "address_space": ADDRESS_SPACE,
                "source": "criu", **(extra_meta or {})}
        return Memmap(
            owner_pid=np.array([self.pid], dtype=np.int64),
            map_owner=np.zeros(len(self.vmas), dtype=np.int32), map_start=starts, map_end=ends,
            map_offset=np.array([v.offset for v in self.vmas], dtype=np.uint64),
            map_perms=np.array([v.perms for v in self.vmas], dtype=np.uint8),
            page_map=vi.astype(np.int32), page_owner=np.zeros(n, dtype=np.int32), page_vaddr=self.vaddr,
            page_paddr=np.arange(n, dtype=np.uint64) * np.uint64(PAGE), page_pm=pm,
            page_kflags=np.zeros(n, dtype=np.uint64), page_kcount=np.ones(n, dtype=np.uint32), meta=meta)


def eager_pages(dumped: Sequence[Sequence[int]]) -> npt.NDArray[np.uint64] | None:
    """Pages of ``[[vaddr, n, lazy], …]`` a lazy restore installs before the process runs (``lazy`` 0);
    None when the ranges do not say (``[vaddr, n]`` only)."""
    if not dumped or any(len(r) < 3 for r in dumped):
        return None
    return expand_ranges([r[:2] for r in dumped if not int(r[2])])


def process_image(pid: int, exe: str, maps_text: str, dumped: Sequence[Sequence[int]],
                  extra: npt.NDArray[np.uint64] | None = None) -> ProcessImage:
    """The image space of one dumped process; ``extra``: fault pages outside the dump (zero-filled)."""
    vmas = parse_maps(maps_text)
    pages = expand_ranges([r[:2] for r in dumped])
    if extra is not None and extra.size:
        extra = np.setdiff1d(np.asarray(extra, dtype=np.uint64), pages)
        allp = np.concatenate([pages, extra])
        order = np.argsort(allp, kind="stable")
        is_dumped = np.concatenate([np.ones(pages.size, bool), np.zeros(extra.size, bool)])[order]
        return ProcessImage(pid, exe, vmas, allp[order], is_dumped)
    return ProcessImage(pid, exe, vmas, pages, np.ones(pages.size, dtype=bool))


def fault_trace(image: ProcessImage, t_s: Sequence[float], addr: Sequence[int], zero: Sequence[bool],
                strategy: str, meta: dict[str, Any] | None = None,
                eager: npt.NDArray[np.uint64] | None = None) -> Trace:
    """The lazy restore's faults (in order; ``t_s`` since the restore began) as a trace in image space,
    after the ``eager`` pages CRIU installed before the process ran (action EAGER, t = 0)."""
    va = np.asarray(addr, dtype=np.uint64) & ~np.uint64(PAGE - 1)
    ev = np.zeros(0, dtype=np.uint64) if eager is None else np.asarray(eager, dtype=np.uint64)
    n, ne = va.size, ev.size
    idx = image.index_of(np.concatenate([ev, va]))
    off = idx.astype(np.uint64) * np.uint64(PAGE)
    t_ns = np.concatenate([np.zeros(ne, dtype=np.uint64), np.maximum(
        np.round(np.asarray(t_s, dtype=np.float64) * 1e9), 0).astype(np.uint64)])
    zero_arr = np.asarray(zero, dtype=bool) if n else np.zeros(0, dtype=bool)
    flags = np.concatenate([np.zeros(ne, dtype=np.uint8), np.full(n, FLAG_FAULTING, dtype=np.uint8)
                            | np.where(zero_arr, FLAG_ZERO, 0).astype(np.uint8)])
    action = np.concatenate([np.full(ne, Action.EAGER, dtype=np.uint8),
                             np.where(zero_arr, Action.ZERO, Action.LOAD).astype(np.uint8)])
    fault = np.concatenate([np.full(ne, -1, dtype=np.int32), np.arange(n, dtype=np.int32)])
    return make_trace({"t_ns": t_ns, "hva": np.concatenate([ev, va]), "file_off": off, "gpa": off,
                       "flags": flags, "action": action, "fault": fault,
                       "service_ns": np.zeros(ne + n, dtype=np.uint32)},
                      {"strategy": strategy, "vmm": "criu", "address_space": ADDRESS_SPACE,
                       "page_size": PAGE, "pid": image.pid, **(meta or {})})


def eager_trace(image: ProcessImage, strategy: str, meta: dict[str, Any] | None = None) -> Trace:
    """An eager restore: every dumped page installed before the process runs (one row each, t = 0)."""
    idx = np.flatnonzero(image.dumped)
    off = idx.astype(np.uint64) * np.uint64(PAGE)
    n = off.size
    return make_trace({"t_ns": np.zeros(n, dtype=np.uint64), "hva": image.vaddr[idx], "file_off": off,
                       "gpa": off, "flags": np.zeros(n, dtype=np.uint8),
                       "action": np.full(n, Action.EAGER, dtype=np.uint8), "fault": np.full(n, -1, np.int32),
                       "service_ns": np.zeros(n, dtype=np.uint32)},
                      {"strategy": strategy, "vmm": "criu", "address_space": ADDRESS_SPACE,
                       "page_size": PAGE, "pid": image.pid, **(meta or {})})

