"""The vsock HTTP reader stops at the end of the message: Firecracker's vsock never delivers the guest's
half-close to the host, so a reader that waits for EOF hangs on a complete reply (found in the lab)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from firecracer.errors import FirecracerError
from firecracer.vmm.vsock import read_http_response


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _send_later(sock: socket.socket, parts: list[bytes], gap: float = 0.02) -> threading.Thread:
    def go() -> None:
        for p in parts:
            sock.sendall(p)
            time.sleep(gap)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_content_length_reply_returns_although_the_peer_keeps_the_connection_open(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    _send_later(server, [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n", b"\r\nhello", b" world"])
    t0 = time.monotonic()
    r = read_http_response(client, "test", time.monotonic() + 10)
    assert (r.status, r.body) == (200, b"hello world")
    assert time.monotonic() - t0 < 5  # not the 10 s deadline: the server never closed
    assert 0 < r.first_byte_ms <= r.latency_ms


def test_chunked_reply(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    _send_later(server, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                         b"6;ext=1\r\n world\r\n0\r\n\r\n"])
    r = read_http_response(client, "test", time.monotonic() + 10)
    assert r.body == b"hello world"


def test_no_length_reads_until_eof(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    server.sendall(b"HTTP/1.0 200 OK\r\n\r\nuntil eof")
    server.shutdown(socket.SHUT_WR)
    assert read_http_response(client, "test", time.monotonic() + 10).body == b"until eof"


@pytest.mark.parametrize(("data", "why"), [
    (b"", "closed without an HTTP response"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "ended after 5 of 100 body bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 << 10), "not an HTTP response"),
])
def test_bad_replies_are_one_line_errors(pair, data: bytes, why: str) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    _send_later(server, [data])
    time.sleep(0.1)
    server.shutdown(socket.SHUT_WR)
    with pytest.raises(FirecracerError, match=why):
        read_http_response(client, "guest port 8080", time.monotonic() + 10)


def test_a_silent_peer_times_out_at_the_deadline(pair) -> None:  # type: ignore[no-untyped-def]
    client, server = pair
    server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    t0 = time.monotonic()
    with pytest.raises(FirecracerError, match="no complete HTTP response in time"):
        read_http_response(client, "guest", time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 5
