"""The loop the project exists for, for real: our image's JVM in Firecracker → warm-up → collect over
vsock → hooks → Full and Diff snapshots → File and Uffd restores (ondemand, fault-around, prefetch) →
the first request answered → the restored pages attributed. Plus the balloon's REMOVE events.

One JVM boot serves the whole module (tests run in file order and build on each other's results, kept
in ``STATE``); a missing earlier result skips the later tests with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firecracer import host
from firecracer.experiment.backend import RunFailed
from firecracer.experiment.backends.jvm import GuestDriver
from firecracer.guest.jvm import JVM_DEATH_RX
from firecracer.image.manifest import with_image_init
from firecracer.uffd.trace import FLAG_FAULTING, FLAG_ZERO, Action, load_trace
from firecracer.vmm.config import MemBackend
from firecracer.vmm.machine import DEFAULT_BOOT_ARGS, MicroVM, VMConfig
from firecracer.vmm.snapshot import Snapshot, SnapshotType

pytestmark = [pytest.mark.guest_vm, pytest.mark.timeout(1200)]

PATH = "/owners/1"
STATE: dict[str, Any] = {}
BOOT_TIMEOUT = float(os.environ.get("FIRECRACER_TEST_BOOT_TIMEOUT", "300"))
#: the lab's CI smoke boots one vCPU: nothing of L2 then runs on two of L1's TCG threads at once
VCPUS = int(os.environ.get("FIRECRACER_TEST_VCPUS", "2"))
#: all boots of the module's JVM together (s); a lost boot is retried only with MIN_BOOT of it left
BOOT_BUDGET = float(os.environ.get("FIRECRACER_TEST_BOOT_BUDGET", str(2 * BOOT_TIMEOUT)))
MIN_BOOT = 240.0  # one vCPU in L1: boot to ready + the first test took 223 s under two busy loops
BOOTS = 3


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jvm")


def _cli(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FIRECRACER_STATE": str(work / "state")}
    return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _need(*keys: str) -> None:
    missing = [k for k in keys if k not in STATE]
    if missing:
        pytest.skip(f"an earlier step did not produce {', '.join(missing)}")


@pytest.fixture(scope="module")
def jvm(guest_env: tuple[Path, Path, Path], work: Path) -> Iterator[MicroVM]:
    """The image booted with NMT detail, a balloon device and dirty-page tracking; ready and warm.

    In the lab, TCG loses a boot now and then (the guest hangs, or its JVM crashes or dies): another
    boot, said aloud, up to BOOTS, while ``BOOT_BUDGET`` leaves MIN_BOOT for it. Our own refusals (the
    init's FATAL: a bad option, a missing file) are the answer at once.
    """
    fc, kernel, rootfs = guest_env
    # Without the image's CRaC agent: this module's "hooks" step is about hook executables and their
    # order across snapshots, and with the agent PetClinic would close its database pool there until an
    # after-restore that most restores below do not send (the agent's own cycle: tests/guestvm/test_crac.py)
    boot_args = with_image_init(f"{DEFAULT_BOOT_ARGS} FC_NMT=detail FC_CRAC_AGENT=off", rootfs)
    start = time.monotonic()
    for attempt in range(1, BOOTS + 1):
        vm = MicroVM(fc, name="jvm", run_dir=work / "state" / "vms" / "jvm")
        with vm:
            vm.boot(VMConfig(kernel=str(kernel), rootfs=str(rootfs), boot_args=boot_args, vcpu_count=VCPUS,
                             mem_size_mib=1024, track_dirty_pages=True, balloon_mib=0, vsock_cid=3))
            t0 = time.monotonic()
            try:
                left = BOOT_BUDGET - (t0 - start)
                GuestDriver(vm.vsock_path, path=PATH).wait_ready(min(BOOT_TIMEOUT, max(left, 60.0)), vm)
            except RunFailed as exc:
                _keep_console(vm, f"boot{attempt}")
                left = BOOT_BUDGET - (time.monotonic() - start)
                ours = "firecracer-init: FATAL" in str(exc)
                if not host.in_lab() or ours or attempt == BOOTS or left < MIN_BOOT:
                    raise
                print(f"boot {attempt} lost in the lab, booting once more ({left:.0f} s of the boot budget "
                      f"left): {exc}")
                continue
            STATE["ready_s"] = time.monotonic() - t0
            yield vm
            return


def _keep_console(vm: MicroVM, label: str) -> None:
    """Copy a lost guest's console out of L1 (whose /tmp dies with it), where the lab test keeps files."""
    keep = os.environ.get("FIRECRACER_TEST_KEEP")
    if keep and vm.serial_log.exists():
        shutil.copyfile(vm.serial_log, Path(keep) / f"console-{label}-{os.getpid()}.log")  # per session


@pytest.fixture(autouse=True)
def _guest_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Name a dead guest in the tests that meet it: its console's last word (e.g. the JVM's fatal-error
    line) rather than a missing vsock socket; ``tests/lab`` reads it to tell TCG's crashes from ours."""
    vm: MicroVM | None = request.getfixturevalue("jvm") if "jvm" in request.fixturenames else None
    if vm is not None and not vm.alive():
        _keep_console(vm, "jvm")
        pytest.fail(f"the JVM's guest is gone: {vm.guest_death(also=[JVM_DEATH_RX])}")
    yield
    if vm is not None and not vm.alive() and not vm._killed:  # killed on purpose is not dying
        _keep_console(vm, "jvm")
        print(f"the JVM's guest died during this test: {vm.guest_death(also=[JVM_DEATH_RX])}")


def _restore(snap: Path, run_dir: Path, fc: Path, **kw: Any) -> MicroVM:
    return MicroVM.restore(snap, firecracker=fc, run_dir=run_dir, **kw)


def _first_request(vm: MicroVM, timeout: float = 300) -> int:
    r = GuestDriver(vm.vsock_path, path=PATH).request(timeout, retries=3)
    if r.retried:
        print(f"first request after restore retried: {'; '.join(r.retried)}")
    return r.status


# -- the running JVM ---------------------------------------------------------------------------------

def test_the_image_boots_and_vm_request_terminates(jvm: MicroVM, work: Path) -> None:
    """``vm request`` returns as soon as the reply is complete (Firecracker's vsock hides EOF)."""
    with GuestDriver(jvm.vsock_path).agent() as agent:
        assert agent.ping()["jvm_pids"], "the agent sees no JVM"
    t0 = time.monotonic()
    res = _cli(work, "vm", "request", "jvm", PATH, "--timeout", "120", timeout=200)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("200 "), res.stdout
    assert time.monotonic() - t0 < 150


def test_hooks_prepare_collect_and_snapshots(jvm: MicroVM, work: Path) -> None:
    guest = GuestDriver(jvm.vsock_path, path=PATH)
    guest.warm_up(10, timeout=120)
    hooks = "/etc/firecracer/hooks"
    script = (
        f"set -e; for e in before-snapshot after-restore; do mkdir -p {hooks}/$e.d; done; "
        "for n in 10-a 20-b; do "
        f"printf '#!/bin/sh\\necho before:%s >> /run/hooks.log\\n' $n > {hooks}/before-snapshot.d/$n; "
        "printf '#!/bin/sh\\necho after:%s:$FIRECRACER_GENERATION >> /run/hooks.log\\n' $n "
        f"> {hooks}/after-restore.d/$n; "
        f"chmod +x {hooks}/*/$n; done")
    with guest.agent(timeout=30) as agent:
        r = agent.exec(["/bin/sh", "-c", script], timeout_s=60)
        assert r.rc == 0, r
        prep = agent.prepare(["hooks", "gc"])
        assert prep.get("ok"), prep
    rec = work / "recording"
    res = _cli(work, "collect", "jvm", "-o", str(rec), timeout=900)
    assert res.returncode == 0, res.stderr
    assert (rec / "memmap.npz").stat().st_size > 0
    assert "Java Heap" in (rec / "nmt.txt").read_text()
    STATE["recording"] = rec

    full = jvm.snapshot(work / "full", SnapshotType.FULL)
    assert full.mem_file.stat().st_size == 1024 << 20
    STATE["full"] = full.dir
    jvm.resume()
    assert guest.request(120).status == 200  # dirties pages for the Diff
    diff = jvm.snapshot(work / "diff", SnapshotType.DIFF)
    assert Snapshot.load(diff.dir).parent == full.dir.resolve()
    STATE["diff"] = diff.dir
    jvm.kill()


# -- restores ----------------------------------------------------------------------------------------

def test_file_restore_answers(guest_env: tuple[Path, Path, Path], work: Path) -> None:
    _need("full")
    with _restore(STATE["full"], work / "r-file", guest_env[0]) as vm:
        assert _first_request(vm) == 200


def test_diff_restore_answers(guest_env: tuple[Path, Path, Path], work: Path) -> None:
    _need("diff")
    with _restore(STATE["diff"], work / "r-diff", guest_env[0]) as vm:
        assert _first_request(vm) == 200


def test_uffd_ondemand_restore_and_after_restore_hooks(guest_env: tuple[Path, Path, Path],
                                                       work: Path) -> None:
    _need("full", "recording")
    rec: Path = STATE["recording"]
    with _restore(STATE["full"], work / "r-ondemand", guest_env[0], backend=MemBackend.UFFD,
                  strategy="ondemand", trace=rec / "trace.npz", metrics=rec / "uffd-metrics.json") as vm:
        assert _first_request(vm) == 200
        with GuestDriver(vm.vsock_path).agent(timeout=60) as agent:
            after = agent.after_restore(generation=1, steps=["hooks"])
            assert after.get("ok"), after
            log = agent.exec(["cat", "/run/hooks.log"]).stdout.split()
    # before-snapshot hooks in reverse name order (CRaC's order), after-restore hooks in name order
    assert log == ["before:20-b", "before:10-a", "after:10-a:1", "after:20-b:1"], log
    tr = load_trace(rec / "trace.npz")
    faulting = int(np.count_nonzero(tr.flags & FLAG_FAULTING))
    assert faulting > 500, f"only {faulting} faults for a JVM's first request"
    STATE["ondemand_trace"] = rec / "trace.npz"
    STATE["ondemand_faults"] = faulting


def test_uffd_fault_around_restore(guest_env: tuple[Path, Path, Path], work: Path) -> None:
    _need("full", "ondemand_faults")
    out = work / "around.npz"
    with _restore(STATE["full"], work / "r-around", guest_env[0], backend=MemBackend.UFFD,
                  strategy="fault-around:16", trace=out) as vm:
        assert _first_request(vm) == 200
    tr = load_trace(out)
    assert np.any(tr.action == Action.AROUND)
    assert int(np.count_nonzero(tr.flags & FLAG_FAULTING)) < STATE["ondemand_faults"]


def test_uffd_prefetch_from_the_first_trace(guest_env: tuple[Path, Path, Path], work: Path) -> None:
    _need("full", "ondemand_trace")
    out = work / "prefetch.npz"
    with _restore(STATE["full"], work / "r-prefetch", guest_env[0], backend=MemBackend.UFFD,
                  strategy=f"prefetch:{STATE['ondemand_trace']}", trace=out) as vm:
        assert _first_request(vm) == 200
    tr = load_trace(out)
    assert np.any(tr.action == Action.PREFETCH)
    faults = int(np.count_nonzero(tr.flags & FLAG_FAULTING))
    assert faults < STATE["ondemand_faults"] / 2, (faults, STATE["ondemand_faults"])


def test_balloon_after_uffd_restore_removes_pages_served_as_zero(guest_env: tuple[Path, Path, Path],
                                                                  work: Path) -> None:
    _need("full")
    out = work / "balloon.npz"
    with _restore(STATE["full"], work / "r-balloon", guest_env[0], backend=MemBackend.UFFD,
                  strategy="ondemand", trace=out) as vm:
        assert _first_request(vm) == 200
        vm.set_balloon(256)
        deadline = time.monotonic() + 240
        inflated = 0
        while time.monotonic() < deadline:
            inflated = int(vm.flush_metrics().get("balloon", {}).get("inflate_count", 0))
            if inflated:
                break
            time.sleep(2)
        assert inflated, "the balloon never inflated"
        time.sleep(10)
        vm.set_balloon(0)
        time.sleep(10)
        with GuestDriver(vm.vsock_path).agent(timeout=60) as agent:  # touch memory the balloon gave back
            r = agent.exec(["/bin/sh", "-c", "head -c 450M /dev/zero > /dev/shm/fill && rm /dev/shm/fill"],
                           timeout_s=600)
            assert r.rc == 0, r
        assert _first_request(vm) == 200
    tr = load_trace(out)
    removes = tr.meta.get("removes", [])
    assert removes, "no UFFD_EVENT_REMOVE reached the page server"
    t_first = min(int(r["t_ns"]) for r in removes)
    hva, t, flags = tr.hva, tr.t_ns, tr.flags
    in_removed = np.zeros(len(hva), dtype=bool)
    for r in removes:
        in_removed |= (hva >= r["start"]) & (hva < r["end"])
    later = in_removed & (t > t_first)
    assert np.count_nonzero(later) > 0, "no page of a removed range was touched again"
    assert np.all(flags[later] & FLAG_ZERO), "a removed page was served from the memory file"


@pytest.mark.slow  # compressing ~1 GiB under TCG takes minutes: not in CI's lab smoke
def test_compressed_snapshot_restores_the_jvm(guest_env: tuple[Path, Path, Path], work: Path) -> None:
    """The JVM's Full snapshot compressed (zstd frames, mem.fcz) is served on demand and prefetched from
    it; its ratio is the real one of a JVM guest (written to FIRECRACER_TEST_KEEP/compressed.json)."""
    from firecracer.vmm.snapshot import compress_snapshot

    _need("full", "ondemand_trace", "ondemand_faults")
    zdir = work / "full-zstd"
    shutil.rmtree(zdir, ignore_errors=True)
    zdir.mkdir()
    for f in Path(STATE["full"]).iterdir():  # a sparse copy: holes stay holes
        subprocess.run(["cp", "--sparse=always", str(f), str(zdir / f.name)], check=True, timeout=600)
    snap = compress_snapshot(Snapshot.load(zdir))
    info = snap.compressed
    assert info is not None and not (zdir / "mem").exists() and info["ratio"] > 1.0, info
    facts: dict[str, Any] = {"compressed": info}
    for strategy in ("ondemand", f"prefetch:{STATE['ondemand_trace']}"):
        kind = strategy.split(":")[0]
        out, metrics = work / f"z-{kind}.npz", work / f"z-{kind}.json"
        with _restore(zdir, work / f"r-z{kind}", guest_env[0], backend=MemBackend.UFFD, strategy=strategy,
                      trace=out, metrics=metrics) as vm:
            assert _first_request(vm) == 200
        faults = int(np.count_nonzero(load_trace(out).flags & FLAG_FAULTING))
        facts[kind] = {"faults": faults, "metrics": json.loads(metrics.read_text())["sessions"][0]
                       .get("compressed")}
    assert facts["prefetch"]["faults"] < STATE["ondemand_faults"] / 2, facts
    keep = os.environ.get("FIRECRACER_TEST_KEEP")
    if keep:
        (Path(keep) / "compressed.json").write_text(json.dumps(facts, indent=1))


# -- analysis of the real recording --------------------------------------------------------------

def test_analyze_attributes_the_uffd_restore(work: Path) -> None:
    _need("recording", "ondemand_trace")
    keep = os.environ.get("FIRECRACER_TEST_KEEP")
    if keep:  # the lab test copies the real recording out for a look
        shutil.copytree(STATE["recording"], Path(keep) / "recording", dirs_exist_ok=True)
    res = _cli(work, "analyze", str(STATE["recording"]), "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["totals"]["attributed_pct"] >= 99.0, data["totals"]
    cats = {row["category"] for row in data["tables"]["nmt_categories"] if row["restored_kb"] > 0}
    assert "Java Heap" in cats and "Code" in cats and cats & {"Metaspace", "Class"}, cats
    assert "Shared class space" in cats, cats
