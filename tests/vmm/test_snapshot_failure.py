"""A snapshot that fails or is interrupted leaves the VM as it found it (issue 25).

Before: ``vm snapshot NAME DEST`` onto a file system that fills up reported Firecracker's error, but the
VM it had paused for the snapshot stayed paused (the guest stopped serving and nothing said so); the
same after Ctrl-C or SIGTERM. Real Firecracker, the probe guest, a real tmpfs that fills up, real
signals to a real ``firecracer vm snapshot``; the VM's state is asked from Firecracker (``GET /``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli import fcr, one_line_error
from tests.vmm.hostcaps import can_boot

from firecracer.errors import FirecrackerError
from firecracer.vmm.machine import BRAND_OLD_FC, MicroVM
from firecracer.vmm.probe import build_probe
from firecracer.vmm.probe.run import boot_probe

pytestmark = pytest.mark.firecracker

FILL = range(4096, 4096 + 64)
TRACE = list(range(4096, 4096 + 16))




def fc_state(name: str) -> str:
    """What Firecracker itself says (``GET /``), not what our record says."""
    info = MicroVM.attach(name).api.get("/")
    assert isinstance(info, dict)
    return str(info["state"])


@pytest.fixture
def fc(firecracker_bin: Path) -> Path:
    if not can_boot(firecracker_bin):
        pytest.skip(BRAND_OLD_FC)
    return firecracker_bin


@pytest.fixture(scope="module")
def elf() -> Path:
    return build_probe(TRACE, FILL)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs: a 128 MiB guest's memory file cannot fit (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_snapshot_onto_a_full_file_system_resumes_the_vm(fc: Path, small_fs: Path) -> None:
    res = fcr("vm", "boot", "--probe", "--name", "full1", "--firecracker", str(fc))
    assert res.returncode == 0, res.stderr
    try:
        assert fc_state("full1") == "Running"
        line = one_line_error(fcr("vm", "snapshot", "full1", str(small_fs / "snap")))
        assert "No space left on device" in line, line  # Firecracker's own error, relayed
        assert fc_state("full1") == "Running", line
        assert line.endswith("; the VM full1 is running again (resumed after the failed snapshot)"), line
        listed = json.loads(fcr("vm", "ls", "--json").stdout)
        assert [(r["name"], r["state"]) for r in listed] == [("full1", "running")]
        assert list(small_fs.iterdir()) == []  # neither the snapshot nor its partial directory
    finally:
        fcr("vm", "kill", "full1")


def test_a_vm_paused_before_the_snapshot_stays_paused(fc: Path, elf: Path, small_fs: Path) -> None:
    """The user paused it: a failed snapshot must not resume it behind their back, and says so."""
    with boot_probe(elf, fc, name="full2") as vm:
        vm.pause()
        with pytest.raises(FirecrackerError) as exc:
            vm.snapshot(small_fs / "snap")
        msg = str(exc.value)
        assert "No space left on device" in msg
        assert msg.endswith("; the VM full2 is paused (as it was before the snapshot)"), msg
        assert exc.value.method == "PUT" and exc.value.path == "/snapshot/create"  # still the typed error
        assert vm.api.get("/")["state"] == "Paused"
        vm.resume()
        # a snapshot that succeeds without resume=True still leaves it paused, as documented
        vm.snapshot(small_fs.parent / "ok")
        assert vm.api.get("/")["state"] == "Paused"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_interrupted_snapshot_resumes_the_vm(fc: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """The signal lands while Firecracker writes a 1 GiB memory file (the partial ``mem`` exists, no
    answer yet): the command resumes the VM once Firecracker is done, removes the partial snapshot and
    says what state the VM is in."""
    name = f"int-{sig.name.lower()}"
    res = fcr("vm", "boot", "--probe", "--name", name, "--mem", "1024", "--firecracker", str(fc))
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "snap"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "firecracer", "vm", "snapshot", name, str(dest)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob(".snap.partial-*/mem")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "Firecracker never started writing the memory file"
                time.sleep(0.0005)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert fc_state(name) == "Running", err
        word = "terminated" if sig == signal.SIGTERM else "interrupted"
        assert f"firecracer: {word}; the VM {name} is running again (resumed after the failed snapshot)" \
            in err, err
        assert json.loads(fcr("vm", "ls", "--json").stdout)[0]["state"] == "running"
        assert not dest.exists() and not list(tmp_path.glob(".snap.partial-*"))
    finally:
        fcr("vm", "kill", name)
