"""``firecracer image check`` on the built image under QEMU TCG: the real boot, no KVM needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firecracer.image.check import kernel_cmdline, qemu_argv, run_check


def test_qemu_command_line_is_microvm_tcg_restricted(tmp_path: Path) -> None:
    argv = qemu_argv("qemu", tmp_path / "vmlinux", tmp_path / "r.ext4", 4000, 4001, 8080)
    joined = " ".join(argv)
    assert "microvm,accel=tcg" in joined and "restrict=on" in joined
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
    assert [c.name for c in res.checks] == ["init", "agent", "overlay", "http", "nmt", "java-options"]
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
