"""Real Firecracker (≥ 1.8; 1.14.x here) restoring the probe guest through every strategy.

The probe fills a scattered set of pages at boot, is snapshotted (Full, zero pages punched out so the
memory file is sparse), then restored with the Uffd backend and our page server. Each restore walks the
trace (which also reads never-filled pages: they must come back as zero) and verifies every filled
page: ``errors=0`` means every word the guest checked held what it wrote before the snapshot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firecracer.fcversion import firecracker_version
from firecracer.uffd.trace import FLAG_FAULTING, Action, load_trace
from firecracer.uffd.workingset import ws_path_for
from firecracer.vmm.binary import installed_binaries
from firecracer.vmm.config import MemBackend
from firecracer.vmm.machine import MicroVM
from firecracer.vmm.probe import ProbeResult, build_probe
from firecracer.vmm.probe.run import boot_probe, trigger

pytestmark = pytest.mark.firecracker

FILL_BASE = 8192  # 32 MiB


def _fc_with_uffd() -> Path | None:
    """The newest installed Firecracker that can use the Uffd backend on this kernel (≥ 1.8)."""
    best = None
    for path in installed_binaries().values():
        if firecracker_version(path).at_least(1, 8):
            best = path
    env = os.environ.get("FIRECRACKER")
    if best is None and env and firecracker_version(env).at_least(1, 8):
        best = Path(env)
    return best


FC = _fc_with_uffd()


@pytest.fixture(scope="module")
def probe_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, int]]:
    """(firecracker, snapshot dir, filled pages): the probe after boot, snapshotted with holes."""
    if FC is None:
        pytest.skip("no Firecracker >= 1.8 installed (Uffd needs it on host kernels >= 6.6)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable")
    base = tmp_path_factory.mktemp("fcprobe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRECRACER_CACHE", str(base / "cache"))
        mp.setenv("FIRECRACER_STATE", str(base / "state"))
        rng = np.random.default_rng(11)
        # 512 pages in runs of 1-3, scattered over 32..96 MiB; the trace walks them shuffled plus 32
        # never-filled pages (holes after punching: served as zero pages)
        starts = np.sort(rng.choice(np.arange(FILL_BASE, FILL_BASE + 16384, 4), 200, replace=False))
        fill = sorted({int(s) + k for s in starts for k in range(int(rng.integers(1, 4)))})
        holes = [p for p in range(FILL_BASE + 16384, FILL_BASE + 16384 + 64, 2)]
        trace = [*fill, *holes]
        rng.shuffle(trace)
        elf = build_probe(trace, fill, writes=[bool(i % 5 == 0) for i in range(len(trace))], samples=2)
        vm = boot_probe(elf, FC, mem_size_mib=128)
        snap_dir = base / "snap"
        try:
            vm.snapshot(snap_dir, punch_holes=True)
        finally:
            vm.kill()
        yield FC, snap_dir, len(fill)


@dataclass
class Run:
    walk: ProbeResult
    verify: ProbeResult
    metrics: dict[str, Any]
    trace: Path

    @property
    def session(self) -> dict[str, Any]:
        s: dict[str, Any] = self.metrics["sessions"][0]
        return s


def _restore(fc: Path, snap: Path, strategy: str, out: Path, name: str) -> Run:
    trace, metrics = out / f"{name}.npz", out / f"{name}.json"
    vm = MicroVM.restore(snap, firecracker=fc, backend=MemBackend.UFFD, strategy=strategy, trace=trace,
                         metrics=metrics, name=name)
    try:
        walk = trigger(vm, b"t", timeout=120)
        verify = trigger(vm, b"a", timeout=120)
    finally:
        vm.kill()
    assert metrics.exists(), (out / "uffd.log")
    m = json.loads(metrics.read_text())
    return Run(walk, verify, m, trace)


def test_every_strategy_restores_the_probe_correctly(probe_snapshot: tuple[Path, Path, int],
                                                      tmp_path: Path) -> None:
    fc, snap, nfill = probe_snapshot
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRECRACER_STATE", str(tmp_path / "state"))
        rec = _restore(fc, snap, "ondemand", tmp_path, "ondemand")
        runs = {"ondemand": rec}
        for strategy in ("fault-around:16", f"prefetch:{rec.trace}", f"prefetch-background:{rec.trace}",
                         f"prefetch@file:{rec.trace}", f"prefetch-background@touch:{rec.trace}", "eager"):
            name = strategy.split(":")[0].replace("-", "").replace("@", "-")
            runs[strategy.split(":")[0]] = _restore(fc, snap, strategy, tmp_path, name)
    for name, r in runs.items():
        m = r.metrics
        assert m["ok"], (name, m)
        assert r.walk.errors == 0 and r.verify.errors == 0, (name, r.walk, r.verify)
        assert r.verify.pages == nfill
        assert r.session["handshake"] == "v1.12+"
    od = runs["ondemand"].session
    assert od["faults"] >= nfill and od["pages"]["zero"] > 0  # holes were zero-filled
    tr = load_trace(runs["ondemand"].trace)
    assert tr.meta["regions"][0]["size"] == 128 << 20
    assert tr.meta["firecracker_version"] == str(firecracker_version(fc))
    assert ((tr.flags & FLAG_FAULTING) != 0).all() and (tr.gpa == tr.file_off).all()
    assert ws_path_for(runs["ondemand"].trace).exists()
    fa = runs["fault-around"].session
    assert fa["faults"] < od["faults"] and fa["pages"]["around"] > 0
    pf = runs["prefetch"].session
    assert pf["prefetch"]["installed"] == pf["prefetch"]["ws_pages"] > 0
    assert pf["faults"] <= od["faults"] * 0.05, (pf["faults"], od["faults"])  # ≥ 95 % fewer faults
    ea = runs["eager"].session
    assert ea["faults"] == 0 and ea["pages"]["eager"] == (128 << 20) // 4096
    assert load_trace(runs["eager"].trace).action_counts()["eager"] == (128 << 20) // 4096
    assert (load_trace(runs["prefetch"].trace).action == Action.PREFETCH).sum() > 0
    for name, order in (("prefetch@file", "file"), ("prefetch-background@touch", "touch")):
        sess = runs[name].session  # each order installs the whole working set from its own file
        assert sess["prefetch"]["order"] == order
        assert sess["prefetch"]["installed"] == pf["prefetch"]["ws_pages"]
        assert ws_path_for(runs["ondemand"].trace, order).exists()
        assert load_trace(runs[name].trace).meta["strategy"].startswith(name + ":")


def _resident(path: Path, offsets: np.ndarray[Any, np.dtype[np.uint64]]) -> float:
    """Fraction of the pages at ``offsets`` of ``path`` in the host page cache."""
    from firecracer.vmm.readahead import resident

    return float(resident(path)[(offsets // np.uint64(4096)).astype(np.int64)].mean())


def test_readahead_fills_the_page_cache_then_the_file_backend_restores(
        probe_snapshot: tuple[Path, Path, int], tmp_path: Path) -> None:
    from firecracer.errors import FirecracerError
    from firecracer.experiment.backends._common import drop_cache
    from firecracer.uffd.trace import save_trace
    from firecracer.vmm.readahead import Readahead
    from firecracer.vmm.snapshot import Snapshot, full_memory

    fc, snap, nfill = probe_snapshot
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRECRACER_STATE", str(tmp_path / "state"))
        rec = _restore(fc, snap, "ondemand", tmp_path, "ondemand")
        mem = full_memory(Snapshot.load(snap))
        ws = load_trace(rec.trace).working_set()
        for background in (False, True):
            drop_cache(mem)
            cold = _resident(mem, ws)
            vm = MicroVM.restore(snap, firecracker=fc, backend=MemBackend.FILE, resume=False,
                                 readahead=Readahead(rec.trace, background), name=f"ra{int(background)}")
            try:
                assert vm.readahead is not None
                r = vm.readahead.wait(60)
                assert r.done and not r.error and r.pages == len(ws)
                assert _resident(mem, ws) == 1.0 > cold  # every page of the working set is cached now
                assert ("readahead" in vm.timings_ms) is not background  # a racing read is not a phase
                vm.resume()
                walk = trigger(vm, b"t", timeout=120)
                verify = trigger(vm, b"a", timeout=120)
            finally:
                vm.kill()
            assert walk.errors == 0 and verify.errors == 0 and verify.pages == nfill
        # a trace recorded on another snapshot: one line naming both, before anything starts
        other = load_trace(rec.trace)
        other.meta["mem"] = {**other.meta["mem"], "id": "0123456789abcdef"}
        bad = save_trace(other, tmp_path / "other.npz")
        with pytest.raises(FirecracerError) as exc:
            MicroVM.restore(snap, firecracker=fc, backend=MemBackend.FILE, readahead=Readahead(bad),
                            name="rabad")
        assert f"readahead trace {bad} does not belong to memory file" in str(exc.value)
        assert "0123456789abcdef" in str(exc.value) and "\n" not in str(exc.value)
        assert not (tmp_path / "state" / "vms" / "rabad").exists() or \
            not any((tmp_path / "state" / "vms" / "rabad").glob("*.socket"))


@pytest.fixture(scope="module")
def probe_snapshot_2m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, int]]:
    """The same probe booted with ``huge_pages="2M"`` (128 MiB: 64 pages of 2 MiB), snapshotted with holes.

    The pool is grown for the module's tests and put back afterwards; skipped when it cannot be."""
    from firecracer.hugepages import HugePagesError, Reservation

    if FC is None:
        pytest.skip("no Firecracker >= 1.8 installed (Uffd needs it on host kernels >= 6.6)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable")
    try:
        res = Reservation(64 + 16)
    except HugePagesError as exc:
        pytest.skip(f"2 MiB huge pages cannot be reserved here: {exc}")
    with res:
        base = tmp_path_factory.mktemp("fcprobe2m")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FIRECRACER_STATE", str(base / "state"))
            rng = np.random.default_rng(12)
            starts = np.sort(rng.choice(np.arange(FILL_BASE, FILL_BASE + 16384, 4), 200, replace=False))
            fill = sorted({int(s) + k for s in starts for k in range(int(rng.integers(1, 4)))})
            holes = list(range(FILL_BASE + 16384, FILL_BASE + 16384 + 1024, 16))  # never filled: zeros
            trace = [*fill, *holes]
            rng.shuffle(trace)
            elf = build_probe(trace, fill, writes=[bool(i % 5 == 0) for i in range(len(trace))], samples=2)
            vm = boot_probe(elf, FC, mem_size_mib=128, huge_pages="2M")
            snap_dir = base / "snap"
            try:
                vm.snapshot(snap_dir, punch_holes=True)
            finally:
                vm.kill()
            yield FC, snap_dir, len(fill)


def test_every_strategy_restores_the_probe_correctly_with_2mib_pages(
        probe_snapshot_2m: tuple[Path, Path, int], tmp_path: Path) -> None:
    fc, snap, nfill = probe_snapshot_2m
    huge = 2 << 20
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRECRACER_STATE", str(tmp_path / "state"))
        rec = _restore(fc, snap, "ondemand", tmp_path, "ondemand")
        runs = {"ondemand": rec}
        for strategy in ("fault-around:2", f"prefetch:{rec.trace}", f"prefetch-background:{rec.trace}",
                         "eager"):
            name = strategy.split(":")[0].replace("-", "")
            runs[strategy.split(":")[0]] = _restore(fc, snap, strategy, tmp_path, name)
    for name, r in runs.items():
        assert r.metrics["ok"], (name, r.metrics)
        assert r.walk.errors == 0 and r.verify.errors == 0, (name, r.walk, r.verify)
        assert r.verify.pages == nfill
        assert r.session["page_size"] == huge
        tr = load_trace(r.trace)
        assert tr.page_size == huge and (tr.file_off % huge == 0).all(), name
    od = runs["ondemand"].session
    touched = load_trace(runs["ondemand"].trace).working_set()
    # 32..96 MiB filled (32 pages of 2 MiB) plus the image and the never-filled pages beyond: a few dozen
    # (a fault can repeat for a page already served when the host is loaded: count pages, not faults)
    assert 32 <= len(touched) < 64 and od["faults"] >= len(touched) and od["pages"]["zero"] > 0
    ws_file = ws_path_for(runs["ondemand"].trace)
    from firecracer.uffd.workingset import WorkingSet

    ws = WorkingSet(ws_file, populate=False)
    try:
        assert ws.page_size == huge and ws.n == len(touched)
        assert ws.file_size < 8 << 20  # data blocks only, not od["faults"] x 2 MiB
    finally:
        ws.close()
    pf = runs["prefetch"].session  # nothing served on demand (a fault queued during the install is stale)
    assert pf["prefetch"]["misses"] == 0 and pf["pages"]["load"] == pf["pages"]["zero"] == 0
    assert pf["prefetch"]["installed"] == pf["prefetch"]["ws_pages"] == len(touched)
    ea = runs["eager"].session
    assert ea["pages"]["load"] == ea["pages"]["zero"] == 0 and ea["pages"]["eager"] == 64
    fa = runs["fault-around"].session
    assert fa["faults"] < od["faults"] and fa["pages"]["around"] > 0
