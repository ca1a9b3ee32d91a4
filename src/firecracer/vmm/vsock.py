"""Talking to a guest over vsock from the host: Firecracker's CONNECT handshake, and HTTP over it.

Firecracker exposes the guest's vsock as a Unix socket (``uds_path`` of ``PUT /vsock``); a host-initiated
connection sends ``CONNECT <port>\\n`` and gets ``OK <host_port>\\n`` back, then the stream is the
guest port's. :func:`open_stream` also takes ``tcp:HOST:PORT`` (a QEMU user-mode forward) and
``unix:PATH`` (tests), so the guest agent's client (``firecracer.agentclient.client``) uses it for every
address; :func:`vsock_http` is one HTTP/1.0 request to a guest port (the workload's first request).
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from firecracer.errors import FirecracerError

HANDSHAKE_MAX = 128


class VsockError(FirecracerError):
    """A guest stream could not be opened (bad address, nothing listening, handshake refused)."""


def open_stream(address: str, timeout: float) -> socket.socket:
    """A connected stream to ``vsock:UDS:PORT`` (Firecracker's CONNECT handshake done), ``tcp:HOST:PORT`` or
    ``unix:PATH``; :class:`VsockError` naming the address otherwise. The project's one vsock handshake."""
    kind, _, rest = address.partition(":")
    if kind == "vsock":
        uds, sep, port = rest.rpartition(":")
        if not sep or not uds or not port.isdigit():
            raise VsockError(f"bad agent address {address!r}: expected vsock:UDS_PATH:PORT")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(uds)
            s.sendall(f"CONNECT {int(port)}\n".encode())
            line = b""
            while not line.endswith(b"\n"):
                got = s.recv(1)
                if not got:
                    raise VsockError(f"{address}: Firecracker closed the vsock connection after CONNECT "
                                     f"(nothing listens on guest port {port}?)")
                line += got
                if len(line) > HANDSHAKE_MAX:
                    raise VsockError(f"{address}: vsock handshake answer too long: {line[:60]!r}")
            if not line.startswith(b"OK "):
                raise VsockError(f"{address}: vsock handshake answered {line.strip()!r}, "
                                 "expected 'OK <port>'")
        except OSError as exc:
            s.close()
            raise VsockError(f"{address}: {exc.strerror or exc}") from None
        except VsockError:
            s.close()
            raise
        return s
    if kind == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise VsockError(f"bad agent address {address!r}: expected tcp:HOST:PORT")
        try:
            return socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout)
        except OSError as exc:
            raise VsockError(f"{address}: {exc.strerror or exc}") from None
    if kind == "unix" and rest:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(rest)
        except OSError as exc:
            s.close()
            raise VsockError(f"{address}: {exc.strerror or exc}") from None
        return s
    raise VsockError(f"bad agent address {address!r}: expected vsock:UDS:PORT, tcp:HOST:PORT or unix:PATH")


def vsock_connect(uds_path: Path, port: int, timeout: float = 5.0) -> socket.socket:
    """Open a stream to guest vsock ``port`` through Firecracker's Unix socket.

    :raises FirecracerError: the socket is missing or the guest does not listen on ``port``.
    """
    return open_stream(f"vsock:{uds_path}:{port}", timeout)


@dataclass(frozen=True)
class HttpReply:
    status: int
    latency_ms: float  # from connect to the last byte of the response
    headers: dict[str, str]
    body: bytes
    first_byte_ms: float = 0.0  # from connect to the first byte of the response
    #: why earlier attempts were retried (a connection reset or closed before any byte: the guest's vsock
    #: transport is reset on every restore, and a connection racing that reset is dropped)
    retried: tuple[str, ...] = ()


class HttpClosed(FirecracerError):
    """The peer closed the connection before sending any byte (worth a retry right after a resume)."""


#: a response head larger than this is not HTTP we asked for
MAX_HEAD = 64 << 10
MAX_BODY = 256 << 20


def read_http_response(sock: socket.socket, what: str, deadline: float,
                       t0: float | None = None) -> HttpReply:
    """Read one HTTP/1.x response from ``sock`` and stop at its end, not at EOF.

    The end is ``Content-Length`` bytes after the head, the last chunk of a chunked body, or EOF when the
    response says neither. Firecracker's vsock does not pass a guest's half-close (``shutdown(SHUT_WR)``)
    on to the host socket, so reading until EOF can wait forever on a complete reply. ``what`` names the
    peer in errors; ``deadline`` is a ``time.monotonic()`` bound on the whole read.
    """
    t0 = time.perf_counter() if t0 is None else t0
    buf = bytearray()
    first: float | None = None

    def more() -> bool:
        nonlocal first
        left = deadline - time.monotonic()
        if left <= 0:
            raise FirecracerError(f"{what}: no complete HTTP response in time ({len(buf)} bytes so far)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise FirecracerError(f"{what}: no complete HTTP response in time ({len(buf)} bytes so far)") \
                from None
        if chunk and first is None:
            first = time.perf_counter()
        buf.extend(chunk)
        if len(buf) > MAX_HEAD + MAX_BODY:
            raise FirecracerError(f"{what}: HTTP response larger than {MAX_BODY >> 20} MiB")
        return bool(chunk)

    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD or not more():
            if not buf:
                raise HttpClosed(f"{what}: the connection closed without an HTTP response")
            raise FirecracerError(f"{what}: not an HTTP response ({bytes(buf[:60])!r})")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
    if not m:
        raise FirecracerError(f"{what}: not an HTTP response ({lines[0][:80]!r})")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    start = end + 4
    status = int(m.group(1))
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(buf, start, more, what)
    elif "content-length" in headers:
        try:
            n = int(headers["content-length"])
        except ValueError:
            raise FirecracerError(f"{what}: bad Content-Length {headers['content-length']!r}") from None
        if n < 0 or n > MAX_BODY:
            raise FirecracerError(f"{what}: Content-Length {n} out of range")
        while len(buf) - start < n:
            if not more():
                raise FirecracerError(f"{what}: the response ended after {len(buf) - start} of {n} "
                                      "body bytes")
        body = bytes(buf[start:start + n])
    else:
        while more():
            pass
        body = bytes(buf[start:])
    t_end = time.perf_counter()
    return HttpReply(status, (t_end - t0) * 1e3, headers, body,
                     ((first or t_end) - t0) * 1e3)


def _read_chunked(buf: bytearray, pos: int, more: Callable[[], bool], what: str) -> bytes:
    body = bytearray()
    while True:
        while (eol := buf.find(b"\r\n", pos)) < 0:
            if not more():
                raise FirecracerError(f"{what}: chunked response cut off")
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FirecracerError(f"{what}: bad chunk size {size_text[:20]!r}") from None
        pos = eol + 2
        if size == 0:
            return bytes(body)  # trailers, if any, are not needed
        while len(buf) < pos + size + 2:
            if not more():
                raise FirecracerError(f"{what}: chunked response cut off")
        body += buf[pos:pos + size]
        pos += size + 2
        if len(body) > MAX_BODY:
            raise FirecracerError(f"{what}: HTTP response larger than {MAX_BODY >> 20} MiB")


def vsock_http(uds_path: Path, port: int, path: str = "/", *, method: str = "GET", timeout: float = 10.0,
               retries: int = 3, body: str = "") -> HttpReply:
    """One HTTP/1.0 request to a guest port over vsock; retries a connection reset right after resume.

    ``timeout`` bounds each attempt (connect + the whole response); latencies count from the connect.
    ``body`` is sent form-encoded (``a=1&b=2``, what an HTML form posts).
    """
    last: Exception | None = None
    what = f"vsock {uds_path} port {port}: {method} {path}"
    retried: list[str] = []
    for attempt in range(retries):
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        try:
            sock = vsock_connect(uds_path, port, timeout)
        except FirecracerError as exc:
            last = exc
            retried.append(str(exc))
            time.sleep(0.05 * (attempt + 1))
            continue
        try:
            payload = body.encode()
            extra = (f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(payload)}\r\n"
                     if payload or method in ("POST", "PUT") else "")
            sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: guest\r\nConnection: close\r\n{extra}\r\n"
                         .encode() + payload)
            reply = read_http_response(sock, what, deadline, t0)
            return dataclasses.replace(reply, retried=tuple(retried))
        except (ConnectionResetError, BrokenPipeError, HttpClosed) as exc:
            last = exc
            retried.append(str(exc) or type(exc).__name__)
            time.sleep(0.05 * (attempt + 1))
            continue
        except OSError as exc:
            raise FirecracerError(f"{what}: {exc}") from None
        finally:
            sock.close()
    if retries == 1 and isinstance(last, FirecracerError):
        raise last
    raise FirecracerError(f"vsock port {port}: no HTTP answer after {retries} attempts ({last})")
