"""``firecracer vm …`` and ``firecracer selftest`` as a user runs them (subprocesses, real Firecracker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.vmm.hostcaps import can_boot, uffd_unsupported

from firecracer.fcversion import firecracker_version
from firecracer.vmm.machine import BRAND_OLD_FC


def fcr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_errors_are_one_line_without_firecracker() -> None:
    res = fcr("vm", "pause", "nope")
    assert res.returncode == 1
    assert res.stderr.strip().startswith("firecracer: error: no VM named 'nope'")
    assert len(res.stderr.strip().splitlines()) == 1
    assert fcr("vm", "boot").returncode == 2  # neither --kernel nor --probe
    res = fcr("vm", "ls", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == []


@pytest.mark.firecracker
def test_selftest_json(fc_any: Path) -> None:
    res = fcr("selftest", "--firecracker", str(fc_any), "--json", timeout=240)
    report: dict[str, Any] = json.loads(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert report["firecracker_version"] == str(firecracker_version(fc_any))
    checks = {c["name"]: c for c in report["checks"]}
    assert {"boot", "snapshot_full", "snapshot_diff", "restore_file_full", "restore_file_diff",
            "restore_uffd_full"} <= set(checks)
    assert all(set(c) >= {"name", "ok", "ms", "unsupported"} for c in report["checks"])
    if not can_boot(fc_any):
        assert all(c["unsupported"] == BRAND_OLD_FC for c in report["checks"])
        return
    assert checks["restore_file_full"]["ok"] and checks["restore_file_diff"]["ok"]
    assert checks["first_result"]["ok"] and checks["boot"]["ms"] > 0
    why = uffd_unsupported(fc_any)
    if why is None:
        assert checks["restore_uffd_full"]["ok"] and checks["restore_uffd_full_first_result"]["ok"]
    else:
        assert checks["restore_uffd_full"]["unsupported"] == why
    # selftest cleans up after itself: no run directories of its VMs are left
    assert not list(Path(os.environ["FIRECRACER_STATE"]).glob("vms/*"))
    assert not list(Path(os.environ["FIRECRACER_STATE"]).glob("vms/*/*.sock"))


@pytest.mark.firecracker
def test_vm_commands_end_to_end(firecracker_bin: Path, tmp_path: Path) -> None:
    if not can_boot(firecracker_bin):
        pytest.skip(BRAND_OLD_FC)
    fc = str(firecracker_bin)
    try:
        res = fcr("vm", "boot", "--probe", "--name", "cli1", "--firecracker", fc, "--track-dirty-pages",
                  "--json")
        assert res.returncode == 0, res.stderr
        booted = json.loads(res.stdout)
        assert booted["state"] == "running" and Path(booted["api_sock"]).is_socket()
        listed = json.loads(fcr("vm", "ls", "--json").stdout)
        assert [r["name"] for r in listed] == ["cli1"] and listed[0]["api_live"]

        deadline = time.monotonic() + 30
        while "PROBE READY" not in fcr("vm", "console", "cli1").stdout:
            assert time.monotonic() < deadline, "probe never became ready"
            time.sleep(0.1)
        assert fcr("vm", "console", "cli1", "--send", "t").returncode == 0
        while "PROBE RESULT round=1 kind=trace" not in fcr("vm", "console", "cli1").stdout:
            assert time.monotonic() < deadline, "no result line"
            time.sleep(0.1)
        assert "errors=0" in fcr("vm", "console", "cli1").stdout

        res = fcr("vm", "snapshot", "cli1", str(tmp_path / "full"), "--punch-holes", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["mem"]["holes_punched"] is True
        assert fcr("vm", "resume", "cli1").returncode == 0
        assert fcr("vm", "pause", "cli1").returncode == 0
        assert fcr("vm", "snapshot", "cli1", str(tmp_path / "diff"), "--diff").returncode == 0
        assert fcr("vm", "snapshot", "cli1", str(tmp_path / "diff")).returncode == 1  # not empty

        res = fcr("vm", "restore", str(tmp_path / "diff"), "--name", "cli2", "--firecracker", fc, "--json")
        assert res.returncode == 0, res.stderr
        assert fcr("vm", "console", "cli2", "--send", "a").returncode == 0
        while "kind=verify" not in fcr("vm", "console", "cli2").stdout:
            assert time.monotonic() < deadline, "no verify line after restore"
            time.sleep(0.1)
        assert "errors=0" in fcr("vm", "console", "cli2").stdout
        assert fcr("vm", "logs", "cli2").returncode == 0
        res = fcr("vm", "request", "cli2", "--timeout", "1")  # the probe has no vsock driver
        assert res.returncode == 1 and "vsock port 8080" in res.stderr
    finally:
        killed = fcr("vm", "kill", "--all")
    assert killed.returncode == 0, killed.stderr
    recs = json.loads(fcr("vm", "ls", "--all", "--json").stdout)
    assert {r["name"]: r["state"] for r in recs} == {"cli1": "dead", "cli2": "dead"}
    for r in recs:
        assert not Path(f"/proc/{r['pid']}/cmdline").exists() or b"firecracker" not in Path(
            f"/proc/{r['pid']}/cmdline").read_bytes()
    assert not list(Path(os.environ["FIRECRACER_STATE"]).glob("vms/*/*.sock"))
    # a dead VM is named as dead, not reported as a missing vsock socket (the lab's crashed-JVM case)
    for argv in (("vm", "request", "cli2", "--timeout", "1"), ("collect", "cli2", "-o", str(tmp_path / "c"))):
        res = fcr(*argv)
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("firecracer: error: cli2: the VM is not running ("), res.stderr


@pytest.mark.firecracker
def test_sigterm_mid_selftest_leaves_nothing_running(firecracker_bin: Path) -> None:
    """SIGTERM while a VM is up: the command unwinds and kills Firecracker (not left orphaned)."""
    import signal

    if not can_boot(firecracker_bin):
        pytest.skip(BRAND_OLD_FC)
    state = Path(os.environ["FIRECRACER_STATE"])
    proc = subprocess.Popen([sys.executable, "-m", "firecracer", "selftest", "--firecracker",
                             str(firecracker_bin)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not pids and time.monotonic() < deadline and proc.poll() is None:
            for rec in state.glob("vms/*/vm.json"):
                try:
                    data = json.loads(rec.read_text())
                except ValueError:
                    continue
                if data.get("pid") and data.get("state") == "running":
                    pids.add(int(data["pid"]))
            time.sleep(0.01)
        assert pids, "selftest never had a running VM"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or b"firecracker" not in cmdline.read_bytes(), f"pid {pid} still runs"
    assert not [p for p in state.glob("vms/*/*") if p.is_socket() or p.is_fifo()]


@pytest.mark.firecracker
def test_vm_commands_with_2mib_pages(firecracker_bin: Path, tmp_path: Path) -> None:
    """``vm boot --huge-pages 2M`` → snapshot → File restore refused in one line → ``restore --uffd`` works;
    a guest larger than the free pool is refused before Firecracker starts."""
    from firecracer.hugepages import HugePagesError, Reservation, pool

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("Uffd restores need Firecracker >= 1.8 on this kernel")
    fc = str(firecracker_bin)
    # too big for the pool: one line, nothing started
    too_big = max(128, 2 * (pool().available + 1))
    res = fcr("vm", "boot", "--probe", "--name", "hp0", "--firecracker", fc, "--huge-pages", "2M", "--mem",
              str(too_big))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "free 2 MiB huge pages" in res.stderr and "nr_hugepages" in res.stderr
    assert json.loads(fcr("vm", "ls", "--json").stdout) == []
    try:
        reservation = Reservation(64 + 16)
    except HugePagesError as exc:
        pytest.skip(f"2 MiB huge pages cannot be reserved here: {exc}")
    try:
        res = fcr("vm", "boot", "--probe", "--name", "hp1", "--firecracker", fc, "--huge-pages", "2M")
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 30
        while "PROBE READY" not in fcr("vm", "console", "hp1").stdout:
            assert time.monotonic() < deadline, "probe never became ready"
            time.sleep(0.1)
        res = fcr("vm", "snapshot", "hp1", str(tmp_path / "snap"), "--punch-holes")
        assert res.returncode == 0, res.stderr
        assert "2 MiB pages: restore with --uffd" in " ".join(res.stdout.split())
        assert fcr("vm", "kill", "hp1").returncode == 0  # frees its huge pages for the restore
        res = fcr("vm", "restore", str(tmp_path / "snap"), "--name", "hp2", "--firecracker", fc)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "only through the Uffd backend (--uffd)" in res.stderr
        res = fcr("vm", "restore", str(tmp_path / "snap"), "--name", "hp3", "--firecracker", fc, "--uffd",
                  "--strategy", "eager", "--trace", str(tmp_path / "t.npz"))
        assert res.returncode == 0, res.stderr
        assert fcr("vm", "console", "hp3", "--send", "a").returncode == 0
        while "kind=verify" not in fcr("vm", "console", "hp3").stdout:
            assert time.monotonic() < deadline + 30, "no verify line after restore"
            time.sleep(0.1)
        assert "errors=0" in fcr("vm", "console", "hp3").stdout
    finally:
        killed = fcr("vm", "kill", "--all")
        reservation.close()
    assert killed.returncode == 0, killed.stderr
    info = json.loads(fcr("uffd", "info", str(tmp_path / "t.npz"), "--json").stdout)
    assert info["page_size"] == 2 << 20 and info["actions"]["eager"] == 64
