"""CRaC's half of the question, for real: the image's PetClinic checkpointed as a *process* with CRIU in
our guest, restored in another boot of the same image (eagerly and lazily), its pages attributed.

One CRIU-ready JVM boot (``FC_CRAC=on``, a scratch drive) serves the module; tests run in file order and
build on each other (``STATE``); a missing earlier result skips the later ones with the reason. The
restores happen in one second boot without a JVM of its own (the eager one's JVM is killed before the
lazy one, so its pids are free again): the study (``experiment example --crac``) gives each restore a
fresh boot, which is what its timings need; counts do not.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firecracer import host
from firecracer.agentclient.client import AgentClient, AgentError
from firecracer.analysis.join import attribute
from firecracer.analysis.recording import load_recording
from firecracer.analysis.tables import nmt_categories_table, totals
from firecracer.experiment.backend import RunFailed
from firecracer.experiment.backends import process as crac
from firecracer.experiment.backends.jvm import GuestDriver
from firecracer.image.manifest import read_manifest, with_image_init
from firecracer.vmm.machine import DEFAULT_BOOT_ARGS, MicroVM, VMConfig

pytestmark = [pytest.mark.guest_vm, pytest.mark.timeout(1200)]

PATH = "/owners/1"
STATE: dict[str, Any] = {}
BOOT_TIMEOUT = float(os.environ.get("FIRECRACER_TEST_BOOT_TIMEOUT", "600"))
VCPUS = int(os.environ.get("FIRECRACER_TEST_VCPUS", "2"))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crac")


def _need(*keys: str) -> None:
    missing = [k for k in keys if k not in STATE]
    if missing:
        pytest.skip(f"an earlier step did not produce {', '.join(missing)}")


def _boot(fc: Path, kernel: Path, rootfs: Path, run_dir: Path, scratch: Path, *, java: bool) -> MicroVM:
    args = f"{DEFAULT_BOOT_ARGS} FC_NMT=detail FC_CRAC=on" + ("" if java else " FC_JAVA=off")
    vm = MicroVM(fc, name=run_dir.name, run_dir=run_dir)
    vm.boot(VMConfig(kernel=str(kernel), rootfs=str(rootfs), boot_args=with_image_init(args, rootfs),
                     vcpu_count=VCPUS, mem_size_mib=1024, vsock_cid=3,
                     drives=[{"path": str(scratch), "read_only": not java}]))
    return vm


def _keep_console(vm: MicroVM, label: str) -> None:
    keep = os.environ.get("FIRECRACER_TEST_KEEP")
    if keep and vm.serial_log.exists():
        Path(keep, f"console-crac-{label}-{os.getpid()}.log").write_bytes(vm.serial_log.read_bytes())


@pytest.fixture(scope="module")
def jvm(guest_env: tuple[Path, Path, Path], work: Path) -> Iterator[MicroVM]:
    """PetClinic booted CRIU-ready with the scratch drive attached read-write; ready and warm."""
    fc, kernel, rootfs = guest_env
    scratch = crac.make_scratch(work / "scratch.ext4", 2048)
    STATE["scratch"] = scratch
    vm = _boot(fc, kernel, rootfs, work / "state" / "crac-jvm", scratch, java=True)
    with vm:
        try:
            g = GuestDriver(vm.vsock_path, path=PATH)
            g.wait_ready(BOOT_TIMEOUT, vm)
            g.warm_up(10, 300)
        except RunFailed:
            _keep_console(vm, "boot")
            raise
        yield vm
        _keep_console(vm, "jvm")


def _agent(vm: MicroVM, timeout: float = 600) -> AgentClient:
    return GuestDriver(vm.vsock_path).agent(timeout=timeout)


def _jvm_log(vm: MicroVM) -> str:
    with _agent(vm) as a:
        return a.exec(["cat", "/run/firecracer/jvm.log"], timeout_s=60).stdout


def test_crac_criu_is_in_the_image_and_its_check_passes_in_the_guest(
        jvm: MicroVM, guest_env: tuple[Path, Path, Path]) -> None:
    manifest = read_manifest(guest_env[2]) or {}
    assert "criu" in manifest.get("packages", {}), "criu is not in the image manifest"
    with _agent(jvm) as a:
        rep = a.call("criu-check", {}, timeout=300)
    assert rep["ok"], rep["output"]
    assert "Looks good" in rep["output"]


def test_crac_a_checkpoint_that_cannot_succeed_fails_with_crius_reason_and_the_jvm_goes_on(
        jvm: MicroVM, work: Path) -> None:
    """An established connection to the JVM, left open on purpose (no hook closes it): CRIU refuses."""
    hold = ("import socket,time; s=socket.create_connection(('127.0.0.1', 8080)); "
            "open('/run/holder.ready','w').close(); time.sleep(900)")
    with _agent(jvm) as a:
        a.exec(["sh", "-c", f"setsid python3 -c \"{hold}\" </dev/null >/dev/null 2>&1 &"], timeout_s=30)
        for _ in range(100):
            if a.exec(["test", "-e", "/run/holder.ready"], timeout_s=30).rc == 0:
                break
            time.sleep(0.2)
        pid = a.ping()["jvm_pids"][0]
        STATE["nmt"] = a.nmt(pid)[1]  # for the attribution below (the JVM's regions do not move)
        with pytest.raises(AgentError) as exc:
            a.call("checkpoint", {"name": "jvm"}, timeout=900)
        a.exec(["pkill", "-f", "holder.ready"], timeout_s=30)
        assert a.ping()["jvm_pids"] == [pid], "the JVM did not survive the failed checkpoint"
    msg = str(exc.value)
    assert "criu dump" in msg and "TCP" in msg and "still running" in msg, msg
    assert "\n" not in msg
    assert GuestDriver(jvm.vsock_path, path=PATH).request(120, retries=3).status == 200
    (work / "nmt.txt").write_text(STATE["nmt"])
    # PetClinic's org.crac resource (its H2 pool) was closed for the attempt and reopened after it
    log = _jvm_log(jvm)
    before, after = log.find("crac: beforeCheckpoint datasource"), log.find("crac: afterRestore datasource")
    assert 0 <= before < after, log[-3000:]


def test_crac_the_jvm_is_checkpointed_onto_the_scratch_drive(jvm: MicroVM, work: Path) -> None:
    _need("nmt")
    with _agent(jvm) as a:
        facts = crac.checkpoint(a, work, 900)
        STATE["checkpoint"] = facts
        assert a.ping()["jvm_pids"] == [], "CRIU's dump should end the JVM"
    assert facts["bytes"] > 50 << 20 and facts["pages"] > 10_000, facts
    assert jvm.alive(), "the guest must stay up after its JVM was checkpointed"
    log = _jvm_log(jvm)
    # its last hook before the dump was beforeCheckpoint (nothing reopened the pool afterwards)
    assert log.rfind("crac: beforeCheckpoint") > log.rfind("crac: afterRestore"), log[-2000:]
    print(f"checkpoint: {json.dumps(facts)}")


@pytest.fixture(scope="module")
def restorer(guest_env: tuple[Path, Path, Path], work: Path) -> Iterator[MicroVM]:
    """A second boot of the image without a JVM, the scratch drive read-only."""
    _need("checkpoint")
    fc, kernel, rootfs = guest_env
    vm = _boot(fc, kernel, rootfs, work / "state" / "crac-restore", STATE["scratch"], java=False)
    with vm:
        crac.wait_agent(f"vsock:{vm.vsock_path}:52", BOOT_TIMEOUT, vm.alive)
        yield vm
        _keep_console(vm, "restore")


def _restore(vm: MicroVM, lazy: bool) -> dict[str, Any]:
    with _agent(vm, 900) as a:
        return crac.restore_in_guest(a, lazy=lazy, port=8080, path=PATH, timeout=600)


def test_crac_an_eager_restore_in_another_boot_answers(restorer: MicroVM, work: Path) -> None:
    rep = _restore(restorer, lazy=False)
    assert rep["first_request"]["status"] == 200, rep
    assert rep["pid"] == STATE["checkpoint"]["pid"]
    assert GuestDriver(restorer.vsock_path, path=PATH).request(120, retries=3).status == 200
    assert rep["hooks"]["ok"], rep["hooks"]
    # the restored JVM ran its afterRestore (its log goes on in the file CRIU reopened)
    log = _jvm_log(restorer)
    assert log.rfind("crac: afterRestore datasource") > log.rfind("crac: beforeCheckpoint"), log[-2000:]
    with _agent(restorer) as a:
        a.exec(["kill", "-9", str(rep["pid"])], timeout_s=30)
        for _ in range(100):
            if not a.ping()["jvm_pids"]:
                break
            time.sleep(0.2)
        assert not a.ping()["jvm_pids"], "the restored JVM did not end"
    STATE["eager"] = rep


def test_crac_a_lazy_restore_answers_and_its_pages_are_attributed(restorer: MicroVM, work: Path) -> None:
    _need("eager")
    rep = _restore(restorer, lazy=True)
    assert rep["first_request"]["status"] == 200, rep
    faults = rep.get("faults") or {}
    assert len(faults.get("addr", [])) > 100, "the lazy restore logged (almost) no faults"
    rundir = work / "lazy"
    rundir.mkdir()
    metrics = crac.write_recording(work, rundir, rep, "criu-lazy")
    (rundir / "recording.json").write_text(json.dumps({"format": "firecracer-recording", "version": 1,
                                                       "source": "criu", "address_space": "criu-image",
                                                       "strategy": "criu-lazy", "metrics": metrics,
                                                       "host": host.host_label()}))
    att = attribute(load_recording(rundir))
    t = totals(att)
    # the faulted pages, and those CRIU installed before the JVM ran (not lazily restorable)
    assert t["restored_pages"] == len(set(faults["addr"])) + metrics["eager_pages"], (t, metrics)
    assert t["faults"] == len(faults["addr"])
    assert (t["attributed_pct"] or 0) >= 95, t
    cats = {r["category"]: r["restored_kb"] for r in nmt_categories_table(att).to_dicts()}
    hit = [c for c in ("Java Heap", "Class", "Metaspace", "Code", "Thread") if cats.get(c, 0) > 0]
    assert len(hit) >= 3, cats
    keep = os.environ.get("FIRECRACER_TEST_KEEP")
    if keep:
        shutil.copytree(rundir, Path(keep) / "crac-lazy-recording", dirs_exist_ok=True)
    print(f"lazy restore: {metrics['eager_pages']} pages installed before the JVM ran, "
          f"{len(faults['addr'])} faults until the first response, "
          f"background push before it: {metrics.get('background_before_response')}, categories {cats}")
