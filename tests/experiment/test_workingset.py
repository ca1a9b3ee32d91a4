"""Scattered working sets (REAP-like short runs), trace page sets, runs and Jaccard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firecracer.errors import FirecracerError, FormatError
from firecracer.experiment.workingset import from_trace, jaccard, runs_of, scattered
from firecracer.uffd.trace import make_trace, save_trace


def test_scattered_is_seeded_distinct_in_range_with_short_runs() -> None:
    a = scattered(4096, 256, 32768, mean_run=2.5, seed=7)
    assert np.array_equal(a, scattered(4096, 256, 32768, mean_run=2.5, seed=7))
    assert not np.array_equal(a, scattered(4096, 256, 32768, mean_run=2.5, seed=8))
    assert len(a) == 4096 == len(np.unique(a))
    assert a.min() >= 256 and a.max() < 32768
    runs = runs_of(a)
    mean = 4096 / len(runs)
    assert 1.5 < mean < 4.0  # short runs, as REAP measured (2-3 pages)
    # touch order is not address order
    assert not np.all(np.diff(a.astype(np.int64)) > 0)


def test_scattered_refuses_what_cannot_fit() -> None:
    with pytest.raises(FirecracerError, match="does not fit"):
        scattered(600, 0, 1000)


def test_runs_of_and_jaccard() -> None:
    assert runs_of(np.array([5, 1, 2, 3, 9, 10], dtype=np.uint64)) == [(1, 3), (5, 1), (9, 2)]
    assert runs_of(np.array([], dtype=np.uint64)) == []
    a = np.array([1, 2, 3, 4], dtype=np.uint64)
    b = np.array([3, 4, 5, 6], dtype=np.uint64)
    assert jaccard(a, b) == pytest.approx(2 / 6)
    assert jaccard(a, a) == 1.0


def _trace(path: Path, gpa: list[int], flags: list[int], page_size: int = 4096) -> Path:
    n = len(gpa)
    cols = {"t_ns": range(n), "hva": gpa, "file_off": gpa, "gpa": gpa, "flags": flags, "action": [0] * n,
            "fault": range(n), "service_ns": [1] * n}
    return save_trace(make_trace(cols, {"strategy": "fault-around:2", "page_size": page_size}), path)


def test_from_trace_keeps_first_fault_order_of_faulting_pages(tmp_path: Path) -> None:
    p = _trace(tmp_path / "t.npz", [0x5000, 0x4000, 0x1000, 0x5000, 0x3000], [2, 0, 3, 2, 2])
    assert from_trace(p).tolist() == [5, 1, 3]


def test_from_trace_of_2mib_pages_speaks_4kib_pages(tmp_path: Path) -> None:
    huge = 2 << 20
    p = _trace(tmp_path / "t.npz", [3 * huge, huge, 3 * huge], [2, 2, 2], page_size=huge)
    pages = from_trace(p)
    assert pages.tolist() == [*range(3 * 512, 4 * 512), *range(512, 1024)]


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_from_trace_garbage(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=r"bad\.npz"):
        from_trace(p)


def test_from_trace_missing(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"none\.npz"):
        from_trace(tmp_path / "none.npz")
