"""`firecracer collect` argument handling: one source only, clear errors for unknown VMs/agents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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


# -- a --pid that names no process (issue 25) ---------------------------------------------------------
def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    assert not Path(f"/proc/{p.pid}").exists()
    return p.pid


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_local_pid_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """Before: exit 0, a recording of the kernel, page cache and free pages, and the pid only in a note."""
    pid = gone_pid()
    assert one_line(run("--local", "--pid", str(pid), "-o", str(tmp_path / "r"))) == \
        f"firecracer: error: pid {pid}: no such process"
    assert not (tmp_path / "r").exists()  # refused before anything was written
    other = gone_pid()
    assert one_line(run("--local", "--pid", str(pid), "--pid", str(other), "-o", str(tmp_path / "r"))) == \
        f"firecracer: error: pids {pid}, {other}: no such process"


def test_a_missing_pid_among_several_is_a_note(tmp_path: Path) -> None:
    from .conftest import need_root

    need_root()
    pid = gone_pid()
    live = subprocess.Popen(["sleep", "60"])
    try:
        res = run("--local", "--pid", str(pid), "--pid", str(live.pid), "--sections", "processes", "--json",
                  "-o", str(tmp_path / "r"))
    finally:
        live.kill()
        live.wait()
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert f"pid {pid} skipped: no such process" in summary["problems"], summary
    assert not [p for p in summary["problems"] if f"smaps/{pid}" in p], summary  # one note per missing pid
    assert (tmp_path / "r" / "memmap.npz").is_file()


def test_agent_pid_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """``collect VM --pid N`` goes through the guest's agent (here on a Unix socket, the same client path)."""
    path = tmp_path / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "firecracer.guest.agent", "--listen", f"unix:{path}"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        pid = gone_pid()
        t0 = time.monotonic()
        line = one_line(run("--agent", f"unix:{path}", "--pid", str(pid), "-o", str(tmp_path / "r")))
        assert line == f"firecracer: error: pid {pid}: no such process in the guest", line
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / "r").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
