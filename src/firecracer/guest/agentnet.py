"""The guest agent's sockets: listen addresses (vsock, TCP, Unix), a server of request lines with bounded
connections and requests, and port forwards (a guest TCP port reachable over vsock).

Standard library only, like all of ``firecracer.guest``; ``agent`` says what the lines mean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("firecracer.agent")

#: connections served at once (one more is answered ``busy`` and closed)
MAX_CONNECTIONS = 16
#: seconds a connection may stay silent
IDLE_TIMEOUT = 900.0


def error_reply(rid: Any, code: str, message: str) -> dict[str, Any]:
    """The reply to a request that failed: ``{"id", "ok": false, "error": {"code", "message"}}``."""
    return {"id": rid, "ok": False, "error": {"code": code, "message": message.replace("\n", " ")[:2000]}}


def parse_address(spec: str) -> tuple[int, Any]:
    """``vsock:PORT`` | ``tcp:HOST:PORT`` | ``unix:PATH`` → ``(family, bind address)``."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "vsock":
            if not hasattr(socket, "AF_VSOCK"):
                raise ValueError("this Python has no AF_VSOCK")
            return socket.AF_VSOCK, (socket.VMADDR_CID_ANY, int(rest))
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host.strip("[]") or "0.0.0.0", int(port))
        if kind == "unix" and rest:
            return socket.AF_UNIX, rest
    except ValueError as exc:
        raise ValueError(f"bad listen address {spec!r}: {exc}") from None
    raise ValueError(f"bad listen address {spec!r}: expected vsock:PORT, tcp:HOST:PORT or unix:PATH")


def open_listener(spec: str) -> socket.socket:
    """A listening socket for ``spec`` (a stale Unix socket file is replaced; mode 0600)."""
    family, addr = parse_address(spec)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_UNIX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)
        sock.bind(addr)
        if family == socket.AF_UNIX:
            os.chmod(addr, 0o600)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


class LineServer:
    """Owns the listening sockets and the connection threads; ``serve_forever`` until ``stop``.

    Each connection on a ``listens`` address is a stream of request lines (at most ``max_request`` bytes
    each), each answered with ``handle(line)``; each ``forwards`` pair copies connections on its listen
    address to a TCP port.
    """

    def __init__(self, handle: Callable[[bytes], bytes], max_request: int, listens: list[str],
                 forwards: list[tuple[str, str]]) -> None:
        self.handle = handle
        self.max_request = max_request
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._socks: list[tuple[socket.socket, Callable[[socket.socket], None], str]] = []
        #: listen specs that could not be opened, with why (e.g. vsock under QEMU without vhost-vsock)
        self.failed: list[str] = []
        for spec in listens:
            parse_address(spec)  # a malformed address is the operator's error: fail loudly
            self._open(spec, self._serve_conn)
        for spec, target in forwards:
            self._open(spec, self._forwarder(target))
        if not any(fn == self._serve_conn for _, fn, _ in self._socks):
            self.close()
            raise OSError(f"no agent listener could be opened: {'; '.join(self.failed)}")

    def _open(self, spec: str, fn: Callable[[socket.socket], None]) -> None:
        """Open one listener; a failure is recorded (and logged), not fatal, so an init that lists
        both ``vsock:52`` and ``tcp:0.0.0.0:52`` works under Firecracker and under QEMU alike."""
        try:
            self._socks.append((open_listener(spec), fn, spec))
        except OSError as exc:
            self.failed.append(f"{spec}: {exc.strerror or exc}")
            log.warning("cannot listen on %s: %s", spec, exc.strerror or exc)

    @property
    def addresses(self) -> list[Any]:
        return [s.getsockname() for s, _, _ in self._socks]

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (safe from a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        for s, _, spec in self._socks:
            s.close()
            if spec.startswith("unix:"):
                with contextlib.suppress(OSError):
                    os.unlink(spec[5:])

    def serve_forever(self) -> None:
        sel = selectors.DefaultSelector()
        for s, fn, _ in self._socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, fn)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.5):
                    try:
                        conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as exc:
                        log.warning("accept failed: %s", exc)
                        continue
                    conn.setblocking(True)
                    if not self._slots.acquire(blocking=False):
                        with contextlib.suppress(OSError):
                            busy = error_reply(None, "busy", "too many connections")
                            conn.sendall(json.dumps(busy).encode() + b"\n")
                        conn.close()
                        continue
                    threading.Thread(target=self._run_conn, args=(key.data, conn), daemon=True).start()
        finally:
            sel.close()

    def _run_conn(self, fn: Callable[[socket.socket], None], conn: socket.socket) -> None:
        try:
            fn(conn)
        except Exception:
            log.exception("connection handler failed")
        finally:
            conn.close()
            self._slots.release()

    def _serve_conn(self, conn: socket.socket) -> None:
        """Read request lines (bounded), answer each; an over-long line ends the connection."""
        conn.settimeout(IDLE_TIMEOUT)
        buf = bytearray()
        while not self._stop.is_set():
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > self.max_request:
                    conn.sendall(json.dumps(error_reply(None, "too-large",
                                                   f"request exceeds {self.max_request} bytes "
                                                   "without a newline; closing")).encode() + b"\n")
                    _lingering_close(conn)
                    return
                try:
                    got = conn.recv(65536)
                except (TimeoutError, OSError):
                    return
                if not got:
                    return
                buf += got
                continue
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if not line.strip():
                continue
            reply = self.handle(line)
            try:
                conn.sendall(reply)
            except OSError:
                return

    def _forwarder(self, target: str) -> Callable[[socket.socket], None]:
        host, _, port = target.rpartition(":")
        addr = (host or "127.0.0.1", int(port))

        def forward(conn: socket.socket) -> None:
            try:
                up = socket.create_connection(addr, timeout=10)
            except OSError as exc:
                log.warning("forward to %s:%s failed: %s", *addr, exc)
                return
            up.settimeout(None)
            t = threading.Thread(target=pump, args=(conn, up), daemon=True)
            t.start()
            # the app's reply ends the exchange: close the client's connection fully, because
            # Firecracker's vsock does not pass a half-close on and the host would wait for EOF forever
            pump(up, conn, close=True)
            t.join(timeout=IDLE_TIMEOUT)
            up.close()

        return forward


def _lingering_close(conn: socket.socket, limit: int = 4 << 20, seconds: float = 2.0) -> None:
    """Half-close, then discard what the peer still sends (bounded), so our last reply is not lost to
    a TCP/Unix reset caused by closing with unread input."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(seconds)
        deadline = time.monotonic() + seconds
        while limit > 0 and time.monotonic() < deadline:
            got = conn.recv(65536)
            if not got:
                break
            limit -= len(got)


def pump(src: socket.socket, dst: socket.socket, *, close: bool = False) -> None:
    """Copy ``src`` → ``dst`` until EOF, then half-close ``dst`` (or shut it down both ways)."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR if close else socket.SHUT_WR)


def parse_forward(spec: str) -> tuple[str, str]:
    listen, eq, target = spec.rpartition("=")
    if not eq or not listen or not target.rpartition(":")[2].isdigit():
        raise argparse.ArgumentTypeError(f"bad --forward {spec!r}: expected LISTEN=[HOST:]PORT, "
                                         "e.g. vsock:8080=8080")
    parse_address(listen)
    return listen, target
