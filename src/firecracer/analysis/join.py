"""The join: restore trace → guest-physical page → owners (processes, NMT, kernel, page cache, free).

All work is on numpy arrays (sort once, ``searchsorted``, ``bincount``); nothing loops per page.

Three aligned views come out of ``attribute(recording) -> Attribution``:

* per **memmap row** (aligned with ``memmap.page_*``): ``row_phys`` (index into ``phys``),
  ``row_nmt_region`` (index into ``nmt_regions`` for the JVM's rows, else -1), ``row_nmt_committed``,
  ``row_first_touch`` (trace index of the first restore of the row's physical page, -1 if never);
* per **distinct physical page** (``phys``, sorted gpa): ``phys_nrows`` owners (every (pid, gva), kernel,
  page-cache or free row: a page with more than one is *shared*, as in the seed's viewer),
  ``phys_nproc`` process mappers (for PSS), ``phys_row`` the primary owner row (the JVM first, then other
  processes, kernel, page cache, free), ``phys_class`` its ``OwnerClass``, ``phys_first_touch``;
  ``rows_of(i)`` lists all owner rows of physical page ``i`` (``row_order[phys_start[i]:…]``);
* per **trace row** (aligned with ``attribution.trace``, which is the recording's trace, split into
  memmap-sized pages when the trace used 2 MiB pages): ``trace_phys`` (-1 when the page is in no memmap
  section), ``trace_row``, ``trace_class``, ``trace_nmt_region``, ``trace_first`` (first time this page
  is served in the trace).

Public API: ``OwnerClass``, ``CLASS_NAMES``, ``Attribution``, ``attribute(recording)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from firecracer.analysis.memmap import PID_FREE, PID_KERNEL, PID_PAGECACHE
from firecracer.analysis.nmt import NmtArrays, NmtRegion
from firecracer.analysis.recording import Recording
from firecracer.uffd.trace import Trace

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


class OwnerClass(IntEnum):
    """What owns a physical page (the primary owner when several do)."""

    NONE = 0        # not in any memmap section (e.g. a recording without memmap)
    PROCESS = 1
    KERNEL = 2
    PAGECACHE = 3
    FREE = 4


CLASS_NAMES = ("none", "process", "kernel", "pagecache", "free")


@dataclass
class Attribution:
    """Owners of every physical page and of every traced page; see the module docstring."""

    recording: Recording
    page_size: int
    trace: Trace | None
    # per memmap row
    row_class: npt.NDArray[np.uint8]
    row_phys: I64
    row_nmt_region: npt.NDArray[np.int32]
    row_nmt_committed: npt.NDArray[np.bool_]
    row_first_touch: I64
    # per distinct physical page
    phys: U64
    row_order: I64
    phys_start: I64
    phys_nrows: npt.NDArray[np.int32]
    phys_nproc: npt.NDArray[np.int32]
    phys_row: I64
    phys_class: npt.NDArray[np.uint8]
    phys_first_touch: I64
    # per trace row
    trace_phys: I64
    trace_row: I64
    trace_class: npt.NDArray[np.uint8]
    trace_nmt_region: npt.NDArray[np.int32]
    trace_first: npt.NDArray[np.bool_]
    # NMT of the JVM
    nmt_owner: int
    nmt_regions: list[NmtRegion]
    nmt_arrays: NmtArrays | None

    @property
    def nmt_categories(self) -> list[str]:
        """Category names; ``nmt_arrays.region_cat`` indexes this list."""
        return self.nmt_arrays.categories if self.nmt_arrays is not None else []

    def rows_of(self, phys_index: int) -> I64:
        """Memmap rows (all owners) of one distinct physical page."""
        s = int(self.phys_start[phys_index])
        return self.row_order[s:s + int(self.phys_nrows[phys_index])]

    def restored_gpas(self) -> U64:
        """Sorted distinct guest-physical pages the trace served."""
        if self.trace is None:
            return np.zeros(0, dtype=np.uint64)
        g = np.sort(self.trace.gpa[self.trace_first] & ~np.uint64(self.page_size - 1))
        return g


def _class_of_pids(pids: I64) -> npt.NDArray[np.uint8]:
    cls = np.full(pids.shape, OwnerClass.NONE, dtype=np.uint8)
    cls[pids > 0] = OwnerClass.PROCESS
    cls[pids == PID_KERNEL] = OwnerClass.KERNEL
    cls[pids == PID_PAGECACHE] = OwnerClass.PAGECACHE
    cls[pids == PID_FREE] = OwnerClass.FREE
    return cls


def _split_trace(trace: Trace, page_size: int) -> Trace:
    """A trace in ``page_size`` rows (2 MiB rows become 512 rows of 4 KiB, same time/action)."""
    ratio = trace.page_size // page_size
    if ratio <= 1:
        return trace
    n = len(trace)
    sub = np.tile(np.arange(ratio, dtype=np.uint64) * np.uint64(page_size), n)
    rep = {k: np.repeat(v, ratio) for k, v in trace.columns().items()}
    for k in ("hva", "file_off", "gpa"):
        rep[k] = rep[k] + sub
    return type(trace)(**rep, meta={**trace.meta, "page_size": page_size, "split_from": trace.page_size})


def _argsort_ties_by_index(key: U64) -> I64:
    """``argsort(key, kind="stable")``, but faster: a quicksort, then equal keys (rare: pages shared by
    owners of one priority) put back in row order."""
    order = np.argsort(key).astype(np.int64)
    ks = key[order]
    if ks.size > 1:
        eq = ks[1:] == ks[:-1]
        if eq.any():
            tied = np.zeros(ks.size, dtype=bool)
            tied[1:] |= eq
            tied[:-1] |= eq
            pos = np.flatnonzero(tied)
            sub = order[pos]
            order[pos] = sub[np.lexsort((sub, ks[pos]))]
    return order


def attribute(recording: Recording) -> Attribution:
    """Join the recording's trace, memmap and NMT report (see the module docstring)."""
    mm = recording.memmap
    ps = mm.page_size
    n_rows = mm.n_pages
    pids = mm.owner_pid[mm.page_owner] if n_rows else np.zeros(0, dtype=np.int64)
    row_class = _class_of_pids(pids)

    # NMT: which owner is the JVM, and which region each of its rows falls in
    nmt_pid = recording.nmt_pid
    nmt_owner = -1
    if nmt_pid is not None:
        hits = np.flatnonzero(mm.owner_pid == nmt_pid)
        nmt_owner = int(hits[0]) if hits.size else -1
    row_nmt_region = np.full(n_rows, -1, dtype=np.int32)
    row_nmt_committed = np.zeros(n_rows, dtype=bool)
    nmt_arrays = recording.nmt.arrays() if recording.nmt is not None else None
    nmt_regions = recording.nmt.sorted_regions() if recording.nmt is not None else []
    if nmt_arrays is not None and nmt_owner >= 0 and nmt_arrays.region_start.size:
        jrows = np.flatnonzero(mm.page_owner == nmt_owner)
        va = mm.page_vaddr[jrows]
        ri = np.searchsorted(nmt_arrays.region_start, va, side="right").astype(np.int64) - 1
        inside = (ri >= 0) & (va < nmt_arrays.region_end[np.maximum(ri, 0)])
        row_nmt_region[jrows[inside]] = ri[inside]
        if nmt_arrays.committed_start.size:
            ci = np.searchsorted(nmt_arrays.committed_start, va, side="right").astype(np.int64) - 1
            cin = (ci >= 0) & (va < nmt_arrays.committed_end[np.maximum(ci, 0)])
            row_nmt_committed[jrows[cin]] = True

    # distinct physical pages; within a page, rows ordered by owner priority (JVM, process, kernel, …).
    # paddr is page aligned, so the priority fits in its low bits: one stable sort instead of a lexsort.
    is_jvm = (mm.page_owner == nmt_owner) if n_rows else np.zeros(0, dtype=bool)
    prio = row_class.astype(np.uint64) * np.uint64(2) + (~is_jvm).astype(np.uint64)
    page_mask = ~np.uint64(ps - 1)
    key = (mm.page_paddr & page_mask) | prio
    row_order = _argsort_ties_by_index(key)
    paddr_sorted = mm.page_paddr[row_order] & page_mask
    if n_rows:
        newgrp = np.empty(n_rows, dtype=bool)
        newgrp[0] = True
        newgrp[1:] = paddr_sorted[1:] != paddr_sorted[:-1]
        phys_start = np.flatnonzero(newgrp).astype(np.int64)
    else:
        phys_start = np.zeros(0, dtype=np.int64)
    phys = paddr_sorted[phys_start]
    phys_nrows = np.diff(np.append(phys_start, n_rows)).astype(np.int32)
    grp_of_sorted = np.cumsum(newgrp) - 1 if n_rows else np.zeros(0, dtype=np.int64)
    row_phys = np.empty(n_rows, dtype=np.int64)
    row_phys[row_order] = grp_of_sorted
    phys_nproc = np.bincount(row_phys[row_class == OwnerClass.PROCESS], minlength=len(phys)).astype(np.int32)
    phys_row = row_order[phys_start]
    phys_class = row_class[phys_row] if n_rows else np.zeros(0, dtype=np.uint8)

    # the trace
    trace = _split_trace(recording.trace, ps) if recording.trace is not None else None
    nt = len(trace) if trace is not None else 0
    trace_phys = np.full(nt, -1, dtype=np.int64)
    trace_first = np.zeros(nt, dtype=bool)
    phys_first_touch = np.full(len(phys), -1, dtype=np.int64)
    if trace is not None and nt:
        gpage = trace.gpa & ~np.uint64(ps - 1)
        uniq, first_idx, inverse = np.unique(gpage, return_index=True, return_inverse=True)
        trace_first[first_idx] = True
        if len(phys):
            pi = np.searchsorted(phys, uniq).astype(np.int64)      # sorted queries: cache friendly
            found = (pi < len(phys)) & (phys[np.minimum(pi, len(phys) - 1)] == uniq)
            upi = np.where(found, pi, -1)
            trace_phys = upi[inverse.reshape(-1)]
            phys_first_touch[upi[found]] = first_idx[found]
    has = trace_phys >= 0
    trace_row = np.full(nt, -1, dtype=np.int64)
    trace_row[has] = phys_row[trace_phys[has]]
    trace_class = np.zeros(nt, dtype=np.uint8)
    trace_class[has] = phys_class[trace_phys[has]]
    trace_nmt_region = np.full(nt, -1, dtype=np.int32)
    trace_nmt_region[has] = row_nmt_region[trace_row[has]]
    row_first_touch = phys_first_touch[row_phys] if n_rows else np.zeros(0, dtype=np.int64)

    return Attribution(
        recording=recording, page_size=ps, trace=trace,
        row_class=row_class, row_phys=row_phys, row_nmt_region=row_nmt_region,
        row_nmt_committed=row_nmt_committed, row_first_touch=row_first_touch,
        phys=phys, row_order=row_order, phys_start=phys_start, phys_nrows=phys_nrows,
        phys_nproc=phys_nproc, phys_row=phys_row, phys_class=phys_class,
        phys_first_touch=phys_first_touch,
        trace_phys=trace_phys, trace_row=trace_row, trace_class=trace_class,
        trace_nmt_region=trace_nmt_region, trace_first=trace_first,
        nmt_owner=nmt_owner, nmt_regions=nmt_regions, nmt_arrays=nmt_arrays)
