"""The predictability report on real traces: the page server's (a forked peer playing Firecracker) and the
bundled JVM recordings; bad input is one clear line naming the file."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.cli import fcr, one_line_error
from tests.uffd.fakefc import Peer, PeerSpec, uffd_unavailable

from firecracer import samples
from firecracer.analysis.predictability import (
    PredictabilityError,
    fault_cdf,
    load_restore,
    log2_histogram,
    predictability,
    predictability_of,
)
from firecracer.uffd.server import Server
from firecracer.uffd.trace import FLAG_FAULTING

PS = 4096
NPAGES = 1024  # 4 MiB: two 2 MiB blocks
HOLE = range(600, 616)




needs_uffd = pytest.mark.skipif(uffd_unavailable() is not None, reason=str(uffd_unavailable()))


def _memfile(d: Path) -> Path:
    path = d / "mem"
    rng = np.random.default_rng(3)
    with open(path, "wb") as fh:
        for p in range(NPAGES):
            if p in HOLE:
                fh.seek(PS, os.SEEK_CUR)
            else:
                fh.write(rng.integers(0, 256, PS, dtype=np.uint8).tobytes())
    return path


def _restore(d: Path, mem: Path, name: str, pages: list[int], request: str | None) -> Path:
    """Serve one restore whose guest reads ``pages`` in order; a recording dir with its trace."""
    rec = d / name
    rec.mkdir()
    sock = str(d / f"{name}.sock")
    srv = Server(sock, mem, "ondemand", trace_out=rec / "trace.npz", accept_timeout=15, handshake_timeout=3,
                 max_sessions=1)
    try:
        srv.listen()
        peer = Peer(PeerSpec(sock, [NPAGES * PS], ops=[("read", pages)]))
        result = srv.serve()
    finally:
        srv.close()
        status, _ = peer.finish(timeout=30)
    assert result.ok and os.WIFEXITED(status), result.metrics()
    meta = {"format": "firecracer-recording", "version": 1, "strategy": "ondemand"}
    if request is not None:
        meta["first_request"] = {"path": request}
    (rec / "recording.json").write_text(json.dumps(meta))
    return rec


# the guest of request /a reads a sequential stretch then a scattered tail; /b reads partly other pages
A1 = [*range(10, 40), 700, 5, 300, 900, 601]
A2 = [700, *range(10, 40), 300, 5, 601, 900]        # same set, other order
B = [*range(20, 50), 800, 801, 802, 5]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if uffd_unavailable() is not None:
        pytest.skip(str(uffd_unavailable()))
    d = tmp_path_factory.mktemp("pred")
    mem = _memfile(d)
    return [_restore(d, mem, "a1", A1, "/a"), _restore(d, mem, "a2", A2, "/a"),
            _restore(d, mem, "b", B, "/b")]


@needs_uffd
def test_report_on_page_server_traces(served: list[Path]) -> None:
    rep, restores = predictability_of(served)
    assert [r.request for r in restores] == ["/a", "/a", "/b"]
    sa, sb = set(A1), set(B)
    jab = len(sa & sb) / len(sa | sb)
    m = rep["jaccard"]["matrix"]
    assert m[0][1] == 1.0 and m[1][2] == m[0][2]
    assert m[0][2] == pytest.approx(jab, abs=1e-4)
    assert rep["jaccard"]["same_request"]["pairs"] == 1 and rep["jaccard"]["same_request"]["median"] == 1.0
    assert rep["jaccard"]["different_request"]["pairs"] == 2
    assert rep["jaccard"]["different_request"]["median"] == pytest.approx(jab, abs=1e-4)
    assert rep["pages"] == {"in_all": len(sa & sb), "in_any": len(sa | sb),
                            "in_all_of_any": round(len(sa & sb) / len(sa | sb), 4)}
    # a's trace driving b: precision = |A ∩ B| / |A|, recall = |A ∩ B| / |B|
    assert rep["prefetch"]["precision"][0][2] == round(len(sa & sb) / len(sa), 4)
    assert rep["prefetch"]["recall"][0][2] == round(len(sa & sb) / len(sb), 4)
    assert rep["prefetch"]["precision"][2][0] == round(len(sa & sb) / len(sb), 4)
    f0 = rep["restores"][0]
    assert f0["faults"] == f0["pages"] == len(A1) and f0["complete"]
    # 29 of the 34 steps of A1 go to the next page (below 3 GiB gpa == file offset)
    assert f0["sequential"]["next_page_file"] == round(29 / 34, 4) == f0["sequential"]["next_page_gpa"]
    assert rep["restores"][1]["sequential"]["next_page_file"] == round(29 / 34, 4)
    assert f0["runs"]["count"] == 6 and f0["runs"]["max"] == 30  # 5, 10..39, 300, 601, 700, 900
    assert f0["blocks_2m"]["touched"] == 2 and f0["blocks_2m"]["max"] == 32  # 0..511: 32 pages; 512..: 3
    ft = f0["fault_time"]
    assert 0 < ft["p50_ms"] <= ft["p90_ms"] <= ft["p99_ms"]
    cdf = fault_cdf(restores[0])
    assert cdf[-1][1] == 1.0 and all(a[0] <= b[0] for a, b in itertools.pairwise(cdf))
    assert rep["requests_known"] and not rep["notes"]


@needs_uffd
def test_cli_json_and_terminal(served: list[Path]) -> None:
    res = fcr("analyze", "--predictability", "--json", *map(str, served))
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["format"] == "firecracer-predictability" and len(rep["restores"]) == 3
    text = fcr("analyze", "--predictability", *map(str, served))
    assert text.returncode == 0 and "different first requests median" in text.stdout, text.stdout
    assert "faults by page class and outcome" in text.stdout  # the page server's taxonomy, per restore
    one = fcr("analyze", str(served[2]))  # a recording's own view shows the taxonomy too
    assert one.returncode == 0 and "faults by page class and outcome" in one.stdout, one.stderr
    data = fcr("analyze", "--json", str(served[2]))
    assert json.loads(data.stdout)["fault_taxonomy"]["classes"]["data"]["total"] == len(B)


@needs_uffd
def test_bad_input_is_one_line_naming_the_file(served: list[Path], tmp_path: Path) -> None:
    assert "give at least two traces" in one_line_error(fcr("analyze", "--predictability", str(served[0])))
    cut = tmp_path / "cut.npz"
    cut.write_bytes((served[1] / "trace.npz").read_bytes()[:2000])
    assert str(cut) in one_line_error(fcr("analyze", "--predictability", str(served[0]), str(cut)))
    # the same trace, but recorded on a 2x larger memory: not a restore of this snapshot
    other = tmp_path / "other"
    other.mkdir()
    t = load_restore(served[1]).trace
    from firecracer.uffd.trace import make_trace, save_trace
    meta = {**t.meta, "regions": [{**t.regions[0], "size": 2 * NPAGES * PS}],
            "mem": {**t.meta["mem"], "size": 2 * NPAGES * PS}}
    save_trace(make_trace(t.columns(), meta), other / "trace.npz")
    line = one_line_error(fcr("analyze", "--predictability", str(served[0]), str(other / "trace.npz")))
    assert str(other / "trace.npz") in line and "not restores of one snapshot" in line


def _sample(name: str, dest: Path) -> Path:
    if name not in samples.names():
        pytest.skip(f"no bundled sample {name}")
    return samples.extract(name, dest)


def test_real_jvm_restore_facts_match_a_plain_recount(tmp_path: Path) -> None:
    rec = _sample("petclinic-default", tmp_path)
    twin = tmp_path / "twin"
    shutil.copytree(rec, twin)
    rep = predictability([load_restore(rec), load_restore(twin)])
    assert rep["jaccard"]["matrix"][0][1] == 1.0 and rep["requests"] == ["/owners/1"]
    t = load_restore(rec).trace
    f = (t.flags & FLAG_FAULTING) != 0
    order: list[int] = []
    seen: set[int] = set()
    for off in t.file_off[f].tolist():
        if off not in seen:
            seen.add(off)
            order.append(off // PS)
    nxt = sum(1 for a, b in itertools.pairwise(order) if b == a + 1) / (len(order) - 1)
    facts = rep["restores"][0]
    assert facts["pages"] == len(seen) == rep["pages"]["in_all"]
    assert facts["sequential"]["next_page_file"] == round(nxt, 4)
    blocks: dict[int, int] = {}
    for g in {int(x) for x in t.gpa[f].tolist()}:
        blocks[g >> 21] = blocks.get(g >> 21, 0) + 1
    assert facts["blocks_2m"]["touched"] == len(blocks) and facts["blocks_2m"]["max"] == max(blocks.values())
    assert sum(log2_histogram(np.array(list(blocks.values()))).values()) == len(blocks)


def test_two_snapshots_are_refused(tmp_path: Path) -> None:
    a = _sample("petclinic-default", tmp_path)
    b = _sample("petclinic-thp-appcds", tmp_path)
    with pytest.raises(PredictabilityError, match=r"recorded on snapshot .* predictability compares"):
        predictability_of([a, b])


def test_log2_histogram_buckets() -> None:
    assert log2_histogram(np.array([1, 2, 3, 4, 7, 8, 512])) == {"1": 1, "2-3": 2, "4-7": 2, "8-15": 1,
                                                                 "16-31": 0, "32-63": 0, "64-127": 0,
                                                                 "128-255": 0, "256-511": 0, "512-1023": 1}
