"""The viewer on real recordings: a local JVM with NMT (tests/fixtures/local_jvm, 24 GiB host, 6 Mi
page slots) and two real Firecracker restores of the probe guest (tests/fixtures/probe_*)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firecracer.analysis import load_recording
from firecracer.analysis.nmt import parse_nmt
from firecracer.viz.browser import Browser
from firecracer.viz.html import ViewOptions, write_report

FIX = Path(__file__).resolve().parents[1] / "fixtures"
JVM = FIX / "local_jvm"
PROBE_A, PROBE_B = FIX / "probe_ondemand", FIX / "probe_around16"


def _need(*dirs: Path) -> None:
    for d in dirs:
        if not (d / "recording.json").exists():
            pytest.skip(f"fixture {d.name} missing")


def _open(b: Browser, html: Path) -> None:
    b.open(html.as_uri())
    b.wait_for("window.FC && ((FC.ready && FC.detailReady) || FC.error)", timeout=120)
    assert b.evaluate("FC.error") is None


def _click_row(b: Browser, key: str, twisty: bool = False) -> None:
    sel = f'#tree .row[data-key="{key}"]' + (" .tw" if twisty else "")
    r = b.evaluate(f"(() => {{ const e = document.querySelector({sel!r}); if (!e) return null; "
                   "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                   "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    assert r is not None, f"no tree row {key}"
    b.click(r[0], r[1])


def test_real_jvm_java_heap_selection_is_exactly_the_heap(browser: Browser, tmp_path: Path) -> None:
    _need(JVM)
    rec = load_recording(JVM)
    mm = rec.memmap
    heap = next(r for r in parse_nmt(JVM / "nmt.txt").regions if r.category == "Java Heap")
    pid = rec.nmt_pid
    inside = (mm.owner_pid[mm.page_owner] == pid) & (mm.page_vaddr >= heap.start) & (mm.page_vaddr < heap.end)
    expected = set((mm.page_paddr[inside] // 4096).tolist())
    assert expected
    html = write_report([rec], tmp_path / "jvm.html")
    _open(browser, html)
    jkey = browser.evaluate(f"FC.panels[0].tree.find(n => n.label.startsWith('{pid}:')).key")
    _click_row(browser, jkey, twisty=True)
    _click_row(browser, jkey + "|nmt", twisty=True)
    _click_row(browser, "nmt|r:Java Heap#0")
    sel = browser.wait_for("FC.selected && FC.selected.key === 'nmt|r:Java Heap#0' && FC.selected")
    assert sel["pages"] == [len(expected)]
    got = set(browser.evaluate("FC.slotsWithColor(0, ['selected', 'selshared'])"))
    assert got == expected
    # hover one heap page: the JVM is its owner, with the NMT category
    page = min(expected)
    va = int(mm.page_vaddr[inside & (mm.page_paddr == page * 4096)][0])
    xy = browser.evaluate(f"FC.slotToClient(0, {page})")
    browser.mouse("mouseMoved", xy["x"], xy["y"])
    tip = browser.wait_for("document.getElementById('tip').style.display === 'block' && "
                           "document.getElementById('tip').textContent")
    assert f"{pid}: /usr/lib/jvm/java-17-openjdk-amd64/bin/java (0x{va:016x} virt)" in tip
    assert "NMT Java Heap" in tip


def test_real_probe_restores_side_by_side(browser: Browser, tmp_path: Path) -> None:
    _need(PROBE_A, PROBE_B)
    a, b = load_recording(PROBE_A), load_recording(PROBE_B)
    assert a.trace is not None and b.trace is not None
    html = write_report([a, b], tmp_path / "probe.html", ViewOptions(scale=4, width=256))
    _open(browser, html)
    assert browser.evaluate("[FC.counter(0), FC.counter(1)]") == [len(a.trace), len(b.trace)]  # all drawn
    browser.evaluate("FC.setPos(100)")
    assert browser.evaluate("[FC.counter(0), FC.counter(1)]") == [100, 100]
    browser.evaluate("FC.setPos(1e9)")
    assert browser.evaluate("[FC.counter(0), FC.counter(1)]") == [len(a.trace), len(b.trace)]
    # the first served page of the on-demand restore: its tooltip names the uffd event
    first = int(a.trace.gpa[0]) // 4096
    xy = browser.evaluate(f"FC.slotToClient(0, {first})")
    browser.mouse("mouseMoved", xy["x"], xy["y"])
    tip = browser.wait_for("document.getElementById('tip').style.display === 'block' && "
                           "document.getElementById('tip').textContent")
    act = ("load", "zero", "prefetch", "around", "eager")[int(a.trace.action[0])]
    assert f"uffd action: {act}" in tip and "restore #1 of" in tip
    assert ("uffd event: write" in tip) == bool(int(a.trace.flags[0]) & 1)
    restored = set(browser.evaluate("FC.slotsWithColor(1, ['loadsel', 'load', 'nomap'])"))
    assert restored == set(np.unique(b.trace.gpa // np.uint64(4096)).astype(int).tolist())
