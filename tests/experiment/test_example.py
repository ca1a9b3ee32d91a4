"""Done-when of issue #9: the bundled example (probe guest, 2 × 4 × 3) runs here end to end, and its
report opens in headless Chromium with every plot drawn."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firecracer.experiment.store import ResultStore

from .test_report import chromium

pytestmark = pytest.mark.firecracker


def test_bundled_example_end_to_end(firecracker_bin: Path, tmp_path: Path) -> None:
    from firecracer.fcversion import firecracker_version

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("the example's uffd strategies need Firecracker >= 1.8 on this host kernel")
    env = {**os.environ, "FIRECRACKER": str(firecracker_bin)}
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "firecracer", "experiment", "run", "--example", "-o", str(res)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    with ResultStore.open(res) as st:
        runs = st.runs()
    why = "; ".join(f"{r.run_id}: {r.reason}" for r in runs if not r.ok)
    assert "24 ok, 0 failed" in " ".join(run.stdout.split()), why
    assert len(runs) == 24 and all(r.ok and r.backend == "probe" for r in runs)
    assert all(r.metrics["errors"] == 0 for r in runs)
    assert all((res / "runs" / r.run_id / "report.html").exists() for r in runs if r.strategy != "file")

    rep = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "report", str(res), "-o",
                          str(tmp_path / "report.html")], capture_output=True, text=True, timeout=120,
                         env=env, check=False)
    assert rep.returncode == 0, rep.stderr
    dom = chromium(tmp_path, "--dump-dom", (tmp_path / "report.html").as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    marks = {m.group(2): int(m.group(1)) for m in
             re.finditer(r'<svg class="plot" data-marks="(\d+)" role="img" aria-label="([^"]*)"', dom.stdout)}
    assert marks["First response after restore (ms)"] == 24
    assert marks["Page faults (median per run)"] == 8
    assert marks["MiB served by the page server (median)"] == 6
    assert marks["First response, split into phases (ms, medians)"] >= 8
    assert sum(1 for k in marks if " · " in k) == 4  # Jaccard heatmaps: ondemand + fault-around per variant
    assert all(n > 0 for n in marks.values()), marks
