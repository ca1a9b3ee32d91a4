"""Guest networking that stays on this host: per-VM network namespaces with a tap, and vsock.

Rule of this project: traffic goes only to loopback or into namespaces we create. So a microVM's
tap lives in a namespace named after the VM; Firecracker runs inside it (``ip netns exec``); the
guest gets its address from the kernel ``ip=`` argument. Restored clones each get their own
namespace holding a tap of the *same* name and addresses, so the snapshot's network config stays
valid for all of them side by side.

vsock needs no setup: Firecracker exposes the guest's vsock as a Unix socket; a host-initiated
connection sends ``CONNECT <port>\\n`` and gets ``OK <host_port>\\n`` back.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from firecracer.errors import FirecracerError

TAP_NAME = "tap0"
HOST_IP = "172.16.0.1"
GUEST_IP = "172.16.0.2"
PREFIX = 30
GUEST_MAC = "06:00:ac:10:00:02"


def _ip(*args: str, timeout: float = 10.0) -> str:
    try:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirecracerError(f"'ip {' '.join(args)}' failed: {exc}") from exc
    if res.returncode != 0:
        raise FirecracerError(f"'ip {' '.join(args)}' failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def kernel_ip_arg(guest_ip: str = GUEST_IP, host_ip: str = HOST_IP, prefix: int = PREFIX) -> str:
    """The ``ip=`` kernel argument that configures eth0 statically (no DHCP, no DNS)."""
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    netmask = ".".join(str(mask >> s & 0xFF) for s in (24, 16, 8, 0))
    return f"ip={guest_ip}::{host_ip}:{netmask}::eth0:off"


@dataclass
class NetNamespace:
    """A network namespace holding one tap device; :meth:`delete` removes both (idempotent)."""

    name: str
    tap: str = TAP_NAME
    host_ip: str = HOST_IP
    prefix: int = PREFIX
    created: bool = False

    @classmethod
    def create(cls, name: str, *, tap: str = TAP_NAME, host_ip: str = HOST_IP,
               prefix: int = PREFIX) -> NetNamespace:
        """Create namespace ``name`` with ``lo`` up and tap ``tap`` at ``host_ip/prefix``.

        :raises FirecracerError: not root, the name exists, or ``ip`` failed (nothing is left behind).
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise FirecracerError(f"network namespace name {name!r}: use letters, digits, '_', '.', '-'")
        if os.geteuid() != 0:
            raise FirecracerError("tap networking needs root (ip netns add); use vsock instead")
        ns = cls(name, tap, host_ip, prefix)
        _ip("netns", "add", name)
        ns.created = True
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip("-n", name, "addr", "add", f"{host_ip}/{prefix}", "dev", tap)
            _ip("-n", name, "link", "set", tap, "up")
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        if self.created:
            with contextlib.suppress(FirecracerError):
                _ip("netns", "delete", self.name)
            self.created = False

    def exists(self) -> bool:
        return Path("/run/netns", self.name).exists()


def vsock_connect(uds_path: Path, port: int, timeout: float = 5.0) -> socket.socket:
    """Open a stream to guest vsock ``port`` through Firecracker's Unix socket.

    :raises FirecracerError: the socket is missing or the guest does not listen on ``port``.
    """
    from firecracer.guest.client import open_stream

    return open_stream(f"vsock:{uds_path}:{port}", timeout)


@dataclass(frozen=True)
class HttpReply:
    status: int
    latency_ms: float  # from connect to the last byte of the response
    headers: dict[str, str]
    body: bytes


def vsock_http(uds_path: Path, port: int, path: str = "/", *, method: str = "GET", timeout: float = 10.0,
               retries: int = 3) -> HttpReply:
    """One HTTP/1.0 request to a guest port over vsock; retries a connection reset right after resume."""
    last: Exception | None = None
    for attempt in range(retries):
        t0 = time.perf_counter()
        try:
            sock = vsock_connect(uds_path, port, timeout)
        except FirecracerError as exc:
            last = exc
            time.sleep(0.05 * (attempt + 1))
            continue
        try:
            sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: guest\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            last = exc
            time.sleep(0.05 * (attempt + 1))
            continue
        finally:
            sock.close()
        latency = (time.perf_counter() - t0) * 1000
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
        if not m:
            raise FirecracerError(f"vsock port {port}: not an HTTP answer ({lines[0][:80]!r})")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return HttpReply(int(m.group(1)), latency, headers, body)
    raise FirecracerError(f"vsock port {port}: no HTTP answer after {retries} attempts ({last})")
