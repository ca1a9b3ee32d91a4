"""Golden tables of real recordings (regenerate: ``PYTHONPATH=src python tests/analysis/regen_golden.py``).

``local_jvm``: a JVM with NMT detail on the dev host, collected by ``firecracer collect --local``
(scripts/make_local_fixture.py). ``probe_ondemand``: the probe guest restored under Firecracker 1.14
through our uffd page server (tests/analysis/make_probe_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firecracer.analysis import attribute, load_recording
from firecracer.analysis.tables import totals
from firecracer.guest.seedfmt import write_seed_text
from firecracer.uffd.trace import export_seed_log

from .regen_golden import FIXTURES, GOLDEN, RECORDINGS, analyze_json
from .uffdvis_rules import mappings_counts, nmt_regions, uffd_counts


@pytest.mark.parametrize("name", RECORDINGS)
def test_golden(name: str) -> None:
    want = json.loads((GOLDEN / f"{name}.json").read_text())
    got = analyze_json(name)
    assert got["totals"] == want["totals"]
    for table, rows in want["tables"].items():
        assert got["tables"][table] == rows, table


def test_local_jvm_facts() -> None:
    rec = load_recording(FIXTURES / "local_jvm")
    assert rec.nmt is not None and rec.nmt_pid == rec.meta["jvm"]["pid"]
    got = analyze_json("local_jvm")
    jvm = next(r for r in got["tables"]["processes"] if r["pid"] == rec.nmt_pid)
    smaps = (FIXTURES / "local_jvm" / "smaps" / f"{rec.nmt_pid}.txt").read_text().splitlines()
    rss = sum(int(x.split()[1]) for x in smaps if x.startswith("Rss:"))
    assert abs(jvm["rss_kb"] - rss) <= 0.01 * rss            # our join vs the kernel's own count
    for r in got["tables"]["nmt_regions"]:
        assert r["rss_kb"] <= r["committed_kb"] <= r["virtual_kb"], r
    cats = {r["category"]: r for r in got["tables"]["nmt_categories"]}
    assert {"Java Heap", "Metaspace", "Code", "Class"} <= set(cats)
    assert cats["Java Heap"]["rss_kb"] > 0


def test_probe_restore_facts() -> None:
    rec = load_recording(FIXTURES / "probe_ondemand")
    assert rec.trace is not None
    att = attribute(rec)
    mm = rec.memmap
    fill = np.array([n == "fill" for n in mm.map_name])[mm.page_map]
    # every filled page the probe walked was served exactly once, as a load, and attributed to it
    served = {int(g): int(a) for g, a in zip(rec.trace.gpa, rec.trace.action, strict=True)}
    assert all(served.get(int(p)) == 0 for p in mm.page_paddr[fill])
    assert (att.row_first_touch[fill] >= 0).all()
    # the never-filled pages it walked were holes in the memory file: zero pages, owned by nobody
    holes = rec.trace.gpa[rec.trace.is_zero()]
    assert len(holes) >= 32 and (att.trace_phys[rec.trace.is_zero()] == -1).sum() >= 32
    assert rec.meta["probe"]["result"]["errors"] == 0


@pytest.mark.parametrize("name", RECORDINGS)
def test_real_exports_match_uffdvisualizer_counts(tmp_path: Path, name: str) -> None:
    rec = load_recording(FIXTURES / name)
    tot = totals(attribute(rec))
    write_seed_text(rec.memmap, tmp_path / "memmap.txt", full_names=True, include_free=True)
    assert mappings_counts(tmp_path / "memmap.txt") == (tot["physical_pages"], tot["processes"])
    if rec.trace is not None:
        export_seed_log(rec.trace, tmp_path / "uffd.log")
        assert uffd_counts(tmp_path / "uffd.log") == (tot["uffd_events"], tot["pages_loaded"],
                                                      tot["pages_zeroed"])
    if rec.nmt is not None:
        assert nmt_regions(FIXTURES / name / "nmt.txt") == tot["nmt_regions"]


def test_compare_two_real_restores_of_one_snapshot() -> None:
    """fault-around:16 installs a superset of what ondemand installs, so Jaccard = |ondemand| / |around|."""
    from firecracer.analysis import compare

    a = attribute(load_recording(FIXTURES / "probe_ondemand"))
    b = attribute(load_recording(FIXTURES / "probe_around16"))
    assert a.trace is not None and b.trace is not None
    sa, sb = set(a.trace.gpa.tolist()), set(b.trace.gpa.tolist())
    assert sa <= sb and len(sb) > len(sa)
    sim = {r["group"]: r for r in compare(a, b)["similarity"].to_dicts()}
    assert sim["all"]["common_gpa"] == len(sa)
    assert sim["all"]["jaccard_gpa"] == round(len(sa) / len(sb), 4)
    assert sim["class:process"]["jaccard_gpa"] is not None
    cats = {r["group"]: r for r in compare(a, b)["categories"].to_dicts()}
    assert cats["class:process"]["rss_kb_delta"] == 0          # same snapshot, same memmap


@pytest.mark.root
@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (pagemap PFNs, kpageflags)")
def test_collector_seed_export_parses_to_the_same_rows(tmp_path: Path) -> None:
    """A live collection of a child process on this host: memmap.txt (seed) == memmap.npz, row for row."""
    import subprocess
    import sys

    from firecracer.analysis.memmap import load_memmap
    from firecracer.analysis.seedmemmap import parse_seed_memmap
    from firecracer.guest.recording import collect_local

    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(8 << 20); time.sleep(60)"])
    try:
        collect_local(tmp_path, pids=[child.pid], sections=("processes", "kernel"), seed=True)
    finally:
        child.kill()
        child.wait(timeout=30)
    a, b = load_memmap(tmp_path / "memmap.npz"), parse_seed_memmap(tmp_path / "memmap.txt")
    assert a.n_pages > 2000 and a.owner_pid.tolist() == b.owner_pid.tolist() == [child.pid, 0]
    oa = np.lexsort((a.page_paddr, a.page_vaddr, a.page_owner))
    ob = np.lexsort((b.page_paddr, b.page_vaddr, b.page_owner))
    for name in ("page_owner", "page_map", "page_vaddr", "page_paddr"):
        assert np.array_equal(getattr(a, name)[oa], getattr(b, name)[ob]), name
    assert np.array_equal(a.page_pm[oa] & 3, b.page_pm[ob])          # the seed keeps bits 56 and 61
    assert totals(attribute(load_recording(tmp_path)))["physical_pages"] == b.distinct_physical_pages()


def test_jaccard_matrix_of_real_restores() -> None:
    from firecracer.analysis.compare import jaccard_matrix

    a = attribute(load_recording(FIXTURES / "probe_ondemand"))
    b = attribute(load_recording(FIXTURES / "probe_around16"))
    m = jaccard_matrix([a, b, a])
    assert m[0][0] == m[1][1] == m[0][2] == 1.0
    assert m[0][1] == m[1][0] == m[1][2] == round(431 / 3008, 4)
    assert jaccard_matrix([a, b], "nmt:Java Heap") == [[None, None], [None, None]]


def test_service_order_runs_show_fault_around_batches() -> None:
    from firecracer.analysis.tables import fragmentation_table

    rows = {r["group"]: r for r in fragmentation_table(
        attribute(load_recording(FIXTURES / "probe_around16"))).to_dicts()}
    served = rows["restored, in service order"]
    assert served["median_run"] == 16.0 and served["max_run"] % 16 == 0   # whole aligned 16-page blocks
    ondemand = {r["group"]: r for r in fragmentation_table(
        attribute(load_recording(FIXTURES / "probe_ondemand"))).to_dicts()}
    assert ondemand["restored, in service order"]["median_run"] == 1.0     # a shuffled walk, page by page
