"""`firecracer collect` argument handling: one source only, clear errors for unknown VMs/agents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "collect", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_exactly_one_source(tmp_path: Path) -> None:
    for args in ([], ["--local", "--agent", "tcp:127.0.0.1:1"], ["vm1", "--local"]):
        out = run(*args, "-o", str(tmp_path / "r"))
        assert out.returncode == 2 and "exactly one of VM, --agent ADDR or --local" in out.stderr


def test_unknown_vm_is_one_line(tmp_path: Path) -> None:
    out = run("no-such-vm", "-o", str(tmp_path / "r"))
    assert out.returncode == 1
    assert "no VM named 'no-such-vm'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


def test_unreachable_agent_is_one_line(tmp_path: Path) -> None:
    out = run("--agent", f"unix:{tmp_path}/none.sock", "--timeout", "1", "-o", str(tmp_path / "r"))
    assert out.returncode == 1
    assert out.stderr.strip().startswith("firecracer: error: unix:") and "Traceback" not in out.stderr
    out = run("--agent", "bogus", "-o", str(tmp_path / "r"))
    assert out.returncode == 1 and "bad agent address 'bogus'" in out.stderr
