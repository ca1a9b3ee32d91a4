"""Children that die with their parent, and finding every process that belongs to a run directory.

Two rules make sure nothing the tool starts runs on unnoticed:

* **Lifeline.** A child spawned with ``lifeline=True`` gets ``PR_SET_PDEATHSIG(SIGKILL)``: the kernel
  kills it when its parent dies, even by ``SIGKILL``. The signal fires on the death of the parent
  *thread* (the one that forked), so spawns from any thread but the main one go through one long-lived
  spawner thread that lives as long as the process. After setting it, the child checks that its parent
  is still the one that forked it (the parent may have died in between) and exits if not.
* **Findable.** Every process started for a VM (Firecracker, the page server, the supervisor) runs in
  the VM's run directory with ``FIRECRACER_RUN_DIR=<run dir>`` in its environment, so
  :func:`processes_in` finds them from ``/proc`` alone, even when the process that started them died
  before recording their pids (and never mistakes a shell that merely ``cd``-ed there for one).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def set_pdeathsig(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` for the calling thread's process (0 clears it)."""
    if _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _die_with(parent: int) -> Callable[[], None]:
    def pre_exec() -> None:  # runs in the forked child before exec: no imports, no allocations to speak of
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: nobody would kill us later
            os._exit(137)
    return pre_exec


class _Spawner:
    """One daemon thread that forks on behalf of non-main threads (see module doc)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]],
                                           Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="firecracer-spawner", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, fut = self.jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

    def run(self, fn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        fut: Future[subprocess.Popen[bytes]] = Future()
        self.jobs.put((fn, fut))
        return fut.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


#: what a process started for a VM creates is its owner's only: Firecracker's sockets and any log it
#: creates in the run directory, its snapshot files (guest memory), the page server's socket and outputs
CHILD_UMASK = 0o077


def spawn(cmd: Sequence[str], *, lifeline: bool, run_dir: Path, stdin: Any = subprocess.DEVNULL,
          stdout: Any = None, stderr: Any = None, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """``Popen`` in a new session (its own process group, so a kill reaches its helpers too), with umask
    :data:`CHILD_UMASK` (files and sockets it creates are 0600/0700).

    :param run_dir: its working directory and the mark in its environment (see module doc).
    :param lifeline: the child is SIGKILLed by the kernel when this process dies (see module doc).
        Off for VMs that are meant to outlive the command (``vm boot``, ``vm restore``); those have a
        supervisor instead.
    :raises OSError: the executable could not be started.
    """
    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(cmd), stdin=stdin, stdout=stdout, stderr=stderr, cwd=run_dir,
                                env=child_env(run_dir),
                                start_new_session=True, close_fds=True, pass_fds=tuple(pass_fds),
                                umask=CHILD_UMASK,
                                preexec_fn=_die_with(os.getpid()) if lifeline else None)

    if not lifeline or threading.current_thread() is threading.main_thread():
        return popen()
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.run(popen)


# -- who belongs to a run directory ---------------------------------------------------------------------
ENV_MARK = "FIRECRACER_RUN_DIR"


def child_env(run_dir: Path) -> dict[str, str]:
    """This process's environment plus the mark :func:`processes_in` looks for, and the directory this
    firecracer package was imported from first on ``PYTHONPATH`` (children run in the run directory, so a
    relative ``PYTHONPATH`` would no longer find it, and ``python -m firecracer …`` children must run the
    same code as their parent)."""
    import firecracer

    root = str(Path(firecracer.__file__).resolve().parents[1])
    paths = [root] + [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, ENV_MARK: os.path.realpath(run_dir),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def processes_in(run_dir: Path) -> list[int]:
    """Pids (not zombies, not this process) started for ``run_dir``: its path in their environment's
    ``FIRECRACER_RUN_DIR`` (see module doc)."""
    return sorted(processes_by_run_dir().get(os.path.realpath(run_dir), []))


def processes_by_run_dir() -> dict[str, list[int]]:
    """Every process carrying a run-directory mark, grouped by that directory (one pass over /proc)."""
    key = f"{ENV_MARK}=".encode()
    me = os.getpid()
    out: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(key):
                if not is_zombie(int(entry.name)):
                    out.setdefault(os.fsdecode(var[len(key):]), []).append(int(entry.name))
                break
    return out


def alive(pid: int | None, started: int | None) -> bool:
    """True if ``pid`` runs and (when ``started`` is known) is the process that started then."""
    if not pid:
        return False
    st = start_time(pid)
    return st is not None and (started is None or st == started) and not is_zombie(pid)


def is_zombie(pid: int) -> bool:
    """True if ``pid`` is a zombie, or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0:1] == [b"Z"]
    except OSError:
        return True


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, an identity that survives
    pid reuse), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[-1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] if gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def kill_all(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    """Signal each pid's process group and the pid itself (each started in its own session)."""
    for pid in pids:
        for fn in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                fn(pid, sig)
