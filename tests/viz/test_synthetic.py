"""The synthetic recording (benchmarks/viewer_load.py's data) speaks Firecracker's RAM layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from firecracer.analysis.recording import load_recording
from firecracer.ramlayout import GiB, Layout
from firecracer.viz.synthetic import make_recording


def test_a_guest_above_the_mmio_hole_loads(tmp_path: Path) -> None:
    mem = 3 * GiB + (256 << 20)  # RAM beyond 3 GiB: those pages live at gpa 4 GiB and up
    rec = load_recording(make_recording(tmp_path / "r", mem, seed=3))  # load_trace validates gpa/file_off
    tr = rec.trace
    assert tr is not None
    layout = Layout.for_guest(mem)
    assert (tr.gpa == layout.file_off_to_gpa(tr.file_off)).all()
    assert int(tr.gpa.max()) >= 4 * GiB and int(tr.file_off.max()) < mem
    hole = (rec.memmap.page_paddr >= np.uint64(3 * GiB)) & (rec.memmap.page_paddr < np.uint64(4 * GiB))
    assert not hole.any(), "no memmap page sits in the MMIO hole"
