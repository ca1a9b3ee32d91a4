"""Replay a recorded restore with the probe: the faulting pages of a ``trace.npz`` become the probe's
trace, in first-fault order, so a real workload's restore order can be re-run on any KVM host.

Pages the original restore *loaded* from the memory file are filled (so they are non-zero in the
snapshot and served with UFFDIO_COPY again); pages it served as zero pages stay unfilled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from firecracer.errors import FormatError
from firecracer.uffd.trace import FLAG_FAULTING, load_trace
from firecracer.vmm.probe import PAGE_SIZE


def replay_pages(trace_path: str | os.PathLike[str], *,
                 limit: int | None = None) -> tuple[list[int], list[int]]:
    """``(trace, fill)`` guest page numbers from a restore trace (``docs/formats.md`` trace.npz).

    :param limit: keep only the first ``limit`` faulting pages.
    :raises FormatError: unreadable trace, or not 4 KiB pages.
    """
    path = Path(trace_path)
    tr = load_trace(path)
    if tr.page_size != PAGE_SIZE:
        raise FormatError(path, 0, f"page size {tr.page_size}: the probe replays 4 KiB pages only")
    faulting = (tr.flags & FLAG_FAULTING) != 0
    gpa = tr.gpa[faulting]
    zero = tr.is_zero()[faulting]
    _, first = np.unique(gpa, return_index=True)
    order = np.sort(first)
    if limit is not None:
        order = order[:limit]
    pages = (gpa[order] // PAGE_SIZE).astype(np.int64)
    filled = pages[~zero[order]]
    return [int(p) for p in pages], [int(p) for p in filled]
