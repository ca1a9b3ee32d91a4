"""Start and supervise the uffd page server a Uffd-backed restore needs.

The server is ``python -m firecracer uffd serve SOCKET MEMFILE [--strategy S] [--trace OUT]
[--metrics OUT]`` (issue #4) or any command given explicitly. It must bind and listen on SOCKET;
Firecracker connects once during ``PUT /snapshot/load``. We wait until the socket is *listening*
(``/proc/net/unix``), because connecting to test it would be taken for Firecracker's hand-off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from firecracer.errors import FirecracerError
from firecracer.vmm.process import deferred_signals, last_error_line

_SO_ACCEPTCON = 0x00010000


def is_listening(path: Path) -> bool:
    """True if a Unix stream socket bound to ``path`` is in the listening state."""
    target = os.fsencode(os.path.abspath(path))
    try:
        with open("/proc/net/unix", "rb") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7] == target and int(parts[3], 16) & _SO_ACCEPTCON:
                    return True
    except (OSError, ValueError, StopIteration):
        return path.exists()
    return False


def default_command(socket_path: Path, mem_file: Path, *, strategy: str | None = None,
                    trace: Path | None = None, metrics: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "firecracer", "uffd", "serve", str(socket_path), str(mem_file)]
    if strategy:
        cmd += ["--strategy", strategy]
    if trace:
        cmd += ["--trace", str(trace)]
    if metrics:
        cmd += ["--metrics", str(metrics)]
    return cmd


class PageServer:
    """A page-server subprocess in its own process group, killed on :meth:`stop` or garbage paths.

    :param command: full argv; it must listen on ``socket_path``.
    :param log: file receiving its stdout and stderr.
    """

    def __init__(self, command: Sequence[str], socket_path: Path, log: Path) -> None:
        self.command = list(command)
        self.socket_path = Path(socket_path)
        self.log = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None
        self._attached_pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else self._attached_pid

    @classmethod
    def attach(cls, pid: int, socket_path: Path, log: Path) -> PageServer:
        """Take over a page server another process started, by pid (for ``firecracer vm kill``)."""
        ps = cls([], socket_path, log)
        ps._attached_pid = pid
        return ps

    def start(self, timeout: float = 120.0) -> None:
        """Spawn it and wait until it listens; on failure it is killed and the error names its log.

        The bound is generous because a cold Python start (numpy included) takes tens of seconds in
        the lab, where the interpreter's files come over 9p under TCG; a server that dies is reported
        at once anyway.
        """
        self.socket_path.unlink(missing_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with deferred_signals() as deferred:
            with open(self.log, "ab") as out:
                try:
                    self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=out, start_new_session=True, close_fds=True)
                except OSError as exc:
                    raise FirecracerError(f"cannot start the page server {self.command[0]}: {exc}") from exc
            try:
                deferred.deliver()  # a Ctrl-C that came while Popen ran lands here, where stop() follows
                self._wait_listening(timeout)
            except BaseException:
                self.stop()
                raise

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                line = last_error_line(self.log)
                detail = f": {line}" if line else f" (log: {self.log})"
                raise FirecracerError(f"page server exited with status {rc} before listening on "
                                      f"{self.socket_path}{detail}")
            if is_listening(self.socket_path):
                return
            time.sleep(0.01)
        raise FirecracerError(f"page server did not listen on {self.socket_path} within {timeout:g} s "
                              f"(log: {self.log})")

    def alive(self) -> bool:
        if self._attached_pid is not None:
            try:
                os.kill(self._attached_pid, 0)
            except ProcessLookupError:
                return False
            return True
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 15.0, natural: float = 0.0) -> int | None:
        """Wait ``natural`` s for it to exit by itself (it does once Firecracker is gone), then
        SIGTERM (it writes its trace and metrics), SIGKILL after ``grace`` s; reap; remove the
        socket. Returns the exit status."""
        rc: int | None = None
        if self._attached_pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._attached_pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._attached_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.proc is not None and natural > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=natural)
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=10)
            rc = self.proc.returncode
        self.socket_path.unlink(missing_ok=True)
        return rc
