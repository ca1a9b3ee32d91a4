"""One Firecracker process: spawned in its own session, its files in a run directory, killed for sure.

Run directory layout (also what ``firecracer vm ls`` reads)::

    api.sock          API socket (--api-sock)
    serial.log        guest serial output (Firecracker's stdout)
    serial.in         FIFO that is Firecracker's stdin: bytes written here reach the guest UART
    firecracker.log   Firecracker's own log (--log-path)
    firecracker.err   Firecracker's stderr
    metrics.json      metrics, one JSON object per flush (--metrics-path)
    v.sock            vsock host socket (relative to the run dir, so restored clones each get one)
    vm.json           what runs here (written by MicroVM)

The API socket, FIFO and vsock sockets are removed when the process is killed or found dead.
Firecracker runs in the run directory with the run directory's mark in its environment, and (with
``lifeline``) dies with the process that started it (:mod:`firecracer.vmm.lifeline`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firecracer.errors import FirecrackerError
from firecracer.fcversion import Version, firecracker_version
from firecracer.paths import open_private, private_dir
from firecracer.vmm.api import ApiClient, connect_unix
from firecracer.vmm.lifeline import is_zombie, spawn

_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def socket_in_use(path: Path) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    if not path.exists():
        return False
    try:
        connect_unix(path, timeout=1.0).close()
    except OSError:
        return False
    return True


def last_error_line(*files: Path) -> str | None:
    """The most telling line of Firecracker's log/stderr: the last ERROR line, else the last line."""
    best: str | None = None
    for f in files:
        try:
            lines = [ln.strip() for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        errors = [ln for ln in lines if "ERROR" in ln or "rror" in ln]
        if errors:
            best = errors[-1]
        elif lines and best is None:
            best = lines[-1]
    if best is not None:
        best = re.sub(r"^\S+ \[[^\]]*\] ", "", best)  # drop "timestamp [id:thread:LEVEL:origin] "
    return best


class FirecrackerProcess:
    """Spawn and own one Firecracker process.

    :param binary: the Firecracker executable.
    :param run_dir: created if missing; must not hold a live API socket.
    :param vm_id: ``--id`` (letters, digits, dashes).
    :param netns: run inside this network namespace (``ip netns exec``).
    :param lifeline: the kernel kills Firecracker when this process dies (off for VMs meant to outlive
        the command that starts them; a supervisor watches those).
    """

    def __init__(self, binary: Path, run_dir: Path, vm_id: str, *, netns: str | None = None,
                 log_level: str = "Warning", lifeline: bool = True) -> None:
        if not _ID_RE.match(vm_id):
            raise FirecrackerError(f"VM id {vm_id!r}: use 1-64 letters, digits or dashes")
        self.binary = Path(binary)
        self.run_dir = Path(run_dir)
        self.vm_id = vm_id
        self.netns = netns
        self.log_level = log_level
        self.lifeline = lifeline
        self.version: Version = firecracker_version(self.binary)
        self.proc: subprocess.Popen[bytes] | None = None
        self._attached_pid: int | None = None  # a Firecracker started by another process
        self._gone_pid: int | None = None  # attached, but that process had exited already
        self._stdin_fd: int | None = None
        self.api = ApiClient(self.api_sock, describe_death=self.describe_death)
        self.api._version = self.version  # known from --version; GET /version would agree

    # -- paths -------------------------------------------------------------------------------
    @property
    def api_sock(self) -> Path:
        return self.run_dir / "api.sock"

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial.log"

    @property
    def serial_in(self) -> Path:
        return self.run_dir / "serial.in"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "firecracker.log"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / "firecracker.err"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"

    def latest_metrics(self) -> dict[str, Any]:
        """The newest metrics object Firecracker wrote (one JSON line per flush), or {} if none."""
        try:
            lines = self.metrics_path.read_text().strip().splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
        return {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else self._attached_pid

    @classmethod
    def attach(cls, binary: Path, run_dir: Path, vm_id: str, pid: int) -> FirecrackerProcess:
        """Take over a Firecracker another process started (``firecracer vm boot``) by its pid."""
        fp = cls(binary, run_dir, vm_id)
        fp._attached_pid = pid
        return fp

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Spawn Firecracker and wait until its API answers.

        :raises FirecrackerError: the socket is in use, Firecracker exited, or the API never came up.
        """
        private_dir(self.run_dir)
        if socket_in_use(self.api_sock):
            raise FirecrackerError(f"{self.api_sock}: socket path in use by another process; "
                                   "pick another VM name or kill that VM first")
        for stale in (self.api_sock, self.serial_in):
            stale.unlink(missing_ok=True)
        for f in (self.log_path, self.metrics_path):  # created here (0600): Firecracker only opens them
            os.close(open_private(f, os.O_WRONLY | os.O_TRUNC))
        os.mkfifo(self.serial_in, 0o600)
        # O_RDWR: Firecracker never sees EOF on its stdin, and opening does not block.
        self._stdin_fd = os.open(self.serial_in, os.O_RDWR | os.O_CLOEXEC)
        # relative to its cwd (the run dir) when the absolute path would not fit sun_path
        sock_arg = str(self.api_sock) if len(os.fsencode(str(self.api_sock))) <= 107 else self.api_sock.name
        cmd = [str(self.binary), "--api-sock", sock_arg, "--id", self.vm_id,
               "--log-path", str(self.log_path), "--level", self.log_level if self.version.at_least(1, 7)
               else {"Trace": "Debug", "Off": "Error"}.get(self.log_level, self.log_level),
               "--metrics-path", str(self.metrics_path)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with deferred_signals() as deferred:
            with open(open_private(self.serial_log), "ab") as out, \
                    open(open_private(self.stderr_path), "ab") as err:
                try:
                    self.proc = spawn(cmd, lifeline=self.lifeline, run_dir=self.run_dir, stdin=self._stdin_fd,
                                      stdout=out, stderr=err)
                except OSError as exc:
                    self._cleanup_files()
                    raise FirecrackerError(f"{self.binary}: cannot start Firecracker: {exc}") from exc
            try:
                deferred.deliver()  # a Ctrl-C that came while Popen ran lands here, where kill() follows
                self.api.wait_ready(timeout, alive=self.alive)
            except BaseException:
                self.kill()
                raise

    def alive(self) -> bool:
        if self._attached_pid is not None:
            return pid_is_firecracker(self._attached_pid)
        return self.proc is not None and self.proc.poll() is None

    def describe_death(self) -> str | None:
        """Why the process is gone ("exited with status 1: <log line>"), or None if it runs."""
        if self._attached_pid is not None:
            if self.alive():
                return None
            line = last_error_line(self.log_path, self.stderr_path)
            return f"Firecracker (pid {self._attached_pid}) is gone" + (f": {line}" if line else "")
        if self.proc is None:
            if self._gone_pid is not None:
                line = last_error_line(self.log_path, self.stderr_path)
                return f"Firecracker (pid {self._gone_pid}) is gone" + (f": {line}" if line else "")
            return "Firecracker was never started"
        # give a dying process a moment, so a reset connection is explained by its exit
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=0.2)
        rc = self.proc.poll()
        if rc is None:
            return None
        if rc == 0:  # Firecracker ends well only when the guest resets the VM; its log's warnings are older
            return f"Firecracker (pid {self.proc.pid}) exited with status 0 (the guest reset the VM)"
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        line = last_error_line(self.log_path, self.stderr_path)
        return f"Firecracker (pid {self.proc.pid}) {how}" + (f": {line}" if line else "")

    def send_serial(self, data: bytes) -> None:
        """Write bytes to the guest's serial port (Firecracker's stdin)."""
        if self._stdin_fd is not None:
            os.write(self._stdin_fd, data)
            return
        try:  # attached: Firecracker holds the FIFO open, so a non-blocking writer never waits
            fd = os.open(self.serial_in, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise FirecrackerError(f"{self.serial_in}: cannot open the serial input ({exc})") from exc
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to exit by itself; its exit status or None."""
        if self._attached_pid is not None:
            gone = wait_for_exit(self._attached_pid, timeout)
            if gone:
                self._cleanup_files()
            return 0 if gone else None
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._cleanup_files()
        return rc

    def kill(self, cleanup: bool = True) -> None:
        """SIGKILL the whole process group, reap it, remove sockets and the FIFO (unless ``cleanup`` is
        False: the run directory is another VM's now). Idempotent."""
        if self._attached_pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._attached_pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._attached_pid, signal.SIGKILL)
            wait_for_exit(self._attached_pid, 10)
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self._cleanup_files(unlink=cleanup)

    def _cleanup_files(self, unlink: bool = True) -> None:
        if self._stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._stdin_fd)
            self._stdin_fd = None
        if not unlink:
            return
        self.api_sock.unlink(missing_ok=True)
        self.serial_in.unlink(missing_ok=True)
        for sock in self.run_dir.glob("v.sock*"):
            sock.unlink(missing_ok=True)


def pid_is_firecracker(pid: int) -> bool:
    """True if ``pid`` runs and is a Firecracker (guards against pid reuse and zombies)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    state = stat.rsplit(b")", 1)[-1].split()[0:1]
    return state != [b"Z"] and b"firecracker" in cmdline


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Poll until a process we did not spawn (no waitpid) is gone; True if it went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if not pid_is_firecracker(pid) and is_zombie(pid):
            return True
        time.sleep(0.02)
    return False


class _Deferred:
    """Signals caught while a child is being spawned, re-raised once its ``Popen`` object exists."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Any]] = []
        self.saved: dict[int, Any] = {}

    def catch(self, signum: int, frame: Any) -> None:
        self.pending.append((signum, frame))

    def deliver(self) -> None:
        for signum, old in self.saved.items():
            signal.signal(signum, old)
        self.saved.clear()
        pending, self.pending = self.pending, []
        for signum, frame in pending:
            handler = signal.getsignal(signum)
            if callable(handler):  # default_int_handler raises KeyboardInterrupt
                handler(signum, frame)


@contextlib.contextmanager
def deferred_signals() -> Iterator[_Deferred]:
    """Hold SIGINT/SIGTERM handlers back while Popen runs.

    Python raises KeyboardInterrupt between bytecodes; one landing inside ``Popen`` (after the fork, while
    it waits for the exec) loses the child's pid and leaves Firecracker running. Python-level handlers are
    reset to the default in the child at exec, so this changes nothing for Firecracker itself.
    """
    d = _Deferred()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(signum)
            if callable(old):
                d.saved[signum] = old
                signal.signal(signum, d.catch)
    try:
        yield d
    finally:
        d.deliver()
