"""The page server: accept Firecracker's hand-offs on a Unix socket and serve each one in a session.

One :class:`~firecracer.uffd.session.Session` per hand-off (clones may connect several times): the
first in this thread when one session is expected (no GIL hand-offs on the hot path), else each in its
own thread. The server prepares what the strategy needs before listening (a ``prefetch`` trace's
working set, checked against the memory file and read ahead), and writes the outputs after the
sessions ended: metrics JSON, traces (``trace.npz``) and, for strategies that record a working set,
the working-set file beside each trace.

A session ends when its peer exits (a pidfd from ``SO_PEERCRED``) or the server is stopped. On a fatal
error the peer is killed (``SIGKILL``) so Firecracker never hangs on a fault nobody will serve, and the
server reports failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError, HandshakeError
from firecracer.uffd.handshake import peer_pid, receive
from firecracer.uffd.installer import ServeError
from firecracer.uffd.metrics import ServerMetrics
from firecracer.uffd.session import Session
from firecracer.uffd.strategies import Strategy, parse_strategy
from firecracer.uffd.trace import save_trace
from firecracer.uffd.workingset import (
    DEFAULT_ORDER,
    WorkingSet,
    prepare_working_set,
    write_working_set,
    ws_path_for,
)
from firecracer.uffd.zsource import CompressedMemoryFile, open_memory

__all__ = ["ServeError", "ServeResult", "Server", "read_ahead"]

log = logging.getLogger("firecracer.uffd")


def read_ahead(path: Path) -> int:
    """Start reading ``path`` into the page cache in the background (``POSIX_FADV_WILLNEED``); returns the
    ``monotonic_ns`` it started at (0 if it could not be started)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        t = time.monotonic_ns()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return t
    except OSError:
        return 0
    finally:
        os.close(fd)


def _sun_path(p: Path) -> tuple[str, int]:
    """A bindable/connectable address for ``p`` and a directory fd to close afterwards (-1 if none):
    ``p`` itself, or ``/proc/self/fd/<dirfd>/<name>`` when it is longer than ``sun_path`` allows."""
    if len(os.fsencode(str(p))) <= 107:
        return str(p), -1
    try:
        dfd = os.open(p.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (its directory {p.parent})") from None
    addr = f"/proc/self/fd/{dfd}/{p.name}"
    if len(os.fsencode(addr)) > 107:
        os.close(dfd)
        raise OSError(36, f"the socket's name {p.name!r} is too long for AF_UNIX")
    return addr, dfd


@dataclass
class ServeResult:
    """What a server run did: per-session metrics, traces written, and the first fatal error."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    traces: list[Path] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """No fatal error in the server or any session."""
        return self.error is None and all(s.get("error") is None for s in self.sessions)

    def metrics(self) -> dict[str, Any]:
        """JSON-able summary (``sessions`` list plus ``ok``/``error``)."""
        first = self.error or next((s["error"] for s in self.sessions if s["error"]), None)
        return {"ok": self.ok, "error": first, "sessions": self.sessions,
                "traces": [str(p) for p in self.traces]}


def _is_firecracker(pid: int) -> bool:
    """Whether process ``pid`` runs a Firecracker binary (by its executable's name)."""
    try:
        return "firecracker" in Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return False


class Server:
    """Listen on ``socket_path`` and serve hand-offs from ``mem_file`` with ``strategy``.

    ``max_sessions``: stop accepting after this many hand-offs (0 = until stopped). ``accept_timeout``:
    fail if no connection arrives in time (None = wait until stopped). ``trace_out``: write session i's
    trace there (``-i`` appended to the stem after the first), and the working-set file beside it.
    ``mem_id``: the id of the snapshot the memory file belongs to (else read from the ``snapshot.json``
    beside it); traces record it, and ``prefetch`` refuses a trace or working set recorded on another
    memory file, before listening.
    """

    def __init__(self, socket_path: str | Path, mem_file: str | Path,
                 strategy: str | Strategy = "ondemand", *, trace_out: str | Path | None = None,
                 max_sessions: int = 1, accept_timeout: float | None = None,
                 handshake_timeout: float = 10.0, populate: bool = False, write_ws: bool = True,
                 firecracker_version: str | None = None, metrics_out: str | Path | None = None,
                 mem_id: str | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.strategy = strategy if isinstance(strategy, Strategy) else parse_strategy(strategy)
        self.trace_out = Path(trace_out) if trace_out else None
        self.max_sessions = max_sessions
        self.accept_timeout = accept_timeout
        self.handshake_timeout = handshake_timeout
        self.write_ws = write_ws
        self.firecracker_version = firecracker_version
        self.metrics_out = Path(metrics_out) if metrics_out else None
        for what, out in (("trace", self.trace_out), ("metrics", self.metrics_out)):
            # known now rather than after serving a whole restore whose trace would then be lost
            if out is not None and not (out.parent.is_dir() and os.access(out.parent, os.W_OK | os.X_OK)):
                raise FirecracerError(f"{out}: cannot write the {what} there ({out.parent} is not a writable "
                                      "directory)")
        self.read_ahead = os.environ.get("FIRECRACER_UFFD_WS_READ_AHEAD", "1") != "0"
        self._read_ahead_ns = 0
        # 0 = per page size (Session): tuning knobs, measured in docs/uffd.md
        self.install_threads = int(os.environ.get("FIRECRACER_UFFD_INSTALL_THREADS") or 0)
        modes: dict[str, bool | str] = {"async": "async", "0": False}
        self.ws_populate = modes.get(os.environ.get("FIRECRACER_UFFD_WS_POPULATE", ""), True)
        self.mem = open_memory(mem_file, populate=populate, mem_id=mem_id)  # raw or compressed (mem.fcz)
        self.ws_path: Path | None = None
        if self.strategy.trace is not None:
            try:
                self.ws_path = prepare_working_set(self.strategy.trace, self.mem,
                                                   self.strategy.load_order or DEFAULT_ORDER)
            except BaseException:
                self.mem.close()
                raise
            if self.read_ahead:
                self._read_ahead_ns = read_ahead(self.ws_path)
        self._stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sock: socket.socket | None = None

    def listen(self) -> None:
        """Bind and listen (a stale socket file from a dead server is replaced).

        A path longer than ``sun_path`` allows is bound through ``/proc/self/fd/<dir>/<name>``.

        :raises FirecracerError: the path exists and is not a socket, another server listens there, or
            the socket cannot be created (one line naming the path and why).
        """
        p = self.socket_path
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise FirecracerError(f"{p} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(_sun_path(p)[0])
                raise FirecracerError(f"another server is already listening on {p}")
            except (ConnectionRefusedError, FileNotFoundError):
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise FirecracerError(f"{p}: cannot use this socket path ({exc.strerror or exc})") from None
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        dfd = -1
        try:
            addr, dfd = _sun_path(p)
            sock.bind(addr)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise FirecracerError(f"{p}: cannot listen on this socket path ({exc.strerror or exc})") from None
        finally:
            if dfd >= 0:
                os.close(dfd)
        self.sock = sock

    def stop(self) -> None:
        """Ask ``serve`` and every session to end (safe from signal handlers and other threads)."""
        with contextlib.suppress(OSError):
            os.eventfd_write(self._stop, 1)

    def _stopped(self) -> bool:
        r, _, _ = select.select([self._stop], [], [], 0)
        return bool(r)

    def serve(self) -> ServeResult:
        """Accept and serve until ``max_sessions`` sessions have ended, or ``stop()``; never raises for
        session failures (see ``ServeResult.ok``)."""
        if self.sock is None:
            self.listen()
        assert self.sock is not None
        result = ServeResult()
        sessions: list[Session] = []
        threads: list[threading.Thread] = []
        conns: list[socket.socket] = []
        started = time.monotonic()
        try:
            while self.max_sessions == 0 or len(sessions) < self.max_sessions:
                timeout = None
                if self.accept_timeout is not None and not sessions:
                    timeout = self.accept_timeout - (time.monotonic() - started)
                    if timeout <= 0:
                        result.error = f"no connection on {self.socket_path} within {self.accept_timeout:g} s"
                        break
                wait = min(timeout, 1.0) if timeout else 1.0
                r, _, _ = select.select([self.sock.fileno(), self._stop], [], [], wait)
                if self._stop in r:
                    break
                if self.sock.fileno() not in r:
                    continue
                conn, _ = self.sock.accept()
                conns.append(conn)
                try:
                    hs = receive(conn, mem_size=self.mem.size, timeout=self.handshake_timeout)
                except HandshakeError as exc:
                    pid = peer_pid(conn)
                    result.error = str(exc)
                    if pid and (exc.peer_sent_uffd or _is_firecracker(pid)):
                        # its guest would hang on the next fault with nobody to serve it
                        log.error("%s; killing peer %s", exc, pid)
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    else:  # not Firecracker and no memory registered with us: nothing of it can hang
                        log.error("%s; peer %s is not Firecracker and sent no userfaultfd: disconnected, "
                                  "not killed", exc, pid)
                    break
                ws = None
                if self.ws_path is not None:
                    t = time.monotonic_ns()
                    try:
                        ws = WorkingSet(self.ws_path, mem_size=self.mem.size, populate=self.ws_populate)
                    except FirecracerError as exc:
                        result.error = str(exc)
                        if hs.peer_pid:
                            with contextlib.suppress(OSError):
                                os.kill(hs.peer_pid, signal.SIGKILL)
                        os.close(hs.uffd)
                        break
                    read_ms = (time.monotonic_ns() - t) / 1e6
                s = Session(hs, self.mem, self.strategy, stop_fd=self._stop, index=len(sessions), ws=ws,
                            install_threads=self.install_threads)
                if ws is not None:
                    s.install_facts["ws_read_ms"] = read_ms
                    s.install_facts["ws_bytes"] = ws.file_size
                    if self._read_ahead_ns:  # how long before the hand-off the file started to be read
                        ahead = (hs.received_ns - self._read_ahead_ns) / 1e6
                        s.install_facts["ws_read_ahead_ms"] = round(ahead, 3)
                sessions.append(s)
                if self.max_sessions == 1 and not os.environ.get("FIRECRACER_UFFD_THREAD"):
                    s.run()  # the common case: serve in this thread (no GIL hand-offs on the hot path)
                    break
                th = threading.Thread(target=s.run, name=f"uffd-session-{s.index}", daemon=True)
                threads.append(th)
                th.start()
            for th in threads:
                while th.is_alive():
                    th.join(timeout=0.5)
        finally:
            if any(th.is_alive() for th in threads):  # interrupted: end sessions, never leave peers hanging
                self.stop()
                for th in threads:
                    th.join(timeout=10)
            for c in conns:
                c.close()
        # outputs, smallest first and each atomic: a supervisor may SIGKILL us soon after the peer died
        traces: list[tuple[Session, Path]] = []
        for s in sessions:
            if s.ws is not None:
                s.ws.close()
            result.sessions.append(s.metrics())
            if isinstance(self.mem, CompressedMemoryFile):  # shared by the sessions: totals so far
                result.sessions[-1]["compressed"] = self.mem.describe()
            if self.trace_out is not None:
                out = self.trace_out if s.index == 0 else self.trace_out.with_name(
                    f"{self.trace_out.stem}-{s.index}{self.trace_out.suffix or '.npz'}")
                traces.append((s, out))
                result.traces.append(out)
        if self.metrics_out is not None:
            ServerMetrics.from_dict(result.metrics(), self.metrics_out).write(self.metrics_out)
        for s, out in traces:
            tr = s.trace(firecracker_version=self.firecracker_version)
            save_trace(tr, out)
        for s, out in traces:
            if self.write_ws and self.strategy.records_working_set and s.nfaults:
                write_working_set(out, self.mem, ws_path_for(out))
        return result

    def close(self) -> None:
        """Close the socket (and remove its file), the memory file and the stop fd (idempotent)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.socket_path.unlink(missing_ok=True)
        self.mem.close()
        if self._stop >= 0:
            os.close(self._stop)
            self._stop = -1

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
