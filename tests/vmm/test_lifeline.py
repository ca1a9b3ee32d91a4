"""The lifeline (children die with their parent, also by SIGKILL) and the run-directory mark, with real
processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from firecracer.vmm.lifeline import processes_in, spawn


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _gone(pid):
        time.sleep(0.01)
    return _gone(pid)


def test_a_child_dies_with_its_parent_even_by_sigkill(tmp_path: Path) -> None:
    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from firecracer.vmm.lifeline import spawn\n"
            f"p = spawn(['sleep', '60'], lifeline=True, run_dir=Path({str(tmp_path)!r}))\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert not _gone(child)
        parent.kill()
        parent.wait()
        assert _wait_gone(child, 5), "the child outlived its SIGKILLed parent"
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_spawned_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG follows the parent *thread*: spawns from other threads go through a long-lived one."""
    got: list[subprocess.Popen[bytes]] = []
    t = threading.Thread(target=lambda: got.append(spawn(["sleep", "60"], lifeline=True, run_dir=tmp_path)))
    t.start()
    t.join()
    child = got[0]
    try:
        time.sleep(0.3)
        assert child.poll() is None, "the child died with the thread that asked for it"
    finally:
        child.kill()
        child.wait()


def test_processes_in_finds_children_by_their_mark_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    marked = spawn(["sleep", "60"], lifeline=True, run_dir=run_dir)
    bystander = subprocess.Popen(["sleep", "60"], cwd=run_dir)  # a shell that merely cd-ed there
    try:
        assert processes_in(run_dir) == [marked.pid]
    finally:
        for p in (marked, bystander):
            p.kill()
            p.wait()
    assert processes_in(run_dir) == []


@pytest.mark.root
def test_cleanup_keeps_a_network_namespace_something_runs_in(tmp_path: Path) -> None:
    """A dead VM's record naming a namespace in use (a copied or hand-edited record) must not make
    cleanup (vm kill/prune) delete it; an unused one is deleted."""
    import json
    import shutil

    from firecracer.vmm.supervisor import cleanup_run_dir

    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (ip netns)")
    name = f"fcr-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    user = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
    try:
        (tmp_path / "vm.json").write_text(json.dumps({"name": "x", "state": "dead", "netns": name}))
        deadline = time.monotonic() + 10
        pids = ["ip", "netns", "pids", name]
        while not subprocess.run(pids, capture_output=True, text=True, check=False).stdout.strip():
            assert time.monotonic() < deadline, "sleep never entered the namespace"
            time.sleep(0.05)
        cleanup_run_dir(tmp_path)
        assert Path("/run/netns", name).exists()
        user.kill()
        user.wait()
        cleanup_run_dir(tmp_path)
        assert not Path("/run/netns", name).exists()
    finally:
        user.kill()
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
