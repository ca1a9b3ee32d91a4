"""Working sets for trace-replay variants: seeded scattered page sets, or the pages of a recorded trace.

REAP found that a restored function touches its pages in contiguous runs of only 2–3 pages, scattered
over guest memory, in an order unrelated to their addresses. :func:`scattered` draws such a set: run
lengths from a geometric distribution with the given mean, runs placed at random non-overlapping
positions in ``[lo, hi)``, pages ascending within a run, runs in shuffled order. Same seed, same set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from firecracer.analysis.predictability import jaccard as set_jaccard
from firecracer.errors import FirecracerError
from firecracer.uffd.trace import FLAG_FAULTING, load_trace

PAGE = 4096
_GIB_PAGES = 1 << 18


def scatter_range(backend: str, mem_size_mib: int) -> tuple[int, int]:
    """The page range ``[lo, hi)`` a backend scatters seeded working sets over, for a guest of
    ``mem_size_mib``: the probe keeps its image and tables (below 16 MiB) and the 3 GiB MMIO hole out,
    host-replay only the first MiB. Spec validation and the backends use the same numbers."""
    mem_pages = mem_size_mib * 256
    if backend == "probe":
        return 4096, min(mem_pages, 3 * _GIB_PAGES)
    return 256, mem_pages


def max_scattered(backend: str, mem_size_mib: int) -> int:
    """The largest ``working_set_pages`` :func:`scattered` can place for that backend and guest."""
    lo, hi = scatter_range(backend, mem_size_mib)
    return max(0, (hi - lo) // 2)


def scattered(n_pages: int, lo: int, hi: int, mean_run: float = 2.5, seed: int = 0) -> npt.NDArray[np.uint64]:
    """``n_pages`` distinct page numbers in ``[lo, hi)`` in touch order (see module doc).

    Raises ``FirecracerError`` when the range cannot hold them with gaps between runs.
    """
    span = hi - lo
    if n_pages < 1 or mean_run < 1:
        raise FirecracerError(f"working set: need n_pages >= 1 and mean_run >= 1 (got {n_pages}, {mean_run})")
    if 2 * n_pages > span:
        raise FirecracerError(f"working set of {n_pages} pages does not fit scattered in {span} pages "
                              "(at most half the range)")
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    left = n_pages
    while left > 0:
        k = int(min(left, rng.geometric(1.0 / mean_run)))
        lengths.append(k)
        left -= k
    runs = np.array(lengths, dtype=np.int64)
    # Place runs with at least one free page after each: choose gap sizes summing to the free space.
    free = span - int(runs.sum()) - len(runs)
    cuts = np.sort(rng.integers(0, free + 1, size=len(runs)))
    gaps = np.diff(np.concatenate(([0], cuts)))
    starts = lo + np.cumsum(gaps) + np.concatenate(([0], np.cumsum(runs[:-1] + 1)))
    order = rng.permutation(len(runs))
    pages = np.concatenate([np.arange(starts[i], starts[i] + runs[i], dtype=np.int64) for i in order])
    return pages.astype(np.uint64)


def from_trace(path: Path) -> npt.NDArray[np.uint64]:
    """Guest-physical 4 KiB page numbers the guest faulted on in ``trace.npz``, unique, in first-fault order.

    Only rows flagged as the faulting page count (neighbours of fault-around and prefetched pages are not
    evidence the guest needed them). A trace of a guest with 2 MiB pages gives each faulted page's 512
    4 KiB pages (in address order), so working sets of both page sizes compare page for page (what a 2 MiB
    working set drags in beyond a 4 KiB one). Raises ``FormatError`` naming the file when it is not a
    valid trace.
    """
    trace = load_trace(path)
    gpa = trace.gpa[(trace.flags & FLAG_FAULTING) != 0]
    pages = gpa // np.uint64(trace.page_size)
    _, first = np.unique(pages, return_index=True)
    out: npt.NDArray[np.uint64] = pages[np.sort(first)]
    per = trace.page_size // PAGE
    if per > 1:
        out = (out[:, None] * np.uint64(per) + np.arange(per, dtype=np.uint64)[None, :]).reshape(-1)
    return out


def runs_of(pages: npt.NDArray[np.uint64]) -> list[tuple[int, int]]:
    """Sorted pages → contiguous ``(start, count)`` runs (for bulk installs)."""
    if len(pages) == 0:
        return []
    s = np.sort(pages.astype(np.int64))
    breaks = np.flatnonzero(np.diff(s) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(s)]))
    return [(int(s[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def jaccard(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> float:
    """|A ∩ B| / |A ∪ B| of two page sets (1.0 for two empty sets); ``analysis.predictability.jaccard``
    (one definition for the report, the benchmarks and ``analyze --predictability``) on any arrays."""
    return set_jaccard(np.unique(a), np.unique(b))
