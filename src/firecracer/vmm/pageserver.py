"""Start and supervise the uffd page server a Uffd-backed restore needs.

The server is ``python -m firecracer uffd serve SOCKET MEMFILE [--strategy S] [--trace OUT]
[--metrics OUT]`` (issue #4) or any command given explicitly. It must bind and listen on SOCKET;
Firecracker connects once during ``PUT /snapshot/load``. We wait until the socket is *listening*
(``/proc/net/unix``), because connecting to test it would be taken for Firecracker's hand-off.

Its death is noticed through a pidfd (:meth:`PageServer.pidfd`) wherever the owner waits (API
requests, serial waits, experiment waits), and :meth:`PageServer.describe_death` names it with its
last log line.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from firecracer.errors import FirecracerError
from firecracer.paths import open_private
from firecracer.vmm.lifeline import spawn, start_time
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
                    trace: Path | None = None, metrics: Path | None = None,
                    mem_id: str | None = None, working_set: bool = True) -> list[str]:
    """``firecracer uffd serve`` argv. ``working_set=False`` skips the working-set file beside the trace
    (page contents in first-fault order, as large as the working set): only a prefetch recording needs it."""
    cmd = [sys.executable, "-m", "firecracer", "uffd", "serve", str(socket_path), str(mem_file)]
    if mem_id:
        cmd += ["--mem-id", mem_id]
    if not working_set:
        cmd.append("--no-working-set")
    if strategy:
        cmd += ["--strategy", strategy]
    if trace:
        cmd += ["--trace", str(trace)]
    if metrics:
        cmd += ["--metrics", str(metrics)]
    return cmd


def restore_command(page_server: Sequence[str] | None, socket_path: Path, mem_file: Path, *, mem_id: str,
                    strategy: str | None = None, trace: Path | None = None, metrics: Path | None = None,
                    working_set: bool = True) -> list[str]:
    """The page server a restore starts: ``page_server`` with ``{socket}``, ``{mem}`` and ``{mem_id}``
    replaced, else :func:`default_command`."""
    if page_server:
        return [a.replace("{socket}", str(socket_path)).replace("{mem}", str(mem_file))
                .replace("{mem_id}", mem_id) for a in page_server]
    return default_command(socket_path, mem_file, strategy=strategy, trace=trace, metrics=metrics,
                           mem_id=mem_id or None, working_set=working_set)


class PageServer:
    """A page-server subprocess in its own process group, killed on :meth:`stop` or garbage paths.

    :param command: full argv; it must listen on ``socket_path``.
    :param log: file receiving its stdout and stderr; its directory is the server's working directory
        (the VM's run directory, see :mod:`firecracer.vmm.lifeline`).
    :param lifeline: the kernel kills the server when this process dies.
    """

    def __init__(self, command: Sequence[str], socket_path: Path, log: Path, *,
                 lifeline: bool = True) -> None:
        self.command = list(command)
        self.socket_path = Path(socket_path)
        self.log = Path(log)
        self.lifeline = lifeline
        self.proc: subprocess.Popen[bytes] | None = None
        self._attached_pid: int | None = None
        self._gone_pid: int | None = None  # attached to a server that had exited already
        self._pidfd = -1
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else self._attached_pid

    @classmethod
    def attach(cls, pid: int, socket_path: Path, log: Path, started: int | None = None) -> PageServer:
        """Take over a page server another process started, by pid (``vm pause``, ``vm kill`` …).

        ``started`` is its recorded start time (:func:`~firecracer.vmm.lifeline.start_time`): a
        different process that reuses the pid is then never taken for it.
        """
        server = cls([], socket_path, log)
        server._attached_pid = pid
        if started is not None and start_time(pid) != started:
            server._attached_pid = None  # gone; its pid belongs to someone else now
            server._gone_pid = pid
        return server

    def pidfd(self) -> int:
        """A pidfd of the server (readable once it exited), or -1 if it is gone already or was stopped
        (its pid may belong to another process by now)."""
        if self._stopped:
            return -1
        if self._pidfd < 0 and self.pid is not None and (self.proc is None or self.proc.returncode is None):
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:
                return -1
        return self._pidfd

    def last_words(self) -> str | None:
        """The server's last log line, as a clause of an error (None if its log is empty)."""
        line = last_error_line(self.log)
        return f"the page server's last log line: {line}" if line else None

    def describe_death(self, when: str = "") -> str | None:
        """None while it runs, else "the page server (pid N, CMD) killed by SIGKILL WHEN; its last log
        line: …" (the server's own last error line, which usually says why)."""
        if self.alive():
            return None
        pid = self.pid or self._gone_pid
        if self.proc is not None and self.proc.returncode is not None:
            rc = self.proc.returncode
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        else:
            how = "died"
        what = os.path.basename(self.command[0]) if self.command else "firecracer uffd serve"
        if "firecracer" in " ".join(self.command[:3]):
            what = "firecracer uffd serve"
        elif what.startswith("python") and len(self.command) > 1 and not self.command[1].startswith("-"):
            what = os.path.basename(self.command[1])
        line = last_error_line(self.log)
        tail = f"; its last log line: {line}" if line else f"; its log {self.log} is empty"
        return f"the page server (pid {pid}, {what}) {how}{' ' + when if when else ''}{tail}"

    def close_pidfd(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1

    def start(self, timeout: float = 120.0) -> None:
        """Spawn it and wait until it listens; on failure it is killed and the error names its log.

        The bound is generous because a cold Python start (numpy included) takes tens of seconds in
        the lab, where the interpreter's files come over 9p under TCG; a server that dies is reported
        at once anyway.
        """
        self.socket_path.unlink(missing_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with deferred_signals() as deferred:
            with open(open_private(self.log), "ab") as out:
                try:
                    self.proc = spawn(self.command, lifeline=self.lifeline, run_dir=self.log.parent,
                                      stdout=out, stderr=out)
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
            fd = self.pidfd()
            if fd >= 0:
                import select

                return not select.select([fd], [], [], 0)[0]
            return False
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 15.0, natural: float = 0.0, cleanup: bool = True) -> int | None:
        """Wait ``natural`` s for it to exit by itself (it does once Firecracker is gone), then
        SIGTERM (it writes its trace and metrics), SIGKILL after ``grace`` s; reap; remove the
        socket (unless ``cleanup`` is False: another VM's now). Returns the exit status."""
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
        self.close_pidfd()
        self._stopped = True
        if cleanup:
            self.socket_path.unlink(missing_ok=True)
        return rc

    @contextlib.contextmanager
    def kills_on_death(self, pid: int, name: str) -> Iterator[threading.Event]:
        """Within the block, this server's death SIGKILLs process ``pid`` (its Firecracker, which would
        hang on its next fault) at once; the event yielded says whether that happened. Without a pidfd
        (the server is gone already, or not started) nothing is watched."""
        fired = threading.Event()
        fd = self.pidfd()
        if fd < 0:
            yield fired
            return
        stop = os.eventfd(0, os.EFD_CLOEXEC)

        def watch() -> None:
            ready, _, _ = select.select([fd, stop], [], [])
            if fd in ready and stop not in ready:
                fired.set()
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

        th = threading.Thread(target=watch, name=name, daemon=True)
        th.start()
        try:
            yield fired
        finally:
            os.eventfd_write(stop, 1)
            th.join()
            os.close(stop)
