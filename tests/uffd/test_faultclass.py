"""The per-fault taxonomy in the page server's metrics, on a real userfaultfd (a forked peer playing
Firecracker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.uffd.fakefc import PeerSpec, uffd_unavailable
from tests.uffd.test_server import NPAGES, PS, _ok, serve
from tests.uffd.test_server import fast_path as fast_path  # fixtures, re-exported for pytest
from tests.uffd.test_server import memfile as memfile
from tests.uffd.test_server import sock as sock

from firecracer.uffd import abi
from firecracer.uffd.faultclass import NBUCKETS, bucket_label, log2_buckets, taxonomy
from firecracer.uffd.trace import load_trace

pytestmark = pytest.mark.skipif(uffd_unavailable() is not None, reason=str(uffd_unavailable()))


def test_every_class_is_counted_with_its_latency(sock: str, memfile: Path, tmp_path: Path,
                                                 fast_path: str) -> None:
    # data 3 and 5, hole 44 (pages 40..47 are a hole), then 5 removed and faulted again
    spec = PeerSpec(sock, [NPAGES * PS], features=abi.UFFD_FEATURE_EVENT_REMOVE,
                    ops=[("read", [3, 44, 5]), ("dontneed", 5, 1), ("read", [5])])
    result, [(status, rep)] = serve(sock, memfile, spec, trace=tmp_path / "t.npz")
    assert result.ok and _ok(status), (result.metrics(), rep)
    m = result.sessions[0]
    tx = m["fault_taxonomy"]
    assert tx["faults"] == m["faults"] == 4
    cls = tx["classes"]
    assert cls["data"]["installed"] == cls["data"]["total"] == 2
    assert cls["zero"] == {"installed": 1, "total": 1, "latency_us_log2": cls["zero"]["latency_us_log2"]}
    assert cls["removed"]["installed"] == 1 and "resident" not in cls
    for row in cls.values():  # every classified fault has its latency in exactly one bucket
        assert sum(row["latency_us_log2"].values()) == row["total"]
    assert tx["fast_path_classified_by_construction"] == (fast_path == "native")
    assert load_trace(tmp_path / "t.npz").meta["fault_taxonomy"] == tx


def test_fault_around_neighbour_eexist_is_not_the_faults_outcome(sock: str, memfile: Path) -> None:
    # the peer installs page 9 itself: the block install for the fault on 10 meets EEXIST at 9, not at 10
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("self_install", 9, 0x5A), ("read", [10, 12, 0])])
    result, [(status, rep)] = serve(sock, memfile, spec, "fault-around:8")
    assert result.ok and _ok(status), (result.metrics(), rep)
    m = result.sessions[0]
    assert m["eexist"] >= 1
    cls = m["fault_taxonomy"]["classes"]
    assert cls["data"] == {"installed": 2, "total": 2, "latency_us_log2": cls["data"]["latency_us_log2"]}
    assert m["faults"] == 2  # 12 was installed with 10's block: no fault


def test_concurrent_faults_on_one_page_are_resident_or_installed(sock: str, memfile: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("parallel", [20] * 8 + [21] * 8)])
    result, [(status, rep)] = serve(sock, memfile, spec)
    assert result.ok and _ok(status), rep
    m = result.sessions[0]
    cls = m["fault_taxonomy"]["classes"]
    assert cls["data"]["total"] == 2  # each page is installed once
    assert cls.get("resident", {}).get("woken", 0) == m["stale_faults"] == m["faults"] - 2


def test_buckets_and_labels() -> None:
    ns = np.array([0, 999, 1000, 1999, 2000, 3999, 4000, 10**15])
    assert log2_buckets(ns).tolist() == [0, 0, 1, 1, 2, 2, 3, NBUCKETS - 1]
    assert [bucket_label(k) for k in (0, 1, 2, 3)] == ["<1", "1", "2-3", "4-7"]
    assert bucket_label(NBUCKETS - 1).startswith(">=")
    tx = taxonomy(bytes([0, 0, 4, 11, 14]), [500, 3000, 1500, 100], [1, 0, 0, 0], native=False)
    # the 5th fault (removed, eagain) has no latency: counted, not in a histogram
    assert tx["faults"] == 6
    assert tx["classes"]["data"] == {"installed": 2, "peer_gone": 1, "total": 3,
                                     "latency_us_log2": {"<1": 1, "2-3": 1}}
    assert tx["classes"]["resident"] == {"woken": 1, "total": 1, "latency_us_log2": {"<1": 1}}
    assert tx["classes"]["removed"]["eagain"] == 1 and tx["classes"]["removed"]["latency_us_log2"] == {}
