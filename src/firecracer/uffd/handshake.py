"""Firecracker's uffd hand-off: one ``sendmsg`` of a JSON region list plus the uffd via SCM_RIGHTS.

Every payload generation is accepted (``ANCHORS.md`` §1.3): three fields (Firecracker ≤ 1.6),
``page_size_kib`` holding *bytes* despite its name (1.7–1.11), ``page_size`` (≥ 1.12); unknown keys
(``gpa_start``, ``is_guest_memfd`` …) are ignored. Everything is validated before use: the payload
must fit the buffer (``MSG_TRUNC``), exactly one fd must arrive (``MSG_CTRUNC``, extra fds closed), it
must be a userfaultfd, and the regions must tile the memory file. Any failure is a ``HandshakeError``
that names the mismatch; waits are bounded by ``timeout``.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from firecracer.errors import HandshakeError
from firecracer.uffd.abi import is_userfaultfd

#: Largest payload accepted (vHive uses 64 KiB; a region is ~120 bytes of JSON).
MAX_PAYLOAD = 64 * 1024
_MAX_FDS = 4
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Region:
    """One guest memory region as Firecracker maps it: host VA range and its place in the memory file."""

    base_host_virt_addr: int
    size: int
    offset: int
    page_size: int

    @property
    def end(self) -> int:
        """Exclusive end of the host VA range."""
        return self.base_host_virt_addr + self.size

    @property
    def pages(self) -> int:
        """Number of ``page_size`` pages."""
        return self.size // self.page_size

    def as_dict(self) -> dict[str, int]:
        """The fields as written to ``trace.meta.regions``."""
        return {"base_host_virt_addr": self.base_host_virt_addr, "size": self.size,
                "offset": self.offset, "page_size": self.page_size}


@dataclass(frozen=True)
class Handshake:
    """A received hand-off: validated regions, the uffd (owned by the receiver), and the peer."""

    regions: tuple[Region, ...]
    uffd: int
    peer_pid: int | None
    generation: str
    payload: bytes
    received_ns: int

    @property
    def page_size(self) -> int:
        """The (common) page size of the regions."""
        return self.regions[0].page_size


def _int_field(entry: dict[str, Any], key: str, i: int) -> int:
    val = entry.get(key)
    if isinstance(val, bool) or not isinstance(val, int):
        raise HandshakeError(f"handshake region {i}: {key!r} must be an integer, got {val!r}")
    if val < 0 or val >= 1 << 64:
        raise HandshakeError(f"handshake region {i}: {key!r} out of range: {val}")
    return val


def generation_of(entry: dict[str, Any]) -> str:
    """Which Firecracker payload generation a region entry looks like."""
    if "page_size" in entry:
        return "v1.12+"
    if "page_size_kib" in entry:
        return "v1.7-v1.11"
    return "v1.4-v1.6"


def parse_regions(payload: bytes, *, mem_size: int | None = None,
                  default_page_size: int | None = None) -> tuple[tuple[Region, ...], str]:
    """Validate a handshake payload; returns the regions (sorted by file offset) and the generation.

    ``mem_size`` is the memory file's size: the regions must tile ``[0, mem_size)`` exactly.
    ``default_page_size`` (else ``os.sysconf('SC_PAGESIZE')``) is used when the payload has no page size.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HandshakeError(f"handshake payload ({len(payload)} bytes) is not UTF-8: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        snippet = text[:80] + ("…" if len(text) > 80 else "")
        raise HandshakeError(f"handshake payload ({len(payload)} bytes) is not valid JSON ({exc.msg} at "
                             f"char {exc.pos}): {snippet!r}") from None
    if not isinstance(data, list) or not data:
        raise HandshakeError("handshake payload must be a non-empty JSON array of regions, "
                             f"got {text[:80]!r}")
    sysconf_ps = default_page_size or os.sysconf("SC_PAGESIZE")
    regions: list[Region] = []
    gens: set[str] = set()
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise HandshakeError(f"handshake region {i} is not a JSON object: {entry!r}")
        gens.add(generation_of(entry))
        base = _int_field(entry, "base_host_virt_addr", i)
        size = _int_field(entry, "size", i)
        offset = _int_field(entry, "offset", i)
        if "page_size" in entry:
            ps = _int_field(entry, "page_size", i)
        elif "page_size_kib" in entry:  # bytes, despite the name (Firecracker 1.7–1.11)
            ps = _int_field(entry, "page_size_kib", i)
        else:
            ps = sysconf_ps
        if ps < 4096 or ps & (ps - 1):
            raise HandshakeError(f"handshake region {i}: page size {ps} is not a power of two ≥ 4096")
        if size == 0:
            raise HandshakeError(f"handshake region {i}: size is 0")
        for name, val in (("base_host_virt_addr", base), ("size", size), ("offset", offset)):
            if val % ps:
                raise HandshakeError(f"handshake region {i}: {name} {val:#x} is not aligned to the page "
                                     f"size {ps:#x}")
        regions.append(Region(base, size, offset, ps))
    if len({r.page_size for r in regions}) > 1:
        raise HandshakeError(f"handshake regions mix page sizes: {sorted({r.page_size for r in regions})}")
    regions.sort(key=lambda r: r.offset)
    expect = 0
    for i, r in enumerate(regions):
        if r.offset != expect:
            what = "overlaps the previous region" if r.offset < expect else "leaves a gap"
            raise HandshakeError(f"handshake regions do not tile the memory file: region at offset "
                                 f"{r.offset:#x} {what} (expected offset {expect:#x}, region {i})")
        expect = r.offset + r.size
    by_va = sorted(regions, key=lambda r: r.base_host_virt_addr)
    for a, b in itertools.pairwise(by_va):
        if b.base_host_virt_addr < a.end:
            raise HandshakeError(f"handshake regions overlap in host memory: {a.base_host_virt_addr:#x}+"
                                 f"{a.size:#x} and {b.base_host_virt_addr:#x}")
    if mem_size is not None and expect != mem_size:
        raise HandshakeError(f"handshake regions cover {expect} bytes but the memory file has {mem_size} "
                             f"bytes (sum of region sizes must equal the file size)")
    gen = gens.pop() if len(gens) == 1 else "mixed"
    return tuple(regions), gen


def peer_pid(conn: socket.socket) -> int | None:
    """The connecting process's pid (``SO_PEERCRED``), or None if the kernel gives none."""
    try:
        pid, _uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None
    return pid if pid > 0 else None


def receive(conn: socket.socket, *, mem_size: int | None, timeout: float,
            default_page_size: int | None = None) -> Handshake:
    """Receive and validate one hand-off on an accepted connection, waiting at most ``timeout`` s.

    On success the caller owns ``Handshake.uffd``; on any error every received fd is closed.
    """
    conn.settimeout(timeout)
    fds: list[int] = []
    try:
        try:
            data, ancdata, msg_flags, _ = conn.recvmsg(MAX_PAYLOAD, socket.CMSG_SPACE(_MAX_FDS * 4))
        except TimeoutError:
            raise HandshakeError(f"no uffd handshake arrived within {timeout:g} s of the connection"
                                 ) from None
        except OSError as exc:
            raise HandshakeError(f"receiving the uffd handshake failed: {exc}") from None
        received = time.monotonic_ns()
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(cdata[: len(cdata) - len(cdata) % arr.itemsize])
                fds.extend(arr)
        if msg_flags & socket.MSG_TRUNC:
            raise HandshakeError(f"handshake payload larger than {MAX_PAYLOAD} bytes (MSG_TRUNC)")
        if msg_flags & socket.MSG_CTRUNC:
            raise HandshakeError(f"handshake carried more than {_MAX_FDS} file descriptors (MSG_CTRUNC)")
        if not data and not fds:
            raise HandshakeError("peer closed the connection without sending the uffd handshake")
        if not fds:
            raise HandshakeError(f"handshake payload ({len(data)} bytes) arrived without a file descriptor "
                                 "(expected the userfaultfd via SCM_RIGHTS)")
        if len(fds) != 1:
            raise HandshakeError(f"handshake carried {len(fds)} file descriptors, expected exactly 1")
        if not is_userfaultfd(fds[0]):
            target = _fd_target(fds[0])
            raise HandshakeError(f"the fd sent with the handshake is not a userfaultfd ({target})")
        try:
            regions, gen = parse_regions(data, mem_size=mem_size, default_page_size=default_page_size)
        except HandshakeError as exc:
            raise HandshakeError(str(exc), peer_sent_uffd=True) from None
        pid = peer_pid(conn)
        hs = Handshake(regions, fds[0], pid, gen, bytes(data), received)
        fds.clear()
        return hs
    finally:
        for fd in fds:
            os.close(fd)


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"unreadable: {exc}"


def payload_for(regions: list[dict[str, int]], generation: str) -> bytes:
    """The JSON a given Firecracker generation sends for ``regions`` (for tests and tools).

    ``generation``: ``v1.4`` (3 fields), ``v1.7`` (+ ``page_size_kib`` in bytes), ``v1.12`` (+
    ``page_size``), ``secret`` (+ ``gpa_start``/``is_guest_memfd`` of the secret-hiding branch).
    """
    out: list[dict[str, Any]] = []
    for r in regions:
        e: dict[str, Any] = {"base_host_virt_addr": r["base_host_virt_addr"], "size": r["size"],
                             "offset": r["offset"]}
        ps = r.get("page_size", 4096)
        if generation in ("v1.12", "secret"):
            e["page_size"] = ps
        if generation in ("v1.7", "v1.12", "secret"):
            e["page_size_kib"] = ps
        if generation == "secret":
            e["gpa_start"] = r["offset"]
            e["is_guest_memfd"] = False
        elif generation not in ("v1.4", "v1.7", "v1.12"):
            raise ValueError(f"unknown handshake generation {generation!r}")
        out.append(e)
    return json.dumps(out).encode()
