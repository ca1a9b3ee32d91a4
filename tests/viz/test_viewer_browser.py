"""The viewer in a real headless Chromium: drawn pixels, hover owners, NMT selection, animation."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firecracer.analysis import load_recording
from firecracer.analysis.nmt import parse_nmt
from firecracer.viz.browser import Browser
from firecracer.viz.html import ViewOptions, write_report
from firecracer.viz.synthetic import BASH_PID, JVM_PID

JAVA_KEY = "o:/usr/lib/jvm/java-17-openjdk-amd64/bin/java#0"


def _open(b: Browser, html: Path) -> None:
    b.open(html.as_uri())
    b.wait_for("window.FC && ((FC.ready && FC.detailReady) || FC.error)")
    assert b.evaluate("FC.error") is None


def _rgb(hexcol: str) -> tuple[int, int, int]:
    v = int(hexcol.lstrip("#"), 16)
    return (v >> 16, (v >> 8) & 255, v & 255)


def _click_key(b: Browser, key: str, twisty: bool = False) -> None:
    sel = f'#tree .row[data-key="{key}"]' + (" .tw" if twisty else "")
    r = b.evaluate(f"(() => {{ const e = document.querySelector({sel!r}); if (!e) return null; "
                   "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                   "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    assert r is not None, f"no tree row {key}"
    b.click(r[0], r[1])


def _pixels(b: Browser, panel: int = 0) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b.evaluate(f"FC.pixels({panel})")), dtype=np.uint32)


@pytest.fixture
def report(syn_rec: Path, tmp_path: Path) -> Path:
    return write_report([load_recording(syn_rec)], tmp_path / "report.html")


def test_canvas_draws_pages(browser: Browser, report: Path) -> None:
    _open(browser, report)
    png = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    box = browser.evaluate("(() => { const r = document.querySelector('canvas.pages')"
                           ".getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })()")
    crop = np.asarray(png.crop(tuple(int(v) for v in box)))
    colours = {tuple(c) for c in crop.reshape(-1, 3)[::7]}
    background = {_rgb("#d3d3d3"), _rgb("#f7f7f5")}
    drawn = colours - background
    assert len(drawn) >= 4, f"canvas shows only {colours}"
    # the process grey and the kernel colour are on screen
    assert _rgb("#808080") in drawn


def test_hover_shows_every_owner(browser: Browser, report: Path, syn_rec: Path) -> None:
    mm = load_recording(syn_rec).memmap
    pids = mm.owner_pid[mm.page_owner]
    both = np.intersect1d(mm.page_paddr[pids == BASH_PID], mm.page_paddr[pids == JVM_PID])
    page = int(both[0])                               # a libc page: bash, the JVM and the page cache
    jvm_va = int(mm.page_vaddr[(pids == JVM_PID) & (mm.page_paddr == page)][0])
    _open(browser, report)
    xy = browser.evaluate(f"FC.slotToClient(0, {page // 4096})")
    browser.mouse("mouseMoved", xy["x"], xy["y"])
    tip = browser.wait_for("document.getElementById('tip').style.display === 'block' && "
                           "document.getElementById('tip').textContent")
    assert f"0x{page:016x}" in tip
    assert "1: /usr/bin/bash (" in tip
    assert f"{JVM_PID}: /usr/lib/jvm/java-17-openjdk-amd64/bin/java (0x{jvm_va:016x} virt)" in tip
    assert f"-1: pagecache (0x{page:016x} virt)" in tip
    assert "libc.so.6" in tip and "3 owners" in tip
    assert "kpageflags" in tip


def test_selecting_java_heap_highlights_exactly_its_pages(browser: Browser, report: Path,
                                                          syn_rec: Path) -> None:
    mm = load_recording(syn_rec).memmap
    heap = next(r for r in parse_nmt(syn_rec / "nmt.txt").regions if r.category == "Java Heap")
    pids = mm.owner_pid[mm.page_owner]
    inside = (pids == JVM_PID) & (mm.page_vaddr >= heap.start) & (mm.page_vaddr < heap.end)
    expected = set((mm.page_paddr[inside] // 4096).tolist())
    assert len(expected) > 1000
    _open(browser, report)
    browser.evaluate("FC.setPos(0)")  # before the restore: every selected page in a selection colour
    _click_key(browser, JAVA_KEY, twisty=True)
    _click_key(browser, JAVA_KEY + "|nmt", twisty=True)
    _click_key(browser, "nmt|r:Java Heap#0")
    sel = browser.wait_for("FC.selected && FC.selected.key === 'nmt|r:Java Heap#0' && FC.selected")
    assert sel["pages"] == [len(expected)]
    assert browser.evaluate("FC.counter(0)") == 0
    got = set(browser.evaluate("FC.slotsWithColor(0, ['selected', 'selshared'])"))
    assert got == expected
    # the tree row shows the region's rss
    row = browser.evaluate("document.querySelector('#tree .row.sel').textContent")
    assert "Java Heap" in row and f"{len(expected) * 4:,}" in row


def _restored_drawn(b: Browser, syn_rec: Path) -> bool:
    tr = load_recording(syn_rec).trace
    assert tr is not None
    px = _pixels(b)
    colors = b.evaluate("FC.colors")
    restored = {colors["loadsel"], colors["load"], colors["nomap"]}
    slots = np.unique(tr.gpa // np.uint64(4096)).astype(np.int64)
    return all(int(v) in restored for v in px[slots])


def test_play_pause_step_rewind_fastforward(browser: Browser, report: Path, syn_rec: Path) -> None:
    n = len(load_recording(syn_rec).trace or [])
    _open(browser, report)
    # the page opens with the whole restore drawn (it used to show nothing until Play or End)
    assert browser.evaluate("document.getElementById('counter0').textContent") == f"{n:,}"
    assert _restored_drawn(browser, syn_rec)
    browser.evaluate("document.getElementById('speed').value = 0; "
                     "document.getElementById('speed').dispatchEvent(new Event('change'))")
    _click_key_button(browser, "b-play")                      # Play animates from the first fault
    browser.wait_for("FC.ui.playing")
    _click_key_button(browser, "b-play")                      # pause
    c = browser.evaluate("FC.counter(0)")
    assert 0 <= c < n
    assert browser.evaluate("FC.ui.playing") is False
    shown = browser.evaluate("document.getElementById('counter0').textContent")
    assert int(shown.replace(",", "")) == c
    if c < n:
        _click_key_button(browser, "b-step")
        assert browser.evaluate("FC.counter(0)") == c + 1
    _click_key_button(browser, "b-rewind")
    assert browser.evaluate("FC.counter(0)") == 0
    assert not _restored_drawn(browser, syn_rec)
    _click_key_button(browser, "b-ff")
    assert browser.evaluate("FC.counter(0)") == n
    assert _restored_drawn(browser, syn_rec)  # every restored page is drawn in a restored colour again


def test_at_start_option_opens_before_the_restore(browser: Browser, syn_rec: Path, tmp_path: Path) -> None:
    html = write_report([load_recording(syn_rec)], tmp_path / "start.html", ViewOptions(position="start"))
    _open(browser, html)
    assert browser.evaluate("FC.counter(0)") == 0 and not _restored_drawn(browser, syn_rec)


def test_recording_without_memmap_says_why(browser: Browser, syn_rec: Path, tmp_path: Path) -> None:
    """A probe restore recorded by an experiment has only a trace: the tree says there is no memory map
    and why (it was blank), and the restored pages are drawn as 'restored, no owner'."""
    import json
    import shutil

    rec = tmp_path / "probe-run"
    rec.mkdir()
    shutil.copy(syn_rec / "trace.npz", rec / "trace.npz")
    (rec / "recording.json").write_text(json.dumps({"format": "firecracer-recording", "version": 1,
                                                    "source": "firecracker", "strategy": "ondemand",
                                                    "guest": {"kernel": "probe", "mem_size_mib": 256}}))
    html = write_report([load_recording(rec)], tmp_path / "r.html")
    _open(browser, html)
    note = browser.evaluate("document.getElementById('tree').textContent")
    assert note.startswith("No memory map") and "probe guest" in note and "no operating system" in note
    assert "no memory map" in browser.evaluate("document.querySelector('.panel h2').textContent")
    tr = load_recording(rec).trace
    assert tr is not None
    px = _pixels(browser)
    slots = np.unique(tr.gpa // np.uint64(4096)).astype(np.int64)
    assert all(int(v) == browser.evaluate("FC.colors.nomap") for v in px[slots])
    (rec / "recording.json").write_text(json.dumps({"format": "firecracer-recording", "version": 1}))
    _open(browser, write_report([load_recording(rec)], tmp_path / "r2.html"))
    assert "no memmap.npz" in browser.evaluate("document.getElementById('tree').textContent")


@pytest.mark.parametrize("width", [1280, 1500])
def test_layout_fits_the_window_without_clipping(browser: Browser, syn_rec: Path, syn_rec_b: Path,
                                                 tmp_path: Path, width: int) -> None:
    """Long labels and a long selection once widened the page past a 1280-1500 px window: a page-level
    horizontal scrollbar, with the tree's columns, the legend and the speed selector cut off."""
    html = write_report([load_recording(syn_rec), load_recording(syn_rec_b)], tmp_path / "wide.html",
                        ViewOptions(title="a-long-study-name: variant-with-a-long-name.prefetch.r12"),
                        labels=["ws-32mib.ondemand.r3 (probe guest, 32 MiB working set, mean run 2.5)",
                                "ws-32mib.fault-around16.r3 (probe guest, 32 MiB working set, mean run 2.5)"])
    browser.set_viewport(width, 760)
    _open(browser, html)
    browser.evaluate(f"FC.select({JAVA_KEY + '|pmap'!r})")

    def box(sel: str) -> list[float]:
        return browser.evaluate(f"(() => {{ const r = document.querySelector({sel!r})"
                                ".getBoundingClientRect(); return [r.left, r.right, r.top, r.bottom]; })()")

    assert browser.evaluate("document.documentElement.scrollWidth") <= width
    assert browser.evaluate("innerWidth") == width
    for sel in ("#legend", "#speed", "#status", "#tabs", "#treecols span:last-child", "#b-ff", "#search"):
        left, right, top, bottom = box(sel)
        assert left >= 0 and right <= width, (sel, left, right)
        assert bottom <= 760, (sel, top, bottom)
    # the tree's number columns line up with their headers, inside the tree
    tree = box("#tree")
    for k in (2, 3, 4):
        head = box(f"#treecols span:nth-child({k})")
        cell = box(f"#tree .row .num:nth-child({k})")
        assert abs(head[1] - cell[1]) <= 12 and cell[1] <= tree[1], (k, head, cell, tree)


def _click_key_button(b: Browser, bid: str) -> None:
    r = b.evaluate(f"(() => {{ const r = document.getElementById({bid!r}).getBoundingClientRect(); "
                   "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    b.click(r[0], r[1])


def test_search_finds_a_mapping_and_selects_it(browser: Browser, report: Path) -> None:
    _open(browser, report)
    browser.evaluate("(() => { const s = document.getElementById('search'); s.value = 'libjvm';"
                     " s.dispatchEvent(new Event('input')); })()")
    browser.wait_for("document.querySelectorAll('#tree .hit').length > 0")
    browser.evaluate("document.querySelector('#tree .hit .row').click()")
    sel = browser.wait_for("FC.selected && FC.selected.label.includes('0x') && FC.selected")
    assert sel["pages"][0] == 2500


def test_compare_mode_synchronises_selection(browser: Browser, syn_rec: Path, syn_rec_b: Path,
                                             tmp_path: Path) -> None:
    html = write_report([load_recording(syn_rec), load_recording(syn_rec_b)], tmp_path / "cmp.html",
                        ViewOptions(scale=1), labels=["A", "B"])
    _open(browser, html)
    assert browser.evaluate("FC.panels.length") == 2
    sel = browser.evaluate("FC.select('nmtcat|Java Heap')")
    assert sel["pages"][0] > 0 and sel["pages"][1] > 0
    browser.evaluate("FC.setPos(1e9)")
    assert browser.evaluate("[FC.counter(0), FC.counter(1)]") == [
        len(load_recording(syn_rec).trace or []), len(load_recording(syn_rec_b).trace or [])]
    assert "Jaccard" in browser.evaluate("document.getElementById('summary').textContent") or \
        browser.evaluate("document.getElementById('summary').textContent").count("Comparison") == 1


def test_overview_zoom_keeps_every_selected_page_visible(browser: Browser, report: Path,
                                                         syn_rec: Path) -> None:
    _open(browser, report)
    browser.evaluate("FC.setPos(0)")  # restored pages outrank the selection: start before the restore
    sel = browser.evaluate("FC.select('nmtcat|Metaspace')")
    assert sel["pages"][0] > 0
    browser.evaluate("FC.setZoom(0.25)")
    assert browser.evaluate("FC.panels[0].k") == 4
    # every 4x4 block holding a selected page shows a selection colour (nothing else ranks higher here)
    bad = browser.evaluate("""(() => { const p = FC.panels[0], c = FC.colors, bad = [];
      for (const s of FC.slotsWithColor(0, ['selected', 'selshared'])) {
        const i = ((s / p.W | 0) / 4 | 0) * p.Wk + ((s % p.W) / 4 | 0);
        if (p.rpix[i] !== c.selected && p.rpix[i] !== c.selshared) bad.push(s);
      } return bad; })()""")
    assert bad == []
    assert browser.evaluate("document.getElementById('zoomlabel').textContent") == "4 pages/px"


def test_time_clock_follows_trace_time(browser: Browser, report: Path, syn_rec: Path) -> None:
    tr = load_recording(syn_rec).trace
    assert tr is not None
    t_us = (tr.t_ns - tr.t_ns.min()) // np.uint64(1000)
    _open(browser, report)
    browser.evaluate("(() => { const s = document.getElementById('speed'); s.value = 7;"
                     " s.dispatchEvent(new Event('change')); })()")
    assert browser.evaluate("FC.ui.clock") == "time"
    cut = int(t_us[len(t_us) // 2])
    browser.evaluate(f"FC.setPos({cut})")
    assert browser.evaluate("FC.counter(0)") == int((t_us <= cut).sum())
    assert browser.evaluate("document.getElementById('clock').textContent").startswith(f"{cut / 1000:.3f} /")
