"""Guest networking that stays on this host: per-VM network namespaces with a tap.

Rule of this project: traffic goes only to loopback or into namespaces we create. So a microVM's
tap lives in a namespace named after the VM; Firecracker runs inside it (``ip netns exec``); the
guest gets its address from the kernel ``ip=`` argument. Restored clones each get their own
namespace holding a tap of the *same* name and addresses, so the snapshot's network config stays
valid for all of them side by side.

vsock needs no setup: ``firecracer.vmm.vsock`` connects through Firecracker's Unix socket.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
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
