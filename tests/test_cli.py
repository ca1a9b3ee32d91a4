"""The CLI skeleton: every pipeline group exists, unimplemented commands say so and fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GROUPS = ["doctor", "image", "vm", "uffd", "collect", "analyze", "view", "experiment"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_help_lists_every_group() -> None:
    out = run("--help")
    assert out.returncode == 0
    for group in GROUPS:
        assert f"  {group}" in out.stdout, group


def test_unknown_command_fails() -> None:
    out = run("no-such-command")
    assert out.returncode == 2
    assert "No such command" in out.stderr


def test_doctor_json_has_the_documented_keys() -> None:
    out = run("doctor", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("kvm", "pvm_nested", "userfaultfd", "firecracker", "net_admin", "qemu", "java"):
        assert isinstance(data[key]["ok"], bool), key
        assert isinstance(data[key]["detail"], str) and data[key]["detail"], key


def test_doctor_need_reports_missing_firecracker(tmp_path: pytest.TempPathFactory) -> None:
    """With no binary anywhere, --need vm exits 1 and names the missing piece."""
    env_run = subprocess.run(
        [sys.executable, "-m", "firecracer", "doctor", "--need", "vm", "--json",
         "--firecracker", "/nonexistent/firecracker"],
        capture_output=True, text=True, timeout=120, check=False)
    assert env_run.returncode == 1
    data = json.loads(env_run.stdout)
    assert data["need"]["ok"] is False
    assert "firecracker" in data["need"]["missing"]
    assert "/nonexistent/firecracker" in data["firecracker"]["detail"]
