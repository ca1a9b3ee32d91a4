"""Issue 24: the example study on a real two-node Ray cluster on this machine (``ray start`` twice).

Each test starts its own cluster (head + one worker node, 1 CPU and 1 ``firecracker_probe`` slot each)
and stops it in a finalizer, also when the test fails. The driver is a real ``python -m firecracer
experiment run --cluster`` subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firecracer.experiment.store import DB_NAME, ResultStore

from .raycluster import LocalRayCluster

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
pytestmark = pytest.mark.firecracker

PROBE = {"firecracer": 1.0, "firecracker_probe": 1.0}


@pytest.fixture
def cluster(firecracker_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRayCluster]:
    from firecracer.vmm.binary import firecracker_version

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("the example's uffd strategies need Firecracker >= 1.8 on this host kernel")
    monkeypatch.setenv("FIRECRACKER", str(firecracker_bin))  # the nodes' workers find it there
    c = LocalRayCluster(PROBE, PROBE)
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert not c.pids(), "the cluster's processes outlived stop()"


def _cmd(res: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "firecracer", "experiment", "run", "--example", "-o", str(res), *extra]


def _rows(res: Path) -> list[tuple[object, ...]]:
    with ResultStore.open(res) as st:
        return sorted((r.run_id, r.idx, r.variant, r.strategy, r.repetition, r.status, r.backend, r.recording)
                      for r in st.runs())


def _schema(res: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(res / DB_NAME) as db:
        return sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())


def _nodes_used(res: Path) -> set[str]:
    with sqlite3.connect(res / DB_NAME) as db:
        return {json.loads(v)["host"].get("ray_node", "") for (v,) in db.execute("SELECT versions FROM runs")}


def test_example_on_two_nodes_equals_a_local_run(cluster: LocalRayCluster, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "cluster"
    t0 = time.monotonic()
    run = subprocess.run(_cmd(local), capture_output=True, text=True, timeout=600, check=False)
    t_local = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-3000:]
    t0 = time.monotonic()
    run = subprocess.run(_cmd(remote, "--cluster", cluster.address), capture_output=True, text=True,
                         timeout=600, check=False)
    t_cluster = time.monotonic() - t0
    print(f"wall time: local {t_local:.1f} s, cluster {t_cluster:.1f} s, ratio {t_cluster / t_local:.2f}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "24 ok, 0 failed" in " ".join(run.stdout.split())
    assert _rows(remote) == _rows(local) and len(_rows(remote)) == 24
    assert all(row[5] == "ok" for row in _rows(remote))
    assert _schema(remote) == _schema(local)
    for row in _rows(remote):  # each run's recording came back, the same files as a local run's
        rid = str(row[0])
        assert sorted(p.name for p in (remote / "runs" / rid).iterdir()) == \
            sorted(p.name for p in (local / "runs" / rid).iterdir()), rid
    used = _nodes_used(remote)
    assert len(used) == 2 and "" not in used, used  # both nodes ran a variant
    assert " on " in run.stderr and "node " in run.stderr  # which machine, said on the driver
    assert not (remote / "variants").exists()  # snapshots stay on the workers
    assert not cluster.pids(vm=True)


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_node_killed_mid_study_costs_one_rerun(cluster: LocalRayCluster, tmp_path: Path) -> None:
    res = tmp_path / "res"
    drv = subprocess.Popen(_cmd(res, "--cluster", cluster.address), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        # the worker node is running a VM of its variant: the machine dies (its Ray processes, at once)
        _wait(lambda: cluster.pids("w1", vm=True), 180, "a Firecracker on the worker node")
        cluster.kill("w1", vm=False)
        out, err = drv.communicate(timeout=600)
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.communicate()
    assert drv.returncode == 0, err[-3000:]
    assert "lost" in err and "queued again (once)" in err, err[-3000:]
    assert "24 ok, 0 failed" in " ".join(out.split()), err[-3000:]
    assert len(_rows(res)) == 24 and all(r[5] == "ok" for r in _rows(res))
    _wait(lambda: not cluster.pids("w1", vm=True), 10, "the dead node's Firecrackers to die (lifeline)")
    assert not cluster.pids(vm=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_driver_signal_cancels_tasks_and_a_rerun_resumes(cluster: LocalRayCluster, tmp_path: Path,
                                                          sig: signal.Signals) -> None:
    res = tmp_path / "res"
    drv = subprocess.Popen(_cmd(res, "--cluster", cluster.address), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        def recorded() -> int:
            if not (res / DB_NAME).exists():
                return 0
            with ResultStore.open(res) as st:
                return len(st.statuses())

        _wait(lambda: recorded() >= 2 and cluster.pids(vm=True), 180, "two recorded runs and a VM running")
        drv.send_signal(sig)
        _out, err = drv.communicate(timeout=120)
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.communicate()
    assert drv.returncode != 0
    assert "tasks are cancelled" in err, err[-3000:]
    _wait(lambda: not cluster.pids(vm=True), 15, "no Firecracker or page server left")
    from firecracer.paths import state_dir

    vms = state_dir() / "vms"  # the workers' (same env): a cancelled task's backend removed its VM's run dir,
    assert not (vms.exists() and any(vms.iterdir())), list(vms.iterdir())  # which a killed one leaves
    done = recorded()
    assert 2 <= done < 24
    rerun = subprocess.run(_cmd(res, "--cluster", cluster.address), capture_output=True, text=True,
                           timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: {done} runs already recorded" in rerun.stderr
    assert f"{24 - done} ok, 0 failed, {done} already recorded" in " ".join(rerun.stdout.split())
    assert not cluster.pids(vm=True)


def test_a_study_no_node_can_run_is_refused_up_front(cluster: LocalRayCluster, tmp_path: Path) -> None:
    from firecracer.experiment.spec import jvm_example_text

    for f in ("vmlinux", "rootfs.ext4"):
        (tmp_path / f).write_bytes(b"\0")
    spec = tmp_path / "jvm.toml"
    spec.write_text(jvm_example_text(tmp_path / "vmlinux", tmp_path / "rootfs.ext4"))
    res = tmp_path / "res"
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "run", str(spec), "-o", str(res),
                          "--cluster", cluster.address], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode != 0
    assert time.monotonic() - t0 < 60  # refused, not queued forever
    assert "needs resource firecracker_kvm" in run.stderr and "default" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not res.exists()
    assert os.environ.get("FIRECRACKER")  # (the fixture's; the refusal did not depend on a missing binary)


def test_worker_offers_what_doctor_finds(firecracker_bin: Path) -> None:
    """``firecracer worker`` (dry run): the resources are the doctor's verdicts, passed to ``ray start``."""
    from firecracer import host

    base = [sys.executable, "-m", "firecracer", "worker", "--firecracker", str(firecracker_bin), "--dry-run"]
    run = subprocess.run([*base, "--address", "127.0.0.2:6379", "--slots", "2", "--num-cpus", "1"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    start = next(line for line in run.stdout.splitlines() if " start " in line)
    res = json.loads(start.split("--resources ", 1)[1].split("}", 1)[0] + "}")
    checks = host.run_all(str(firecracker_bin))
    assert res["firecracer"] == 2
    assert ("firecracker_probe" in res) == (not host.missing_for("uffd", checks))
    assert ("firecracker_kvm" in res) == (not host.missing_for("uffd", checks) and checks["linux_guests"].ok)
    assert ("firecracker_lab" in res) == (not host.missing_for("lab", checks))
    assert start.endswith("--address=127.0.0.2:6379 --num-cpus 1")  # the rest goes to ray start as is
    both = subprocess.run([*base, "--head", "--address", "x:1"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert both.returncode == 2 and "not both" in both.stderr
