"""The keeper of a VM that outlives the command that started it (``vm boot``, ``vm restore``).

``python -m firecracer.vmm.supervisor RUN_DIR`` is started (in the run directory, its own session) before
Firecracker, by the command that is about to boot or restore the VM (the *owner*). It reads one line on
stdin:

* ``detach FC_PID FC_START PS_PID PS_START`` (the page server's fields 0 when there is none): the owner
  hands the VM over. The supervisor answers ``ok`` if both still run (else ``dead REASON``), then
  watches both through pidfds. If the page server dies while Firecracker runs (Firecracker would hang
  on its next fault) it kills Firecracker; when Firecracker exits it stops the page server. Either way
  it removes the sockets and the network namespace and records ``state: dead`` with the reason in
  ``vm.json``, and exits. SIGTERM (``vm kill``) kills both the same way.
* end of file first: the owner ended without handing over (it failed, was interrupted or killed, even
  with SIGKILL). Whatever still runs for the run directory is killed and recorded as abandoned.

Standard library only (plus small firecracer modules): it stays small in memory for as long as the VM runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from firecracer.paths import open_private
from firecracer.vmm.lifeline import is_zombie, kill_all, processes_in, spawn, start_time
from firecracer.vmm.process import last_error_line
from firecracer.vmm.record import VmRecord, record_lock

_SOCKETS = ("api.sock", "serial.in", "uffd.sock")


def start_supervisor(run_dir: Path) -> subprocess.Popen[bytes]:
    """Start the keeper of a VM that will outlive the calling process (``MicroVM(lifeline=False)``)."""
    with open(open_private(run_dir / "supervisor.log"), "ab") as log:
        return spawn([sys.executable, "-m", "firecracer.vmm.supervisor", str(run_dir)], lifeline=False,
                     run_dir=run_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)


def release_supervisor(sup: subprocess.Popen[bytes]) -> None:
    """End the supervisor of a VM that was not handed over (it cleans up whatever still runs)."""
    for f in (sup.stdin, sup.stdout):
        with contextlib.suppress(OSError):
            if f is not None:
                f.close()
    try:
        sup.wait(timeout=15)
    except subprocess.TimeoutExpired:
        sup.kill()
        sup.wait(timeout=5)


def mark_dead(run_dir: Path, reason: str) -> None:
    """Record ``state: dead`` and why, keeping everything else in ``vm.json``."""
    with record_lock(run_dir):
        rec = VmRecord.find(run_dir) or VmRecord(name=run_dir.name)
        rec.state, rec.dead_reason = "dead", reason
        rec.updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with contextlib.suppress(OSError):
            rec.write(run_dir)


def cleanup_run_dir(run_dir: Path) -> None:
    """Remove the sockets and the FIFO, delete the VM's network namespace (logs stay)."""
    for name in _SOCKETS:
        (run_dir / name).unlink(missing_ok=True)
    for sock in run_dir.glob("v.sock*"):
        sock.unlink(missing_ok=True)
    rec = VmRecord.find(run_dir)
    netns = rec.netns if rec is not None else None
    if netns and Path("/run/netns", netns).exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            # a namespace something still runs in is not this dead VM's (a copied or edited record);
            # a Firecracker just killed may take a moment to leave it
            deadline = time.monotonic() + 2
            while True:
                used = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                                      timeout=10, check=False)
                if used.returncode != 0 or not used.stdout.strip() or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if used.returncode == 0 and not used.stdout.strip():
                subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=10,
                               check=False)


# -- the two phases -------------------------------------------------------------------------------------
def abandon(run_dir: Path, owner: str) -> None:
    """Kill everything still running for ``run_dir`` (twice, to catch a child forked just before)."""
    killed: list[int] = []
    for _ in range(2):
        pids = processes_in(run_dir)
        kill_all(pids)
        killed += pids
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while any(not is_zombie(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    if killed:
        cleanup_run_dir(run_dir)
        mark_dead(run_dir, f"abandoned: {owner} ended before handing the VM over; killed pids "
                           f"{', '.join(map(str, sorted(set(killed))))}")


def _pidfd(pid: int, started: int) -> int:
    if pid <= 0 or start_time(pid) != started:
        return -1
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def _gone(fd: int) -> bool:
    return fd < 0 or bool(select.select([fd], [], [], 0)[0])


def supervise(run_dir: Path, fc_fd: int, fc_pid: int, server_fd: int, server_pid: int) -> str:
    """Watch until Firecracker or the page server ends (or SIGTERM); returns why it ended."""
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    watch = [fd for fd in (fc_fd, server_fd, rfd) if fd >= 0]
    while True:
        ready, _, _ = select.select(watch, [], [])
        if rfd in ready:
            kill_all([fc_pid] + ([server_pid] if server_fd >= 0 else []))
            return "killed on request (SIGTERM to its supervisor)"
        if server_fd >= 0 and server_fd in ready and not _gone(fc_fd):
            kill_all([fc_pid])
            line = last_error_line(run_dir / "uffd.log")
            return (f"the page server (pid {server_pid}) died while the VM ran; Firecracker (pid {fc_pid}) "
                    f"was killed, as it would hang on its next fault"
                    + (f"; the page server's last log line: {line}" if line else ""))
        if fc_fd in ready:
            if server_fd >= 0 and not _gone(server_fd):
                kill_all([server_pid], signal.SIGTERM)  # it writes its trace and metrics, then exits
                deadline = time.monotonic() + 15
                while not _gone(server_fd) and time.monotonic() < deadline:
                    select.select([server_fd], [], [], 0.5)
                kill_all([server_pid])
            line = last_error_line(run_dir / "firecracker.log") or \
                last_error_line(run_dir / "firecracker.err")
            return f"Firecracker (pid {fc_pid}) exited" + (f": {line}" if line else "")
        if server_fd in ready:  # page server ended after Firecracker: nothing left to watch for it
            watch.remove(server_fd)
            server_fd = -1


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m firecracer.vmm.supervisor RUN_DIR\n")
        return 2
    run_dir = Path(argv[0]).resolve()
    owner = f"the command (pid {os.getppid()})"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the owner's terminal is the owner's to handle
    line = sys.stdin.readline().split()
    if len(line) != 5 or line[0] != "detach":
        abandon(run_dir, owner)
        return 0
    fc_pid, fc_start, server_pid, server_start = (int(x) for x in line[1:])
    fc_fd = _pidfd(fc_pid, fc_start)
    server_fd = _pidfd(server_pid, server_start) if server_pid else -1
    if _gone(fc_fd) or (server_pid and _gone(server_fd)):
        why = "Firecracker is gone" if _gone(fc_fd) else f"the page server (pid {server_pid}) is gone"
        kill_all([fc_pid, server_pid] if server_pid else [fc_pid])
        cleanup_run_dir(run_dir)
        mark_dead(run_dir, f"{why} at hand-over")
        with contextlib.suppress(OSError):
            sys.stdout.write(f"dead {why}\n")
            sys.stdout.flush()
        return 1
    with contextlib.suppress(OSError):
        sys.stdout.write("ok\n")
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
    reason = supervise(run_dir, fc_fd, fc_pid, server_fd, server_pid)
    for pid in processes_in(run_dir):  # helpers of either (e.g. 'ip netns exec' children)
        kill_all([pid])
    cleanup_run_dir(run_dir)
    mark_dead(run_dir, reason)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
