"""The HTML report: self-contained, every plot drawn — checked in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from firecracer.experiment.report import write_report
from firecracer.experiment.runner import run_study
from firecracer.experiment.spec import Spec
from firecracer.experiment.store import ResultStore, RunRecord

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def study(make_spec: Callable[..., Spec], tmp_path: Path) -> Path:
    """A finished host-replay study with one failed run."""
    spec = make_spec(strategies=("file", "ondemand", "fault-around:16", "prefetch"), repetitions=3,
                     viewer=True)
    res = tmp_path / "res"
    run_study(spec, res)
    with ResultStore.open(res) as st:
        r = next(x for x in st.runs() if x.run_id == "big.prefetch.r3")
        st.record(RunRecord(**{**r.__dict__, "status": "failed", "phase": "restore",
                               "reason": "restore: <Firecracker said no> & more", "timings": {},
                               "metrics": {},
                               "pages": None}))
    return res


def _plots(html: str) -> dict[str, int]:
    return {m.group(2): int(m.group(1)) for m in
            re.finditer(r'<svg class="plot" data-marks="(\d+)" role="img" aria-label="([^"]*)"', html)}


def test_report_is_self_contained_and_has_every_section(study: Path, tmp_path: Path) -> None:
    out = write_report(study, tmp_path / "out" / "report.html")
    html = out.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    assert "<script" not in html
    plots = _plots(html)
    assert plots["First response after restore (ms)"] == 2 * 4 * 3 - 1
    assert plots["Page faults (median per run)"] == 8
    assert plots["MiB served by the page server (median)"] == 6  # the File backend serves nothing
    assert plots["First response, split into phases (ms, medians)"] > 8
    # Jaccard heatmaps for the cells with traces from >= 2 repetitions (prefetch misses are empty here)
    assert plots["small · ondemand"] == 9 and plots["big · fault-around:16"] == 9
    assert "host-replay backend:" in html  # never passed off as VM results
    assert "restore: &lt;Firecracker said no&gt; &amp; more" in html
    assert "No run in this study has NMT attribution" in html
    # "vs ondemand": ondemand is the baseline, not "1.00× faster" than itself
    for variant in ("small", "big"):
        row = re.search(rf'<tr><td class="l">{variant}</td><td class="l">ondemand</td>(.*?)</tr>', html)
        assert row and "<td>baseline</td>" in row.group(1) and "faster" not in row.group(1), row
        other = re.search(rf'<tr><td class="l">{variant}</td><td class="l">prefetch</td>(.*?)</tr>', html)
        assert other and re.search(r"<td>\d+\.\d\d× (faster|slower)</td>", other.group(1)), other
    assert 'href="../res/runs/small.ondemand.r1/"' in html
    assert 'href="../res/runs/small.ondemand.r1/report.html">viewer</a>' in html  # per-run viewer pages
    assert (study / "runs" / "big.prefetch.r1" / "report.html").exists()
    assert not (study / "runs" / "big.file.r1" / "report.html").exists()  # no trace, no memmap: no viewer


def test_report_with_nmt_categories_draws_the_category_plot(study: Path, tmp_path: Path) -> None:
    with ResultStore.open(study) as st:
        for r in st.runs():
            if r.ok:
                r.categories = {"Java Heap": 3 << 20, "Metaspace": 1 << 19, "Code": 5 << 20}
                st.record(r)
    html = write_report(study, tmp_path / "r.html").read_text()
    assert _plots(html)["Restored MiB per NMT category (median per cell)"] == 8 * 3


def test_report_opens_in_chromium_with_all_plots_drawn(study: Path, tmp_path: Path) -> None:
    out = write_report(study, tmp_path / "report.html")
    dom = chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    plots = _plots(dom.stdout)
    assert len(plots) >= 6 and all(n > 0 for n in plots.values()), plots
    shot = tmp_path / "shot.png"
    res = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri())
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
    image = pytest.importorskip("PIL.Image")
    with image.open(shot) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20) or []}
    # the strategy palette's first colours are on screen: plots were painted, not just parsed
    assert {(0x4E, 0x79, 0xA7), (0xF2, 0x8E, 0x2B), (0xE1, 0x57, 0x59)} <= colours
