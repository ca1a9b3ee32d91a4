"""PNG export and the ``firecracer view`` command (in-process, and serving over loopback)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from firecracer.analysis import attribute, load_recording
from firecracer.cli import cli
from firecracer.viz.png import PALETTE, chart_image, physical_image, write_pngs
from firecracer.viz.serve import ReportServer
from firecracer.viz.synthetic import JVM_PID

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _rgb(name: str) -> tuple[int, int, int]:
    v = int(PALETTE[name][1:], 16)
    return (v >> 16, (v >> 8) & 255, v & 255)


def test_physical_png_colours(syn_rec: Path) -> None:
    att = attribute(load_recording(syn_rec))
    mm = att.recording.memmap
    jvm = mm.owner_pid[mm.page_owner] == JVM_PID
    img = physical_image(att, width=256, scale=3, highlight=jvm)
    slots = (256 << 20) // 4096
    assert img.size == (256 * 3, slots // 256 * 3)
    a = np.asarray(img)

    def at(pfn: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in a[(pfn // 256) * 3 + 1, (pfn % 256) * 3 + 1])  # type: ignore[return-value]

    assert at(0) == _rgb("background")
    kern = int(mm.page_paddr[mm.owner_pid[mm.page_owner] == 0].min()) // 4096
    tr = att.trace
    assert tr is not None
    restored = set((tr.gpa // np.uint64(4096)).astype(int).tolist())
    if kern not in restored:
        assert at(kern) == _rgb("kernel")
    first = int(tr.gpa[0]) // 4096
    assert at(first) in (_rgb("loadsel"), _rgb("load"), _rgb("nomap"))
    heap_only = set((mm.page_paddr[jvm] // 4096).astype(int).tolist()) - restored
    assert at(min(heap_only)) in (_rgb("selected"), _rgb("selshared"))
    gap = np.asarray(physical_image(att, width=64, scale=4))
    assert tuple(gap[3, 0]) == _rgb("outside") and tuple(gap[0, 3]) == _rgb("outside")
    assert tuple(gap[1, 1]) == _rgb("background")


def test_chart_and_write_pngs(syn_rec: Path, tmp_path: Path) -> None:
    att = attribute(load_recording(syn_rec))
    assert chart_image(att, size=(700, 300)).size == (700, 300)
    paths = write_pngs(att, tmp_path / "fig.png", width=128, scale=1, nmt_category="Java Heap")
    assert [p.name for p in paths] == ["fig.png", "fig-categories.png"]
    assert Image.open(paths[0]).size == (128, (256 << 20) // 4096 // 128)


def test_cli_view_writes_html_and_pngs(syn_rec: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["view", str(syn_rec), "-o", str(out), "--png", str(tmp_path / "p.png"),
                                   "--width", "256", "--scale", "1", "--phys-mem", "256M", "--label", "syn",
                                   "--color", "loadsel=#FF8800"])
    assert res.exit_code == 0, res.output
    assert "syn: 44," in res.output and "uffd events" in res.output
    html = out.read_text()
    assert '"loadsel":"#ff8800"' in html
    assert '"label":"syn"' in html and '"phys_bytes":268435456' in html and '"width":256' in html
    assert (tmp_path / "p.png").exists() and (tmp_path / "p-categories.png").exists()


def test_cli_view_writes_into_the_current_directory_not_the_recording(syn_rec: Path, syn_rec_b: Path,
                                                                      tmp_path: Path) -> None:
    """Without -o the page lands in ./NAME.html (it used to go into RECORDING/, e.g. tests/fixtures)."""
    before = sorted(p.name for p in syn_rec.iterdir())
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        res = runner.invoke(cli, ["view", str(syn_rec), "--width", "256", "--scale", "1"])
        assert res.exit_code == 0, res.output
        assert (Path(cwd) / f"{syn_rec.name}.html").read_text().startswith("<!DOCTYPE html>")
        res = runner.invoke(cli, ["view", str(syn_rec), "--compare", str(syn_rec_b), "--width", "256"])
        assert res.exit_code == 0, res.output
        assert (Path(cwd) / f"{syn_rec.name}-vs-{syn_rec_b.name}.html").exists()
    assert sorted(p.name for p in syn_rec.iterdir()) == before
    assert not (syn_rec / "report.html").exists()


def test_cli_view_seed_files(tmp_path: Path) -> None:
    log = tmp_path / "uffd.log"
    log.write_text(
        "UFFD_EVENT_PAGEFAULT (r): 0x00007fffb3cc0000 0x00007fffb3cc0000  Loading: "
        "0x0000000001ff7000 - 0x0000000001ff8000\n"
        "UFFD_EVENT_PAGEFAULT (w): 0x00007fffb3cc1000 0x00007fffb3cc1000  Zeroing: "
        "0x00000000063d4000 - 0x00000000063d5000\n")
    out = tmp_path / "seed.html"
    memmap = FIX / "analysis" / "seed_readme_memmap.txt"
    res = CliRunner().invoke(cli, ["view", "--seed", str(memmap), str(log), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert '"uffd_events":2' in out.read_text()


@pytest.mark.parametrize("args,msg", [(["--seed", "X"], "--seed takes"),
                                      (["--phys-mem", "lots"], "not a size"),
                                      (["--color", "loadsel=orange"], "NAME=#RRGGBB")])
def test_cli_view_rejects_bad_arguments(syn_rec: Path, tmp_path: Path, args: list[str], msg: str) -> None:
    argv = ["view", *(a if a != "X" else str(syn_rec / "nmt.txt") for a in args)]
    if "--seed" not in args:
        argv.append(str(syn_rec))
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 2 and msg in res.output


def test_serve_returns_the_report(syn_rec: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("<!DOCTYPE html><title>x</title>")
    with ReportServer(out) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(srv.url, timeout=10) as resp:
            assert resp.status == 200 and b"<title>x</title>" in resp.read()


def test_cli_screenshot_with_a_hovered_page(syn_rec: Path, tmp_path: Path) -> None:
    from firecracer.viz.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CHROMIUM)")
    mm = load_recording(syn_rec).memmap
    page = int(mm.page_paddr[mm.owner_pid[mm.page_owner] == JVM_PID][0])
    shot = tmp_path / "shot.png"
    res = CliRunner().invoke(cli, ["view", str(syn_rec), "-o", str(tmp_path / "r.html"),
                                   "--screenshot", str(shot), "--screenshot-size", "800x600",
                                   "--screenshot-hover", hex(page)])
    assert res.exit_code == 0, res.output
    img = Image.open(shot).convert("RGB")
    assert img.size == (800, 600)
    # the tooltip's background colour is on screen
    assert (255, 255, 240) in {tuple(c) for c in np.asarray(img).reshape(-1, 3)[::3].tolist()}
