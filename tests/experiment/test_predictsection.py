"""The report's predictability section on real page-server traces (a forked peer playing Firecracker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.analysis.test_predictability import A1, A2, B, _memfile, _restore
from tests.uffd.fakefc import uffd_unavailable

from firecracer.experiment.report import build_report
from firecracer.experiment.store import ResultStore, RunRecord, now_iso
from firecracer.uffd.trace import load_trace

pytestmark = pytest.mark.skipif(uffd_unavailable() is not None, reason=str(uffd_unavailable()))


def _record(run_id: str, rep: int, strategy: str, recording: str | None, metrics: dict[str, object],
            path: str) -> RunRecord:
    return RunRecord(run_id=run_id, idx=rep, variant="v", strategy=strategy, repetition=rep, status="ok",
                     started=now_iso(), finished=now_iso(), wall_s=1.0, host="h", backend="probe",
                     spec={"workload": {"path": "/a", "paths": ["/a", "/b"]}, "request": path}, versions={},
                     timings={"first_response": 1.0}, metrics=metrics, recording=recording)


def test_section_draws_what_the_traces_say(tmp_path: Path) -> None:
    res = tmp_path / "res"
    runs = res / "runs"
    runs.mkdir(parents=True)
    mem = _memfile(tmp_path)
    recs = []
    for i, (pages, req) in enumerate([(A1, "/a"), (A2, "/a"), (B, "/b")], 1):
        d = _restore(runs, mem, f"v.ondemand.r{i}", pages, None)  # the request: the run's spec says it
        tx = load_trace(d / "trace.npz").meta["fault_taxonomy"]
        recs.append(_record(d.name, i, "ondemand", f"runs/{d.name}", {"fault_taxonomy": tx}, req))
    recs.append(_record("v.file.r1", 4, "file", None, {}, "/a"))
    with ResultStore.open(res, create=True) as st:
        st.bind_study("s", "d", "[study]\n", "s.toml", "probe")
        st.record_many(recs)
    html = build_report(res)
    sec = html[html.index("Predictability of the working set"):html.index("<h2>Failed runs")]
    assert "3 (/a, /b)" in sec
    ja = len(set(A1) & set(B)) / len(set(A1) | set(B))
    assert f"Jaccard, different first requests</td><td class=\"l\">{ja:.3f} ({ja:.3f}–{ja:.3f}, 2)" in sec
    assert "1.000 (1.000–1.000, 1)" in sec  # same request: r1 and r2 touch the same pages
    marks = {m.group(2): int(m.group(1)) for m in
             re.finditer(r'<svg class="plot" data-marks="(\d+)" role="img" aria-label="([^"]*)"', sec)}
    assert marks["v: Jaccard"] == 9 and marks["v: precision (row drives column)"] == 9
    assert marks["v: faults over time (CDF)"] == 3
    assert marks["v: run lengths (pages, file order)"] > 0 and marks["v: touched pages per 2 MiB block"] > 0
    # taxonomy per report cell (strategy + request): /a's two runs' data faults summed (page 601 lies in
    # the hole 600..615: a zero fault)
    data_total = sum(len(p) - (601 in p) for p in (A1, A2))
    row = re.search(r'<td class="l">v</td><td class="l">ondemand /a</td><td class="l">data</td>'
                    r"((?:<td>[\d,]+</td>)+)", sec)
    assert row is not None and row.group(1).endswith(f"<td>{data_total}</td>")
