"""The page server against a real userfaultfd registered by a forked child playing Firecracker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.uffd.fakefc import Peer, PeerSpec, digest, uffd_unavailable

from firecracer.uffd import abi
from firecracer.uffd.server import Server, ServeResult
from firecracer.uffd.trace import FLAG_FAULTING, FLAG_WRITE, FLAG_ZERO, Action, load_trace
from firecracer.uffd.workingset import WorkingSet, ws_path_for

PS = 4096
NPAGES = 64
HOLES = range(40, 48)  # pages 40..47 are a hole in the sparse memory file
ZERO = digest(bytes(PS))




pytestmark = pytest.mark.skipif(uffd_unavailable() is not None, reason=str(uffd_unavailable()))


@pytest.fixture
def memfile(tmp_path: Path) -> Path:
    """64 pages of random data with a hole at pages 40..47 (a sparse file, like Firecracker's)."""
    path = tmp_path / "mem"
    rng = np.random.default_rng(7)
    with open(path, "wb") as fh:
        for p in range(NPAGES):
            if p in HOLES:
                fh.seek(PS, os.SEEK_CUR)
            else:
                fh.write(rng.integers(0, 256, PS, dtype=np.uint8).tobytes())
    return path


def expected(memfile: Path, page: int) -> str:
    with open(memfile, "rb") as fh:
        fh.seek(page * PS)
        data = fh.read(PS)
    return digest(data.ljust(PS, b"\0"))


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "uffd.sock"
    yield str(path)
    path.unlink(missing_ok=True)


def serve(sock: str, memfile: Path, spec: PeerSpec, strategy: str = "ondemand", trace: Path | None = None,
          sessions: int = 1, extra: list[PeerSpec] | None = None
          ) -> tuple[ServeResult, list[tuple[int, dict[str, Any]]]]:
    srv = Server(sock, memfile, strategy, trace_out=trace, accept_timeout=15, handshake_timeout=3,
                 max_sessions=sessions)
    peers: list[Peer] = []
    try:
        srv.listen()
        peers = [Peer(s) for s in [spec, *(extra or [])]]
        result = srv.serve()
    finally:
        srv.close()
        reports = [p.finish(timeout=30) for p in peers]
    return result, reports


def _ok(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.fixture(params=["native", "python"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the compiled single-fault fast path and with pure Python."""
    from firecracer.uffd import native

    monkeypatch.setenv("FIRECRACER_UFFD_NATIVE", "1" if request.param == "native" else "0")
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    if request.param == "native" and native.load() is None:
        pytest.skip("no C compiler for the native fast path")
    return str(request.param)


@pytest.mark.parametrize("generation", ["v1.4", "v1.7", "v1.12", "secret"])
def test_every_handshake_generation_serves_correct_pages(sock: str, memfile: Path, tmp_path: Path,
                                                         generation: str, fast_path: str) -> None:
    pages = [3, 0, 63, 41, 17]
    spec = PeerSpec(sock, [NPAGES * PS], generation=generation, ops=[("read", pages)])
    result, [(status, rep)] = serve(sock, memfile, spec, trace=tmp_path / "t.npz")
    assert result.ok, result.metrics()
    assert _ok(status), rep
    for p in pages:
        assert rep["reads"][str(p)] == [expected(memfile, p)]
    m = result.sessions[0]
    assert m["native_fast_path"] == (fast_path == "native")
    assert m["handshake"] == {"v1.4": "v1.4-v1.6", "v1.7": "v1.7-v1.11"}.get(generation, "v1.12+")
    assert m["faults"] == 5 and m["pages"]["load"] == 4 and m["pages"]["zero"] == 1
    tr = load_trace(tmp_path / "t.npz")
    assert tr.file_off.tolist() == [p * PS for p in pages]
    assert tr.action.tolist() == [0, 0, 0, Action.ZERO, 0]
    assert ((tr.flags & FLAG_FAULTING) != 0).all()
    assert tr.fault.tolist() == [0, 1, 2, 3, 4]
    assert (np.diff(tr.t_ns.astype(np.int64)) >= 0).all()
    base = tr.regions[0]["base_host_virt_addr"]
    assert (tr.hva - tr.file_off == base).all()


def test_two_regions_and_writes(sock: str, memfile: Path, tmp_path: Path) -> None:
    spec = PeerSpec(sock, [16 * PS, 48 * PS], ops=[("write", 20, 0xAB), ("read", [20, 15, 16, 2])])
    result, [(status, rep)] = serve(sock, memfile, spec, trace=tmp_path / "t.npz")
    assert result.ok and _ok(status), (result.metrics(), rep)
    assert rep["reads"]["20"] == [digest(bytes([0xAB]) * PS)]
    for p in (15, 16, 2):
        assert rep["reads"][str(p)] == [expected(memfile, p)]
    tr = load_trace(tmp_path / "t.npz")
    assert tr.flags[0] & FLAG_WRITE and not tr.flags[1] & FLAG_WRITE
    assert len(tr.regions) == 2


def test_parallel_faults_in_one_wakeup(sock: str, memfile: Path, fast_path: str) -> None:
    pages = list(range(0, 32))
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("parallel", pages)])
    result, [(status, rep)] = serve(sock, memfile, spec)
    assert result.ok and _ok(status), rep
    for p in pages:
        assert rep["reads"][str(p)] == [expected(memfile, p)]
    assert result.sessions[0]["faults"] == 32


def test_sparse_hole_is_served_as_zero_page(sock: str, memfile: Path, tmp_path: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", [44, 39])])
    result, [(status, rep)] = serve(sock, memfile, spec, trace=tmp_path / "t.npz")
    assert result.ok and _ok(status)
    assert rep["reads"]["44"] == [ZERO] and rep["reads"]["39"] == [expected(memfile, 39)]
    tr = load_trace(tmp_path / "t.npz")
    assert tr.action.tolist() == [Action.ZERO, Action.LOAD] and tr.flags[0] & FLAG_ZERO


def test_fault_around_serves_aligned_block_and_skips_present(sock: str, memfile: Path,
                                                            tmp_path: Path) -> None:
    # page 9 installed by someone else first: the block install must hit EEXIST and leave it alone
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("self_install", 9, 0x5A), ("read", [10, 9, 15, 0, 44])])
    result, [(status, rep)] = serve(sock, memfile, spec, "fault-around:8", trace=tmp_path / "t.npz")
    assert result.ok and _ok(status), (result.metrics(), rep)
    assert rep["reads"]["9"] == [digest(bytes([0x5A]) * PS)]
    for p in (10, 15, 0):
        assert rep["reads"][str(p)] == [expected(memfile, p)]
    assert rep["reads"]["44"] == [ZERO]
    m = result.sessions[0]
    assert m["faults"] == 3  # 10 (block 8..15), 0 (block 0..7), 44 (hole block 40..47)
    assert m["eexist"] >= 1
    tr = load_trace(tmp_path / "t.npz")
    faulting = tr.file_off[(tr.flags & FLAG_FAULTING) != 0] // PS
    assert faulting.tolist() == [10, 0, 44]
    assert sorted((tr.file_off // PS).tolist()) == sorted([*range(0, 9), *range(10, 16), *range(40, 48)])
    assert (tr.action[(tr.flags & FLAG_FAULTING) == 0] == Action.AROUND).all()


def test_remove_then_fault_serves_zero(sock: str, memfile: Path, tmp_path: Path, fast_path: str) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], features=abi.UFFD_FEATURE_EVENT_REMOVE,
                    ops=[("read", [5, 6]), ("dontneed", 5, 2), ("read", [5, 6, 7])])
    result, [(status, rep)] = serve(sock, memfile, spec, trace=tmp_path / "t.npz")
    assert result.ok and _ok(status), (result.metrics(), rep)
    assert rep["reads"]["5"] == [expected(memfile, 5), ZERO]
    assert rep["reads"]["6"] == [expected(memfile, 6), ZERO]
    assert rep["reads"]["7"] == [expected(memfile, 7)]
    m = result.sessions[0]
    assert m["events"]["remove"] == 1
    tr = load_trace(tmp_path / "t.npz")
    assert tr.meta["removes"][0]["end"] - tr.meta["removes"][0]["start"] == 2 * PS


@pytest.mark.parametrize("payload, why", [
    (b'[{"base_host_virt_addr": 1, "size": ', "not valid JSON"),
    (b"\xff\xfe garbage", "not UTF-8"),
    (b'{"regions": []}', "non-empty JSON array"),
    (b'[{"base_host_virt_addr": "x", "size": 4096, "offset": 0}]', "must be an integer"),
])
def test_bad_payload_is_a_clear_error_and_peer_is_killed(sock: str, memfile: Path, payload: bytes,
                                                         why: str) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], payload=payload, ops=[("read", [1])])
    result, [(status, _)] = serve(sock, memfile, spec)
    assert not result.ok and why in str(result.error)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_missing_fd(sock: str, memfile: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], send_fd=False, ops=[("read", [1])])
    result, [(status, _)] = serve(sock, memfile, spec)
    assert "without a file descriptor" in str(result.error)
    assert os.WIFSIGNALED(status)


def test_fd_that_is_not_a_userfaultfd(sock: str, memfile: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], send_devnull_fd=True, ops=[("read", [1])])
    result, [(status, _)] = serve(sock, memfile, spec)
    assert "not a userfaultfd" in str(result.error) and "/dev/null" in str(result.error)
    assert os.WIFSIGNALED(status)


def test_region_and_file_size_mismatch(sock: str, memfile: Path) -> None:
    spec = PeerSpec(sock, [2 * NPAGES * PS], ops=[("read", [1])])
    result, [(status, _)] = serve(sock, memfile, spec)
    want = f"cover {2 * NPAGES * PS} bytes but the memory file has {NPAGES * PS}"
    assert want in str(result.error)
    assert os.WIFSIGNALED(status)


def test_peer_closes_without_handshake(sock: str, memfile: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], payload=b"", send_fd=False)
    result, _ = serve(sock, memfile, spec)
    assert "without sending the uffd handshake" in str(result.error)


def test_silent_peer_times_out(sock: str, memfile: Path) -> None:
    """A peer that sends nothing is disconnected, not killed: it is not Firecracker (by its executable)
    and registered no memory with us, so nothing of it can hang (the server once SIGKILLed the pytest
    process that merely connected to check the socket)."""
    spec = PeerSpec(sock, [NPAGES * PS], payload=b"", send_fd=False, ops=[("hold", 10)])
    result, [(status, _)] = serve(sock, memfile, spec)
    assert "no uffd handshake arrived within 3 s" in str(result.error)
    assert not os.WIFSIGNALED(status)


def test_fault_outside_regions_kills_peer(sock: str, memfile: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], extra_register=4 * PS, ops=[("read", [1, NPAGES + 1])])
    result, [(status, _)] = serve(sock, memfile, spec)
    assert not result.ok
    assert "outside every region" in result.metrics()["error"]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_peer_death_mid_restore_ends_session(sock: str, memfile: Path, fast_path: str) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", [1, 2]), ("exit",)])
    result, [(status, _)] = serve(sock, memfile, spec)
    assert result.ok and _ok(status)
    assert result.sessions[0]["ended"] in ("peer-exited", "peer-gone")


def test_two_handshakes_on_one_socket(sock: str, memfile: Path) -> None:
    a = PeerSpec(sock, [NPAGES * PS], ops=[("read", [1, 2])])
    b = PeerSpec(sock, [NPAGES * PS], generation="v1.7", ops=[("read", [3])])
    result, reports = serve(sock, memfile, a, sessions=2, extra=[b])
    assert result.ok, result.metrics()
    assert sorted(s["faults"] for s in result.sessions) == [1, 2]
    assert reports[1][1]["reads"]["3"] == [expected(memfile, 3)]


def test_eager_installs_everything_up_front(sock: str, memfile: Path, tmp_path: Path) -> None:
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", [0, 44, 63])])
    result, [(status, rep)] = serve(sock, memfile, spec, "eager", trace=tmp_path / "t.npz")
    assert result.ok and _ok(status)
    assert rep["reads"]["44"] == [ZERO] and rep["reads"]["63"] == [expected(memfile, 63)]
    m = result.sessions[0]
    assert m["faults"] == 0 and m["pages"]["eager"] == NPAGES and m["pages_zero"] == len(HOLES)


@pytest.mark.parametrize("mode", ["prefetch", "prefetch-background"])
def test_record_then_prefetch(sock: str, memfile: Path, tmp_path: Path, mode: str, fast_path: str) -> None:
    order = [7, 8, 9, 30, 2, 44, 31]
    rec = PeerSpec(sock, [NPAGES * PS], ops=[("read", order)])
    result, _ = serve(sock, memfile, rec, trace=tmp_path / "rec.npz")
    assert result.ok
    wsf = ws_path_for(tmp_path / "rec.npz")
    ws = WorkingSet(wsf)
    # loading order: runs of pages adjacent in memory, ranked by their first fault (31 joins 30)
    assert ws.offsets.tolist() == [p * PS for p in [7, 8, 9, 30, 31, 2, 44]]
    assert ws.runs()[1].tolist() == [3, 2, 1, 1]
    ws.close()
    replay = PeerSpec(sock, [NPAGES * PS], ops=[("read", [*order, 50])])
    result, [(status, rep)] = serve(sock, memfile, replay, f"{mode}:{tmp_path / 'rec.npz'}",
                                    trace=tmp_path / "replay.npz")
    assert result.ok and _ok(status), result.metrics()
    for p in [*order, 50]:
        assert rep["reads"][str(p)] == [expected(memfile, p)]
    m = result.sessions[0]
    assert m["prefetch"]["ws_pages"] == len(order)
    assert m["prefetch"]["misses"] == 1
    if mode == "prefetch":
        assert m["faults"] == 1 and m["pages"]["prefetch"] == len(order)
    tr = load_trace(tmp_path / "replay.npz")
    assert (tr.fault[tr.action == Action.PREFETCH] == -1).all()


HUGE = 2 << 20


@pytest.fixture
def huge_pool() -> Iterator[None]:
    """Free 2 MiB pages for the test — 8 it uses, 8 of margin for other users of the pool on a shared
    host (the pool grows if needed and is put back) — else a skip."""
    from firecracer.hugepages import HugePagesError, Reservation

    try:
        res = Reservation(8 + 8)
    except HugePagesError as exc:
        pytest.skip(f"2 MiB huge pages cannot be reserved here: {exc}")
    with res:
        yield


@pytest.fixture
def mem2m(tmp_path: Path) -> Path:
    """Six 2 MiB pages: 0 all data, 1 a hole, 2 data in three separate 4 KiB blocks (first, middle, last),
    3 a hole, 4 and 5 all data (adjacent: one run)."""
    mem = tmp_path / "mem2m"
    rng = np.random.default_rng(3)
    with open(mem, "wb") as fh:
        for page in range(6):
            if page in (0, 4, 5):
                fh.seek(page * HUGE)
                fh.write(rng.integers(0, 256, HUGE, dtype=np.uint8).tobytes())
        for blk in (0, 200, 511):
            fh.seek(2 * HUGE + blk * PS)
            fh.write(rng.integers(0, 256, PS, dtype=np.uint8).tobytes())
        fh.truncate(6 * HUGE)
    return mem


def _huge_digests(mem: Path) -> list[str]:
    data = mem.read_bytes()
    return [digest(data[p * HUGE:(p + 1) * HUGE]) for p in range(6)]


@pytest.mark.parametrize("strategy", ["ondemand", "eager", "fault-around:2"])
def test_2mib_pages_are_served_in_page_size_units(sock: str, tmp_path: Path, huge_pool: None, mem2m: Path,
                                                  strategy: str, fast_path: str) -> None:
    spec = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", [2, 0, 1, 5, 3, 4])])
    result, [(status, rep)] = serve(sock, mem2m, spec, strategy, trace=tmp_path / "t.npz")
    assert result.ok and _ok(status), (result.metrics(), rep)
    want = _huge_digests(mem2m)
    for p in range(6):
        assert rep["reads"][str(p)] == [want[p]], p
    tr = load_trace(tmp_path / "t.npz")
    assert tr.page_size == HUGE and tr.meta["page_size"] == HUGE and len(tr) == 6
    assert sorted(tr.file_off.tolist()) == [p * HUGE for p in range(6)]
    assert {int(o) for o in tr.file_off[tr.is_zero()]} == {HUGE, 3 * HUGE}
    m = result.sessions[0]
    assert m["page_size"] == HUGE and m["bytes_copied"] == 4 * HUGE and m["bytes_zeroed"] == 2 * HUGE


@pytest.mark.parametrize("mode", ["prefetch", "prefetch-background"])
def test_2mib_record_then_prefetch(sock: str, tmp_path: Path, huge_pool: None, mem2m: Path, mode: str,
                                   fast_path: str) -> None:
    order = [2, 5, 0, 4, 3]
    rec = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", order)])
    result, _ = serve(sock, mem2m, rec, trace=tmp_path / "rec.npz")
    assert result.ok, result.metrics()
    ws = WorkingSet(ws_path_for(tmp_path / "rec.npz"))
    # loading order in 2 MiB units: runs of adjacent pages ranked by first fault; 4-5 one run of whole pages
    assert ws.page_size == HUGE and ws.offsets.tolist() == [p * HUGE for p in [2, 4, 5, 0, 3]]
    assert ws.full.tolist() == [False, True, True, True, False]
    assert ws.n_blocks == 3 + 3 * 512  # page 2 stores only its three data blocks; page 3 (a hole) none
    assert ws.runs()[1].tolist() == [1, 2, 1, 1]
    ws.close()
    replay = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", [0, 1, 2, 3, 4, 5])])
    result, [(status, rep)] = serve(sock, mem2m, replay, f"{mode}:{tmp_path / 'rec.npz'}",
                                    trace=tmp_path / "replay.npz")
    assert result.ok and _ok(status), result.metrics()
    want = _huge_digests(mem2m)
    for p in range(6):
        assert rep["reads"][str(p)] == [want[p]], p
    m = result.sessions[0]
    assert m["prefetch"]["ws_pages"] == 5 and m["prefetch"]["misses"] == 1  # page 1 was not recorded
    if mode == "prefetch":
        assert m["faults"] == 1 and m["pages"]["prefetch"] == 5 and m["prefetch"]["staged"] == 1


def test_2mib_pool_exhausted_is_one_clear_error(sock: str, tmp_path: Path, huge_pool: None,
                                                mem2m: Path) -> None:
    """hugetlbfs answers UFFDIO_COPY with EEXIST (not ENOMEM) when its pool is empty; the server must say so
    and kill the peer, not take the page as present and leave the vCPU faulting on it forever."""
    from firecracer.hugepages import pool

    keep = 1  # leave one free page: the first install works, the second finds the pool empty
    hog_pages = pool().available - keep
    hog = abi.mmap(hog_pages * HUGE, abi.PROT_READ | abi.PROT_WRITE,
                   abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.MAP_POPULATE)
    try:
        spec = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", [0, 4])])
        result, [(status, _rep)] = serve(sock, mem2m, spec)
    finally:
        abi.munmap(hog, hog_pages * HUGE)
    assert not result.ok
    assert "huge-page pool is exhausted" in str(result.metrics()["error"])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_working_set_of_other_page_size_is_refused(sock: str, tmp_path: Path, huge_pool: None,
                                                     mem2m: Path) -> None:
    rec = PeerSpec(sock, [6 * HUGE], ops=[("read", [1, 2, 600])])  # 4 KiB pages of the same memory file
    result, _ = serve(sock, mem2m, rec, trace=tmp_path / "rec.npz")
    assert result.ok
    spec = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", [0])])
    result, [(status, _)] = serve(sock, mem2m, spec, f"prefetch:{tmp_path / 'rec.npz'}")
    assert not result.ok
    assert "working set of 4096-byte pages, but this restore uses 2097152-byte pages" in \
        str(result.metrics()["error"])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("threads", ["1", "3"])
def test_prefetch_and_eager_with_install_threads(sock: str, memfile: Path, tmp_path: Path, threads: str,
                                                 fast_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installs split over threads (every n-th run each) put every page in place and record each once."""
    monkeypatch.setenv("FIRECRACER_UFFD_INSTALL_THREADS", threads)
    order = [7, 8, 9, 30, 2, 44, 31, 12, 13, 50, 51, 52, 60]
    result, _ = serve(sock, memfile, PeerSpec(sock, [NPAGES * PS], ops=[("read", order)]),
                      trace=tmp_path / "rec.npz")
    assert result.ok
    for strategy in (f"prefetch:{tmp_path / 'rec.npz'}", "eager"):
        spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", list(range(NPAGES)))])
        result, [(status, rep)] = serve(sock, memfile, spec, strategy, trace=tmp_path / "t.npz")
        assert result.ok and _ok(status), result.metrics()
        for p in range(NPAGES):
            assert rep["reads"][str(p)] == [expected(memfile, p)], (strategy, p)
        m = result.sessions[0]
        installed = m["pages"]["prefetch"] + m["pages"]["eager"]
        assert installed == (len(order) if strategy != "eager" else NPAGES)
        assert m["prefetch"]["threads"] == int(threads)
        tr = load_trace(tmp_path / "t.npz")
        done = tr.file_off[(tr.action == Action.PREFETCH) | (tr.action == Action.EAGER)]
        assert len(done) == len(set(done.tolist())) == installed
