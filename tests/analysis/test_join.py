"""The vectorised join and tables against a per-page Python oracle on random recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firecracer.analysis import attribute, compare, tables
from firecracer.analysis.join import OwnerClass
from firecracer.analysis.tables import totals

from .synth import JVM, synth_recording

PRIO = {OwnerClass.PROCESS: 1, OwnerClass.KERNEL: 2, OwnerClass.PAGECACHE: 3, OwnerClass.FREE: 4}


def _cls(pid: int) -> OwnerClass:
    return (OwnerClass.PROCESS if pid > 0 else OwnerClass.KERNEL if pid == 0 else
            OwnerClass.PAGECACHE if pid == -1 else OwnerClass.FREE)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_join_matches_oracle(seed: int) -> None:
    rec = synth_recording(seed)
    att = attribute(rec)
    mm, tr, nmt = rec.memmap, rec.trace, rec.nmt
    assert tr is not None and nmt is not None
    rows = list(range(mm.n_pages))
    pid = [int(mm.owner_pid[mm.page_owner[r]]) for r in rows]
    regions = nmt.sorted_regions()
    seen: set[int] = set()
    for i, g in enumerate(tr.gpa.tolist()):
        owners = [r for r in rows if int(mm.page_paddr[r]) == g]
        assert bool(att.trace_first[i]) == (g not in seen)
        seen.add(g)
        if not owners:
            assert att.trace_phys[i] == -1 and att.trace_class[i] == OwnerClass.NONE
            assert att.trace_row[i] == -1 and att.trace_nmt_region[i] == -1
            continue
        best = min(owners, key=lambda r: (PRIO[_cls(pid[r])], pid[r] != JVM, r))
        assert att.trace_row[i] == best
        assert att.trace_class[i] == _cls(pid[best])
        assert sorted(att.rows_of(int(att.trace_phys[i])).tolist()) == owners
        want = -1
        if pid[best] == JVM:
            va = int(mm.page_vaddr[best])
            want = next((k for k, rg in enumerate(regions) if rg.start <= va < rg.end), -1)
        assert att.trace_nmt_region[i] == want
    # first touch per memmap row
    first = {}
    for i, g in enumerate(tr.gpa.tolist()):
        first.setdefault(g, i)
    assert att.row_first_touch.tolist() == [first.get(int(mm.page_paddr[r]), -1) for r in rows]


def test_tables_match_oracle() -> None:
    rec = synth_recording(5)
    att = attribute(rec)
    mm, tr, nmt = rec.memmap, rec.trace, rec.nmt
    assert tr is not None and nmt is not None
    restored = set(tr.gpa.tolist())
    tabs = tables(att)
    procs = {r["pid"]: r for r in tabs["processes"].to_dicts()}
    for oi, p in enumerate(mm.owner_pid.tolist()):
        mine = [r for r in range(mm.n_pages) if mm.page_owner[r] == oi]
        assert procs[p]["rss_kb"] == 4 * len(mine)
        assert procs[p]["restored_kb"] == 4 * sum(int(mm.page_paddr[r]) in restored for r in mine)
        nproc = {}
        for r in range(mm.n_pages):
            if mm.owner_pid[mm.page_owner[r]] > 0:
                nproc[int(mm.page_paddr[r])] = nproc.get(int(mm.page_paddr[r]), 0) + 1
        pss = sum(4096 / nproc[int(mm.page_paddr[r])] if p > 0 else 4096 for r in mine)
        assert procs[p]["pss_kb"] == int(pss / 1024)
    jvm_oi = int(np.flatnonzero(mm.owner_pid == JVM)[0])
    for row, rg in zip(tabs["nmt_regions"].to_dicts(), nmt.sorted_regions(), strict=True):
        inside = [r for r in range(mm.n_pages)
                  if mm.page_owner[r] == jvm_oi and rg.start <= int(mm.page_vaddr[r]) < rg.end]
        assert row["rss_kb"] == 4 * len(inside)
        assert row["restored_kb"] == 4 * sum(int(mm.page_paddr[r]) in restored for r in inside)
        assert row["virtual_kb"] == (rg.end - rg.start) // 1024
        assert row["committed_kb"] == rg.committed_bytes // 1024
    cats = {r["category"]: r for r in tabs["nmt_categories"].to_dicts()}
    assert cats["Java Heap"]["committed_kb"] == 256 and cats["Metaspace"]["committed_kb"] == 64
    t = totals(att)
    assert t["physical_pages"] == len(set(mm.page_paddr.tolist()))
    assert t["uffd_events"] == len(tr)
    assert t["pages_zeroed"] == int((tr.action == 1).sum())
    assert t["nmt_regions"] == 2                                 # "Code" has no call stack
    assert t["restored_pages"] == len(restored)
    owned = len(restored & set(mm.page_paddr.tolist()))
    assert t["attributed_pct"] == round(100 * owned / len(restored), 1)
    # restore order: first touch of each class is the first trace index of that class
    order = {r["group"]: r for r in tabs["restore_order"].to_dicts()}
    for c in ("process", "none"):
        want = OwnerClass[c.upper()]
        idx = [i for i in range(len(tr)) if att.trace_first[i] and att.trace_class[i] == want]
        if idx:
            assert order[f"class:{c}"]["first"] == idx[0]
            assert order[f"class:{c}"]["last"] == idx[-1]
            assert order[f"class:{c}"]["pages"] == len(idx)


def test_fragmentation_runs() -> None:
    from firecracer.analysis.tables import runs

    pages = np.array([1, 2, 3, 7, 9, 10], dtype=np.uint64) * np.uint64(4096)
    assert runs(pages, 4096).tolist() == [3, 1, 2]
    assert runs(np.zeros(0, dtype=np.uint64), 4096).tolist() == []


def test_compare_self_and_disjoint() -> None:
    a = attribute(synth_recording(1))
    same = compare(a, a)
    sim = {r["group"]: r for r in same["similarity"].to_dicts()}
    assert sim["all"]["jaccard_gpa"] == 1.0 and sim["all"]["jaccard_gva"] == 1.0
    assert all(r["restored_kb_delta"] == 0 for r in same["categories"].to_dicts())
    b = attribute(synth_recording(9))
    other = {r["group"]: r for r in compare(a, b)["similarity"].to_dicts()}
    ga, gb = set(a.recording.trace.gpa.tolist()), set(b.recording.trace.gpa.tolist())  # type: ignore[union-attr]
    assert other["all"]["jaccard_gpa"] == round(len(ga & gb) / len(ga | gb), 4)
    assert other["all"]["common_gpa"] == len(ga & gb)


def test_no_nmt_no_trace() -> None:
    rec = synth_recording(4, nmt=False)
    rec.trace = None
    att = attribute(rec)
    t = totals(att)
    assert t["uffd_events"] == 0 and t["nmt_regions"] == 0 and t["attributed_pct"] is None
    tabs = tables(att)
    assert tabs["nmt_categories"].rows == [] and tabs["restore_order"].rows == []


def test_huge_trace_pages_are_split() -> None:
    rec = synth_recording(6)
    tr = rec.trace
    assert tr is not None
    from firecracer.uffd.trace import make_trace

    g = np.array([0, 2 << 20], dtype=np.uint64)
    rec.trace = make_trace({"t_ns": [1, 2], "hva": g, "file_off": g, "gpa": g, "flags": [2, 2],
                            "action": [0, 0], "fault": [0, 1], "service_ns": [0, 0]},
                           {"page_size": 2 << 20})
    att = attribute(rec)
    assert att.trace is not None and len(att.trace) == 1024
    assert att.trace.gpa[513] == (2 << 20) + 4096


def test_huge_page_columns_and_kpageflags_names() -> None:
    from firecracer.analysis.memmap import decode_kpageflags
    from firecracer.analysis.tables import _frag_row

    assert decode_kpageflags(0x400000868) == ["UPTODATE", "LRU", "ACTIVE", "MMAP", "MAPPEDTODISK"]
    assert decode_kpageflags(1 << 22 | 1 << 63) == ["THP", "BIT63"]
    # one full 2 MiB block (512 pages) plus 10 stray pages; half of the pages flagged THP
    pages = np.concatenate([np.arange(512, 1024), np.arange(5000, 5010)]).astype(np.uint64) * np.uint64(4096)
    kf = np.where(np.arange(pages.size) % 2 == 0, np.uint64(1 << 22), np.uint64(0))
    row = _frag_row("x", pages, kf, 4096)
    assert row == ["x", 522, 2, 261.0, 512, 50.0, round(100 * 512 / 522, 1)]


def test_load_recording_errors(tmp_path: Path) -> None:
    from firecracer.analysis import load_recording
    from firecracer.errors import FormatError

    with pytest.raises(FormatError, match="not a recording directory"):
        load_recording(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a recording"):
        load_recording(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "recording.json").write_text("{nope")
    with pytest.raises(FormatError, match=r"recording\.json: recording\.json is not valid JSON"):
        load_recording(tmp_path / "bad")
    (tmp_path / "bad" / "recording.json").write_text("[1]")
    with pytest.raises(FormatError, match="JSON object"):
        load_recording(tmp_path / "bad")
    (tmp_path / "bad" / "recording.json").write_text("{}")
    (tmp_path / "bad" / "trace.npz").write_bytes(b"garbage")
    with pytest.raises(FormatError, match=r"trace\.npz"):
        load_recording(tmp_path / "bad")


def test_faulted_pages_total() -> None:
    rec = synth_recording(8)
    tr = rec.trace
    assert tr is not None
    t = totals(attribute(rec))
    assert t["faulted_pages"] == len({int(g) for g, f in zip(tr.gpa, tr.flags, strict=True) if f & 2})
    assert t["faulted_pages"] < t["restored_pages"]


@given(st.lists(st.integers(0, 40), max_size=300))
def test_argsort_with_ties_matches_stable_argsort(keys: list[int]) -> None:
    from firecracer.analysis.join import _argsort_ties_by_index

    k = np.array(keys, dtype=np.uint64)
    assert np.array_equal(_argsort_ties_by_index(k), np.argsort(k, kind="stable"))


def test_restore_timeline_is_cumulative_and_ends_at_the_totals() -> None:
    from firecracer.analysis.tables import restore_timeline

    att = attribute(synth_recording(3))
    t = restore_timeline(att, 7)
    assert t.columns[0] == "t_ms" and len(t.rows) == 7
    classes = {r["group"]: r["kb"] for r in tables(att)["restore_order"].to_dicts()}
    for k, col in enumerate(t.columns[1:], 1):
        vals = [r[k] for r in t.rows]
        assert vals == sorted(vals)
        assert vals[-1] == classes[col]
