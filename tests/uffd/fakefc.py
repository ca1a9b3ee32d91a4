"""A forked child that plays Firecracker's part of the uffd hand-off with a real userfaultfd.

It maps anonymous memory per region, creates a uffd exactly as Firecracker does (``/dev/userfaultfd``,
non-blocking, close-on-exec), ``UFFDIO_API`` (+ ``EVENT_REMOVE`` when asked) and ``UFFDIO_REGISTER``
(MISSING), connects to the server's socket and sends the JSON payload of the chosen generation with the
fd as SCM_RIGHTS. Then it runs a script of operations and reports page digests back over a pipe.

Reads go through ``ctypes.memmove`` so the GIL is released while the page fault waits, which lets
``("parallel", [...])`` raise several faults at once. The child arms ``alarm()`` so it can never hang.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import hashlib
import json
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from firecracer.uffd import abi
from firecracer.uffd.handshake import payload_for


def digest(data: bytes) -> str:
    """Short content digest used to compare pages across processes."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass
class PeerSpec:
    """What the fake Firecracker does. Pages are indexed across regions in memory-file order."""

    socket: str
    region_sizes: list[int]
    generation: str = "v1.12"
    page_size: int = 4096
    features: int = 0
    payload: bytes | None = None  # overrides the generated payload (garbage/truncated tests)
    declared_sizes: list[int] | None = None  # sizes put in the payload (default: region_sizes)
    send_fd: bool = True
    send_devnull_fd: bool = False
    extra_register: int = 0  # bytes mapped+registered after the last region but not declared
    ops: list[Any] = field(default_factory=list)
    timeout: int = 20


def _child(spec: PeerSpec, wfd: int) -> None:
    signal.alarm(spec.timeout)
    results: dict[str, Any] = {"reads": {}, "errors": []}
    ps = spec.page_size
    bases: list[int] = []
    uffd = abi.open_uffd()
    abi.api(uffd, spec.features)
    # huge pages as Firecracker maps them: hugetlbfs, MAP_NORESERVE (claimed from the pool when installed)
    flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | (abi.MAP_HUGETLB | abi.MAP_NORESERVE if ps > 4096 else 0)
    for i, size in enumerate(spec.region_sizes):
        extra = spec.extra_register if i == len(spec.region_sizes) - 1 else 0
        base = abi.mmap(size + extra, abi.PROT_READ | abi.PROT_WRITE, flags)
        abi.register(uffd, base, size + extra)
        bases.append(base)
    declared = spec.declared_sizes or spec.region_sizes
    regions, off = [], 0
    for base, size in zip(bases, declared, strict=True):
        regions.append({"base_host_virt_addr": base, "size": size, "offset": off, "page_size": ps})
        off += size
    payload = spec.payload if spec.payload is not None else payload_for(regions, spec.generation)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(spec.socket)
    anc = []
    if spec.send_fd:
        fd = os.open(os.devnull, os.O_RDONLY) if spec.send_devnull_fd else uffd
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    if payload or anc:
        sock.sendmsg([payload], anc)

    def addr_of(page: int) -> int:
        off = page * ps
        for base, size in zip(bases, spec.region_sizes, strict=True):
            if off < size:
                return base + off
            off -= size
        return bases[-1] + spec.region_sizes[-1] + off  # beyond the declared regions (extra_register)

    def read(page: int) -> None:
        buf = ctypes.create_string_buffer(ps)  # one per call: threads read concurrently
        ctypes.memmove(buf, addr_of(page), ps)
        results["reads"].setdefault(str(page), []).append(digest(buf.raw))

    for op in spec.ops:
        kind = op[0]
        if kind == "read":
            for p in op[1]:
                read(p)
        elif kind == "parallel":
            threads = [threading.Thread(target=read, args=(p,)) for p in op[1]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elif kind == "write":
            ctypes.memset(addr_of(op[1]), op[2], ps)
        elif kind == "dontneed":
            abi.madvise(addr_of(op[1]), op[2] * ps, abi.MADV_DONTNEED)
        elif kind == "self_install":  # install a page ourselves (as if another installer raced us)
            src = ctypes.create_string_buffer(bytes([op[2]]) * ps)
            abi.Ops(uffd).copy(addr_of(op[1]), ctypes.addressof(src), ps)
        elif kind == "sleep":
            time.sleep(op[1])
        elif kind == "exit":
            break
    os.write(wfd, json.dumps(results).encode())
    os.close(wfd)
    if spec.ops and spec.ops[-1][0] == "hold":
        time.sleep(spec.ops[-1][1])


class Peer:
    """A running fake Firecracker (forked child); ``finish()`` waits (bounded) and returns its report."""

    def __init__(self, spec: PeerSpec) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            code = 0
            try:
                _child(spec, w)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(w, json.dumps({"crash": repr(exc)}).encode())
                code = 3
            os._exit(code)
        os.close(w)
        self.pid = pid
        self._r = r
        self.status: int | None = None

    def finish(self, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """Wait for the child; returns ``(wait status, report)``. Kills it after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(self.pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([self._r], [], [], min(left, 0.5))
            if ready:
                data = os.read(self._r, 65536)
                if not data:
                    break
                chunks.append(data)
        os.close(self._r)
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline + 5:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.01)
        self.status = status
        raw = b"".join(chunks)
        return status, (json.loads(raw) if raw else {})

    def kill(self) -> None:
        """SIGKILL (ignored if already gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def uffd_unavailable() -> str | None:
    """Why this host cannot create a userfaultfd (for a skip reason), or None."""
    try:
        fd = abi.open_uffd()
    except OSError as exc:
        return f"cannot create a userfaultfd here: {exc}"
    os.close(fd)
    return None
