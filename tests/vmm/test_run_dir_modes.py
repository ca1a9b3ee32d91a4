"""Run directories are their owner's alone (issue 25).

Before: ``STATE/``, ``STATE/vms/`` and each ``vms/NAME/`` were 0755, and ``serial.log`` (the guest's
console, which can carry secrets), Firecracker's log and metrics and ``vm.json`` were 0644: every local
user could read them. Now directories are 0700 and what is in them 0600 (sockets 0700), also what
Firecracker and the page server create there themselves (they run with umask 077). Real ``vm boot``,
``vm snapshot`` and ``vm restore --uffd`` subprocesses, started with the common umask 022.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.vmm.hostcaps import can_boot, uffd_unsupported

from firecracer.vmm.machine import BRAND_OLD_FC, MicroVM

pytestmark = pytest.mark.firecracker


def fcr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual umask, so a file created without an explicit mode would be 0644 (the test can fail)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def fc(firecracker_bin: Path) -> Path:
    if not can_boot(firecracker_bin):
        pytest.skip(BRAND_OLD_FC)
    return firecracker_bin


def state() -> Path:
    return Path(os.environ["FIRECRACER_STATE"])


def open_to_others(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that its group or others may use, with its mode."""
    out = []
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode
        if mode & 0o077:
            out.append(f"{p.relative_to(root.parent)} {stat.filemode(mode)}")
    return out


def test_state_and_run_directories_are_the_owners_only(fc: Path, tmp_path: Path) -> None:
    assert not state().exists()
    res = fcr("vm", "boot", "--probe", "--name", "priv1", "--firecracker", str(fc))
    assert res.returncode == 0, res.stderr
    try:
        run = state() / "vms" / "priv1"
        assert {p.name for p in run.iterdir()} >= {"api.sock", "serial.log", "serial.in", "firecracker.log",
                                                   "firecracker.err", "metrics.json", "v.sock", "vm.json",
                                                   "supervisor.log"}
        # Firecracker can write into the files created for it 0600: its metrics, flushed on request (its
        # log at level Warning may stay empty, so it proves nothing)
        MicroVM.attach("priv1").flush_metrics()
        assert (run / "metrics.json").stat().st_size > 0
        assert open_to_others(state()) == []
        for d in (state(), state() / "vms", run):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        assert stat.S_IMODE((run / "serial.log").stat().st_mode) == 0o600

        snap = tmp_path / "snap"
        res = fcr("vm", "snapshot", "priv1", str(snap))
        assert res.returncode == 0, res.stderr
        # written by Firecracker (umask 077): guest memory and state are as private as the console
        for f in ("mem", "vmstate"):
            assert stat.S_IMODE((snap / f).stat().st_mode) == 0o600, f
        uffd = [] if uffd_unsupported(fc) else ["--uffd"]
        res = fcr("vm", "restore", str(snap), "--name", "priv2", *uffd)
        assert res.returncode == 0, res.stderr
        if uffd:
            assert (state() / "vms" / "priv2" / "uffd.sock").is_socket()  # bound by the page server
            assert (state() / "vms" / "priv2" / "uffd.log").is_file()
        assert open_to_others(state()) == []
    finally:
        fcr("vm", "kill", "--all")
    assert open_to_others(state()) == []  # the supervisor's last vm.json too


def test_run_directories_left_open_by_an_older_version_are_closed(fc: Path) -> None:
    run = state() / "vms" / "priv3"
    run.mkdir(parents=True)
    for d in (state(), state() / "vms", run):
        d.chmod(0o755)
    (run / "serial.log").write_text("an older console, with a secret\n")
    (run / "serial.log").chmod(0o644)
    res = fcr("vm", "boot", "--probe", "--name", "priv3", "--firecracker", str(fc))
    assert res.returncode == 0, res.stderr
    try:
        assert open_to_others(state()) == []
        assert (run / "serial.log").read_text().startswith("an older console")  # appended to, kept
    finally:
        fcr("vm", "kill", "priv3")
