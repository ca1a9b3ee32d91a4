"""``firecracer image check`` on the built image under QEMU TCG: the real boot, no KVM needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firecracer.image.apps import BUNDLED
from firecracer.image.check import app_of, kernel_cmdline, qemu_argv, run_check


def test_qemu_command_line_is_microvm_tcg_restricted(tmp_path: Path) -> None:
    argv = qemu_argv("qemu", tmp_path / "vmlinux", tmp_path / "r.ext4", 4000, 4001, 8080)
    joined = " ".join(argv)
    assert "-accel tcg,thread=single -M microvm,acpi=off" in joined and "restrict=on" in joined
    assert "hostfwd=tcp:127.0.0.1:4000-:5252" in joined and "hostfwd=tcp:127.0.0.1:4001-:8080" in joined
    assert "readonly=on" in joined
    cmdline = kernel_cmdline()
    assert "init=/sbin/firecracer-init" in cmdline and " ro " in cmdline
    assert 'FC_JAVA_OPTIONS="-Dfirecracer.check=\'boot check\' -Xss1m"' in cmdline


@pytest.mark.qemu
@pytest.mark.timeout(900)
def test_image_check_passes(built_kernel: Path, built_rootfs: Path, qemu_bin: str, tmp_path: Path) -> None:
    """Boots the cached image: init, overlay size, agent ping, HTTP 200, NMT detail, quoted options."""
    res = run_check(built_kernel, built_rootfs, timeout=600, console_log=tmp_path / "console.log")
    detail = "; ".join(f"{c.name}: {c.detail}" for c in res.checks if not c.ok)
    assert res.ok, detail
    pages = ["json", "html"] if app_of(built_rootfs)[0] in BUNDLED else []  # images of older builds: none
    assert [c.name for c in res.checks] == ["init", "agent", "overlay", "http", *pages, "nmt", "java-options"]
    assert res.times["guest_boot_to_first_200_ms"] is not None
    log = (tmp_path / "console.log").read_text(errors="replace")
    assert "firecracer-init: jvm started" in log and "Linux version 6.1" in log


@pytest.mark.qemu
@pytest.mark.timeout(900)
def test_image_check_cli_json(built_kernel: Path, built_rootfs: Path, qemu_bin: str, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "firecracer", "image", "check", "--json", "--kernel",
                          str(built_kernel), "--rootfs", str(built_rootfs), "--console-log",
                          str(tmp_path / "c.log")], capture_output=True, text=True, timeout=800)
    data = json.loads(res.stdout)
    assert res.returncode == 0 and data["ok"] is True, res.stdout + res.stderr
    assert {"wall_total_ms", "wall_to_first_200_ms", "guest_boot_to_first_200_ms"} <= set(data["times"])


def test_check_without_image_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "firecracer", "image", "check"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no kernel built yet" in lines[0], res.stderr


def test_qemu_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """SIGKILL of the parent (no finally runs): the emulator, in its own session, must not stay behind.
    A shell script stands in for QEMU here; what is tested is the process relationship."""
    pidfile = tmp_path / "qemu.pid"
    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    fake.chmod(0o755)
    code = ("import time; from pathlib import Path; from firecracer.image.check import qemu_guest\n"
            f"with qemu_guest(Path('vmlinux'), Path('rootfs.ext4'), Path({str(tmp_path / 'c.log')!r}), "
            f"qemu={str(fake)!r}):\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        assert Path(f"/proc/{pid}").exists()
    finally:
        parent.kill()
        parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not Path(f"/proc/{pid}").exists()
    if not gone:
        os.kill(pid, signal.SIGKILL)
    assert gone, "the emulator outlived the process that started it"


def test_a_jvm_crash_on_the_console_is_recognised() -> None:
    """What decides image check's one retry: the JVM's fatal-error lines, as recorded under TCG."""
    from firecracer.image.check import _jvm_crash

    fixtures = Path(__file__).parents[1] / "fixtures" / "serial"
    assert _jvm_crash(fixtures / "jvm-crash.log") == "SIGSEGV (0xb) at pc=0x00007fdde1826c80, pid=38, tid=39"
    assert _jvm_crash(fixtures / "rcu-stall.log") is None
    assert _jvm_crash(fixtures / "absent.log") is None
