"""The page server: accept Firecracker's hand-offs on a Unix socket and serve each uffd's faults.

One :class:`Session` per hand-off (clones may connect several times), each in its own thread with its
own event loop:

* every wakeup drains all queued events; ``REMOVE`` events are applied before the faults read with
  them (pages in a removed range are served as zero afterwards);
* a fault installs one page (``ondemand``), or the missing pages of its aligned block
  (``fault-around:N``), contiguous runs per ioctl, holes of a sparse memory file as zero pages;
* several faults read in one wakeup are installed with ``DONTWAKE`` and woken with one ``UFFDIO_WAKE``
  per region; ``EEXIST`` is benign, ``EAGAIN`` drains events and retries;
* ``eager`` and ``prefetch`` install memory at the hand-off, before the first fault is served
  (``prefetch-background`` from a thread racing the vCPUs).

A session ends when its peer exits (a pidfd from ``SO_PEERCRED``) or the server is stopped. On a fatal
error the peer is killed (``SIGKILL``) so Firecracker never hangs on a fault nobody will serve, and the
server reports failure. Every page installed is recorded for the trace (``trace.npz``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import logging
import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firecracer.errors import FirecracerError, HandshakeError
from firecracer.uffd import abi, native
from firecracer.uffd.handshake import Handshake, Region, peer_pid, receive
from firecracer.uffd.memfile import MemoryFile
from firecracer.uffd.strategies import (
    KIND_DATA,
    Strategy,
    WorkingSet,
    parse_strategy,
    write_working_set,
    ws_page_size,
    ws_path_for,
)
from firecracer.uffd.trace import (
    FLAG_FAULTING,
    FLAG_WRITE,
    FLAG_ZERO,
    Action,
    Trace,
    gpa_of,
    make_trace,
    save_trace,
)

log = logging.getLogger("firecracer.uffd")

MISSING = 0
PRESENT = 1
REMOVED = 2
_EAGAIN_BUDGET_NS = 10_000_000_000  # give up on a range that stays busy for 10 s
_EAGER_CHUNK = 64 << 20


_COPY = struct.Struct("<QQQQq")


class _Wakeup(BaseException):
    """Raised in the serving thread (by SIGUSR1) when its peer exited or a stop was asked."""


class PeerGone(Exception):
    """The peer's memory is gone (it exited): the session ends, not an error."""


class ServeError(FirecracerError):
    """A session failed fatally; its peer was killed."""


# ---------------------------------------------------------------------------------------------------
# Recording

class _Recorder:
    """Installed runs (not pages), expanded to trace rows with numpy at the end."""

    __slots__ = ("blocks", "chunks", "runs")

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, int, int, int, int, int, int]] = []
        self.chunks: list[np.ndarray[Any, Any]] = []  # native fast-path records (native.REC_DTYPE)
        self.blocks: list[np.ndarray[Any, np.dtype[np.int64]]] = []  # bulk installs, already (N, 8)

    def as_array(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """All runs as an (N, 8) int64 array (t_ns, hva, off, n, flags, action, fault, svc)."""
        parts = [np.array(self.runs, dtype=np.int64).reshape(-1, 8)]
        for c in self.chunks:
            a = np.zeros((len(c), 8), dtype=np.int64)
            a[:, 0], a[:, 1], a[:, 2] = c["t_ns"], c["hva"], c["off"]
            a[:, 3] = 1
            a[:, 4], a[:, 5], a[:, 6], a[:, 7] = c["flags"], Action.LOAD, c["fault"], c["svc"]
            parts.append(a)
        parts.extend(self.blocks)
        return np.concatenate(parts)

    def add(self, t_ns: int, hva: int, off: int, n: int, flags: int, action: int, fault: int,
            svc: int) -> None:
        self.runs.append((t_ns, hva, off, n, flags, action, fault, svc))


def _expand(arr: np.ndarray[Any, np.dtype[np.int64]], ps: int) -> dict[str, Any]:
    """Run records (``_Recorder.as_array``; user addresses and offsets fit in 63 bits) → trace columns."""
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    n = arr[:, 3]
    rep = np.repeat(np.arange(arr.shape[0]), n)
    within = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)) * ps
    col = arr[rep]
    return {
        "t_ns": col[:, 0].astype(np.uint64), "hva": (col[:, 1] + within).astype(np.uint64),
        "file_off": (col[:, 2] + within).astype(np.uint64),
        "flags": col[:, 4].astype(np.uint8), "action": col[:, 5].astype(np.uint8),
        "fault": col[:, 6].astype(np.int32),
        "service_ns": np.minimum(col[:, 7], 0xFFFFFFFF).astype(np.uint32),
    }


class _Plan:
    """Runs to install, in order: one ``native.OP_DTYPE`` row each, plus its file offset and whether it
    is a zero fill; ``pieces`` (``native.PIECE_DTYPE``) of huge pages assembled in a staging buffer."""

    __slots__ = ("off", "ops", "pieces", "zero")

    def __init__(self, ops: np.ndarray[Any, Any], off: np.ndarray[Any, np.dtype[np.uint64]],
                 zero: np.ndarray[Any, np.dtype[np.bool_]], pieces: np.ndarray[Any, Any]) -> None:
        self.ops, self.off, self.zero, self.pieces = ops, off, zero, pieces

    def __len__(self) -> int:
        return len(self.ops)

    @classmethod
    def from_rows(cls, rows: list[tuple[int, int, int, int, bool, list[tuple[int, int, int]]]]) -> _Plan:
        """From ``(hva, src or 0, length, off, zero, pieces)`` rows (pieces: ``(off in page, src, len)``)."""
        ops = np.zeros(len(rows), dtype=native.OP_DTYPE)
        off = np.zeros(len(rows), dtype=np.uint64)
        zero = np.zeros(len(rows), dtype=bool)
        plist: list[tuple[int, int, int]] = []
        for i, (hva, src, length, o, z, pcs) in enumerate(rows):
            ops[i] = (hva, src, length, len(plist), len(pcs))
            off[i], zero[i] = o, z
            plist.extend(pcs)
        return cls(ops, off, zero, np.array(plist, dtype=native.PIECE_DTYPE))

    def take(self, idx: np.ndarray[Any, np.dtype[np.int64]]) -> _Plan:
        """The runs ``idx`` (pieces stay shared: ``piece0`` indexes the same array)."""
        return _Plan(np.ascontiguousarray(self.ops[idx]), self.off[idx], self.zero[idx], self.pieces)


def _expand_ranges(first: np.ndarray[Any, Any], count: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``concatenate(arange(f, f + c) for f, c in zip(first, count))``, vectorised."""
    count = count.astype(np.int64)
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(first.astype(np.int64) - (np.cumsum(count) - count), count)
    out: np.ndarray[Any, Any] = starts + np.arange(total, dtype=np.int64)
    return out


def _pool_exhausted(hva: int, off: int) -> str:
    from firecracer import hugepages

    try:
        p = hugepages.pool()
        have = f" (HugePages: {p.total} total, {p.free} free)"
    except FirecracerError:
        have = ""
    return (f"cannot install the 2 MiB page at {hva:#x} (file offset {off:#x}): the huge-page pool is "
            f"exhausted{have}; reserve more pages in {hugepages.NR_HUGEPAGES}")


# ---------------------------------------------------------------------------------------------------
# Session

class Session:
    """Serve one uffd hand-off until its peer exits or ``stop_fd`` becomes readable."""

    def __init__(self, hs: Handshake, mem: MemoryFile, strategy: Strategy, *, stop_fd: int, index: int = 0,
                 ws: WorkingSet | None = None, install_threads: int = 1) -> None:
        self.hs = hs
        self.mem = mem
        self.strategy = strategy
        self.stop_fd = stop_fd
        self.index = index
        self.ws = ws
        self.fd = hs.uffd
        self.ps = hs.page_size
        # 2 MiB installs are memory copies and gained 17-20 % from a second thread on our 2-core host;
        # 4 KiB ones are ioctl-bound and lost under load (docs/uffd.md): one thread unless told otherwise
        self.install_threads = install_threads or (2 if self.ps > 4096 and (os.cpu_count() or 1) >= 2 else 1)
        self.shift = self.ps.bit_length() - 1
        self.mask = ~(self.ps - 1)
        self.t0 = hs.received_ns
        self.regions: tuple[Region, ...] = hs.regions
        self.state = bytearray(mem.size >> self.shift)
        self.ops = abi.Ops(self.fd)
        self.rec = _Recorder()
        self.pending: deque[tuple[int, int]] = deque()
        self.events: Counter[str] = Counter()
        self.removes: list[dict[str, int]] = []
        self.latency_ns: list[int] = []
        self.nfaults = 0
        self.stale = 0
        self.eexist = 0
        self.eagain = 0
        self.ioctls = 0
        self.misses = 0
        self.late = 0
        self.last_fault_ns = 0
        self.error: str | None = None
        self.ended = ""
        self.prefetch: dict[str, Any] = {}
        self.pidfd = -1
        self._blocking = False
        self.native = False
        self._zero_buf = 0
        self._bg: threading.Thread | None = None
        self._bg_rec = _Recorder()
        self._stop_bg = threading.Event()
        self._count_lock = threading.Lock()
        self._ws_entry: np.ndarray[Any, np.dtype[np.int32]] | None = None
        self.peer_exe = ""
        if hs.peer_pid:
            with contextlib.suppress(OSError):
                self.peer_exe = os.readlink(f"/proc/{hs.peer_pid}/exe")
            try:
                self.pidfd = os.pidfd_open(hs.peer_pid)
            except OSError:
                self.pidfd = -1  # already gone: the loop ends at once
                self.ended = "peer-gone"
        if self.ps > 4096:
            # hugetlbfs ranges have no ZEROPAGE: zero pages are copied from this buffer, and pages of which
            # only some 4 KiB blocks hold data are assembled in it (it is all zero between installs)
            self._zero_buf = self._staging_buffer()

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> None:
        """The session's whole life; never raises (``error`` says what went wrong)."""
        try:
            if self.ended != "peer-gone":
                if self.strategy.kind == "eager":
                    self._install_all()
                elif self.strategy.kind == "prefetch" and self.ws is not None:
                    self._prepare_ws()
                    if self.strategy.background:
                        self._bg = threading.Thread(target=self._prefetch_bg, daemon=True,
                                                    name=f"uffd-prefetch-{self.index}")
                        self._bg.start()
                    else:
                        self._prefetch_fg()
                lib = native.load() if self.strategy.kind in ("ondemand", "eager", "prefetch") else None
                in_main = threading.current_thread() is threading.main_thread()
                if lib is not None:
                    self.ended = self._loop_native(lib)
                else:
                    self.ended = self._loop_blocking() if in_main else self._loop()
        except PeerGone:
            self.ended = "peer-gone"
        except Exception as exc:  # fatal: never leave the peer hanging on a fault
            self.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FirecracerError) else str(exc)
            self.ended = "error"
            log.error("uffd session %d failed: %s; killing peer %s", self.index, self.error, self.hs.peer_pid)
            self.kill_peer()
        finally:
            self._stop_bg.set()
            if self._bg is not None:
                self._bg.join(timeout=30)
            self.close()

    def kill_peer(self) -> None:
        """SIGKILL the peer (via its pidfd when we have one, so a recycled pid is never hit)."""
        with contextlib.suppress(OSError):
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.hs.peer_pid:
                os.kill(self.hs.peer_pid, signal.SIGKILL)

    def peer_alive(self) -> bool:
        """Whether the peer process still exists."""
        if self.pidfd < 0:
            return False
        r, _, _ = select.select([self.pidfd], [], [], 0)
        return not r

    def close(self) -> None:
        """Close the uffd and pidfd (idempotent)."""
        for attr in ("fd", "pidfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
        if self._zero_buf:
            abi.munmap(self._zero_buf, self.ps)
            self._zero_buf = 0

    def _staging_buffer(self) -> int:
        """A zeroed, populated ``page_size`` buffer (one per installing thread)."""
        return abi.mmap(self.ps, abi.PROT_READ | abi.PROT_WRITE,
                        abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_POPULATE)

    # -- event loop ----------------------------------------------------------------------------------

    def _loop(self) -> str:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self.stop_fd, select.POLLIN)
        if self.pidfd >= 0:
            poller.register(self.pidfd, select.POLLIN)
        uffd, stop_fd, pidfd = self.fd, self.stop_fd, self.pidfd
        while True:
            if self.pending:
                self._handle([], time.monotonic_ns())
            ready = poller.poll(1000)
            peer_exited = False
            for fd, ev in ready:
                if fd == stop_fd:
                    if self.peer_alive():
                        self.kill_peer()
                    return "stopped"
                if fd == pidfd:
                    peer_exited = True
                elif fd == uffd and ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    return "uffd-closed"
            msgs = self._read()
            if msgs:
                self._handle(msgs, time.monotonic_ns())
            elif peer_exited:
                return "peer-exited"

    def _loop_native(self, lib: ctypes.CDLL) -> str:
        """The loop with the C fast path (``native.fc_serve``): it serves single missing-data faults of
        region 0 and polls the peer's pidfd and the stop fd itself; everything else comes back here."""
        r0 = self.regions[0]
        state, mem, shift, ps = self.state, self.mem, self.shift, self.ps
        hole = None
        if not mem.dense:  # "hole" = not one plain copy: holes, and huge pages only partly data
            hole = np.ones(len(state), dtype=np.uint8)
            for ds, de in zip(mem.data_start, mem.data_end, strict=True):
                if ps == 4096:
                    hole[ds >> shift:(de + ps - 1) >> shift] = 0
                else:
                    hole[(ds + ps - 1) >> shift:de >> shift] = 0
        ws_entry = self._ws_entry
        state_view = (ctypes.c_char * len(state)).from_buffer(state)
        recbuf = np.zeros(4096, dtype=native.REC_DTYPE)
        left = np.zeros(native.MAX_MSGS * abi.MSG_SIZE, dtype=np.uint8)
        nleft = ctypes.c_long()
        args = (self.fd, self.pidfd, self.stop_fd, r0.base_host_virt_addr, r0.size, r0.offset, mem.addr,
                ctypes.addressof(state_view), None if hole is None else hole.ctypes.data,
                None if ws_entry is None else ws_entry.ctypes.data, shift, self.t0)
        serve = lib.fc_serve
        self.native = True
        fast_faults = 0
        try:
            while True:
                if self.pending:
                    self._handle([], time.monotonic_ns())
                n = serve(*args, self.nfaults, recbuf.ctypes.data, len(recbuf), left.ctypes.data,
                          ctypes.byref(nleft))
                if n == native.STOPPED:
                    if self.peer_alive():
                        self.kill_peer()
                    return "stopped"
                if n == native.PEER_EXITED:
                    return "peer-exited"
                if n < 0:
                    if -n in (errno.EINTR, errno.EAGAIN):
                        continue
                    if -n in (errno.EBADF, errno.EINVAL):
                        raise PeerGone
                    raise OSError(-n, f"serving the userfaultfd: {os.strerror(-n)}")
                if n:
                    chunk = recbuf[:n].copy()
                    self.rec.chunks.append(chunk)
                    self.nfaults += n
                    fast_faults += n
                    self.latency_ns.extend(chunk["svc"].tolist())
                    self.last_fault_ns = int(chunk["t_ns"][-1])
                    if ws_entry is not None:
                        self.misses += n
                if nleft.value:
                    msgs = list(abi.MSG.iter_unpack(left[:nleft.value * abi.MSG_SIZE].tobytes()))
                    self._handle(msgs, time.monotonic_ns())
        finally:
            self.events["pagefault"] += fast_faults
            self.ioctls += fast_faults
            del state_view

    def _loop_blocking(self) -> str:
        """The main-thread loop: one blocking ``read`` per wakeup (no ``poll``), single faults inline.

        The uffd is switched to blocking mode (Firecracker never reads it). A watcher thread polls the
        peer's pidfd and the stop fd and interrupts the read with SIGUSR1, whose handler raises
        ``_Wakeup``. Under PVM every syscall is costly, so a fault costs one ``read`` and one ioctl.
        """
        fd = self.fd
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        self._blocking = True
        reason: list[str] = []
        armed = [True]
        quit_fd = os.eventfd(0, os.EFD_CLOEXEC)
        main_ident = threading.get_ident()

        def watch() -> None:
            p = select.poll()
            for wfd in (self.pidfd, self.stop_fd, quit_fd):
                if wfd >= 0:
                    p.register(wfd, select.POLLIN)
            ready = {f for f, _ in p.poll()}
            if quit_fd in ready:
                return
            reason.append("stopped" if self.stop_fd in ready else "peer-exited")
            # a signal landing just before the loop enters read() is not seen by it: repeat until the
            # loop acknowledges by writing quit_fd
            while True:
                signal.pthread_kill(main_ident, signal.SIGUSR1)
                r, _, _ = select.select([quit_fd], [], [], 0.05)
                if r:
                    return

        woke = [False]
        in_read = [False]

        def on_signal(_signum: int, _frame: object) -> None:
            woke[0] = True
            if armed[0] and in_read[0]:  # only a blocked read is interrupted; bookkeeping never is
                raise _Wakeup

        old = signal.signal(signal.SIGUSR1, on_signal)
        watcher = threading.Thread(target=watch, name=f"uffd-watch-{self.index}", daemon=True)
        watcher.start()
        read, mono, unpack, pack_into, ioctl = os.read, time.monotonic_ns, abi.MSG.unpack, _COPY.pack_into, \
            fcntl.ioctl
        want = abi.MSG_SIZE * 256
        r0 = self.regions[0]
        base, rend, roff = r0.base_host_virt_addr, r0.end, r0.offset
        mask, shift, ps, t0 = self.mask, self.shift, self.ps, self.t0
        state, mem, maddr = self.state, self.mem, self.mem.addr
        dense = mem.dense
        fast = self.strategy.kind in ("ondemand", "eager", "prefetch")
        ws_entry = self._ws_entry
        runs_append, lat_append = self.rec.runs.append, self.latency_ns.append
        cbuf = bytearray(_COPY.size)
        copy_req = abi.UFFDIO_COPY
        pf = abi.UFFD_EVENT_PAGEFAULT
        fast_faults = 0
        gc_was = gc.isenabled()
        gc.disable()  # the loop makes no reference cycles; collections would only add latency
        try:
            while True:
                if self.pending:
                    self._handle([], mono())
                in_read[0] = True
                if woke[0]:
                    raise _Wakeup
                buf = read(fd, want)
                in_read[0] = False
                t_read = mono()
                if len(buf) == 32 and fast and not self.pending:
                    ev, _r1, _r2, _r3, flags, addr, _a2 = unpack(buf)
                    page = addr & mask
                    if ev == pf and base <= page < rend:
                        off = roff + (page - base)
                        idx = off >> shift
                        if state[idx] == MISSING and (dense or (ps == 4096 and mem.has_data(off, ps))) and (
                                ws_entry is None or ws_entry[idx] < 0):
                            pack_into(cbuf, 0, page, maddr + off, ps, 0, 0)
                            try:
                                ioctl(fd, copy_req, cbuf, True)
                            except OSError:
                                pass  # EEXIST/EAGAIN/…: the general path below sorts it out
                            else:
                                t = mono()
                                state[idx] = PRESENT
                                fi = self.nfaults
                                self.nfaults = fi + 1
                                fast_faults += 1
                                if ws_entry is not None:
                                    self.misses += 1
                                runs_append((t - t0, page, off, 1, FLAG_FAULTING | (flags & FLAG_WRITE),
                                             Action.LOAD, fi, t - t_read))
                                lat_append(t - t_read)
                                self.last_fault_ns = t - t0
                                continue
                if buf:
                    self._handle(list(abi.MSG.iter_unpack(buf)), t_read)
                elif not self.peer_alive():
                    return "peer-exited"
                else:
                    time.sleep(0.001)
        except _Wakeup:
            why = reason[0] if reason else "stopped"
            if why == "stopped" and self.peer_alive():
                self.kill_peer()
            return why
        finally:
            if gc_was:
                gc.enable()
            armed[0] = in_read[0] = False
            os.eventfd_write(quit_fd, 1)
            watcher.join(timeout=5)
            os.close(quit_fd)
            signal.signal(signal.SIGUSR1, old)
            self.events["pagefault"] += fast_faults
            self.ioctls += fast_faults

    def _read(self) -> list[tuple[int, int, int, int, int, int, int]]:
        out: list[tuple[int, int, int, int, int, int, int]] = []
        want = abi.MSG_SIZE * 256
        while True:
            if self._blocking and not select.select([self.fd], [], [], 0)[0]:
                break
            try:
                buf = os.read(self.fd, want)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL):
                    raise PeerGone from None
                raise
            if not buf:
                break
            out.extend(abi.MSG.iter_unpack(buf))
            if len(buf) < want:
                break
        return out

    def _sort_events(self, msgs: list[tuple[int, int, int, int, int, int, int]]) -> list[tuple[int, int]]:
        """Apply REMOVEs now, return the faults (``(address, flags)``) in arrival order."""
        faults: list[tuple[int, int]] = []
        for ev, _r1, _r2, _r3, a0, a1, _a2 in msgs:
            if ev == abi.UFFD_EVENT_PAGEFAULT:
                faults.append((a1, a0))
                continue
            name = abi.EVENT_NAMES.get(ev, f"0x{ev:02x}")
            self.events[name] += 1
            if ev == abi.UFFD_EVENT_REMOVE:
                self._remove(a0, a1)
            elif ev == abi.UFFD_EVENT_FORK:
                with contextlib.suppress(OSError):
                    os.close(a0 & 0xFFFFFFFF)  # the child's uffd: not ours to serve
                log.warning("uffd session %d: ignoring fork event", self.index)
            else:
                log.warning("uffd session %d: unexpected event %s (%#x %#x)", self.index, name, a0, a1)
        self.events["pagefault"] += len(faults)
        return faults

    def _handle(self, msgs: list[tuple[int, int, int, int, int, int, int]], t_read: int) -> None:
        faults = self._sort_events(msgs) if msgs else []
        if self.pending:
            faults = [*self.pending, *faults]
            self.pending.clear()
        if not faults:
            return
        if len(faults) == 1:
            addr, flags = faults[0]
            self._fault(addr, flags, t_read, False)
            done = time.monotonic_ns()
            self.latency_ns.append(done - t_read)
        else:
            touched: set[int] = set()
            for addr, flags in faults:
                touched.add(self._fault(addr, flags, t_read, True))
            for ri in touched:
                r = self.regions[ri]
                self.ops.wake(r.base_host_virt_addr, r.size)
                self.ioctls += 1
            done = time.monotonic_ns()
            self.latency_ns.extend([done - t_read] * len(faults))
        self.last_fault_ns = done - self.t0

    def _region_of(self, page: int) -> int:
        for i, r in enumerate(self.regions):
            if r.base_host_virt_addr <= page < r.end:
                return i
        raise ServeError(f"fault at host address {page:#x} is outside every region of the handshake "
                         f"({', '.join(f'{r.base_host_virt_addr:#x}+{r.size:#x}' for r in self.regions)})")

    def _fault(self, addr: int, flags: int, t_read: int, dontwake: bool) -> int:
        """Serve one fault; returns its region index."""
        fi = self.nfaults
        self.nfaults += 1
        page = addr & self.mask
        ri = self._region_of(page)
        r = self.regions[ri]
        off = r.offset + (page - r.base_host_virt_addr)
        idx = off >> self.shift
        st = self.state[idx]
        if st == PRESENT:  # installed meanwhile (fault-around, prefetch, a racing vCPU)
            self.stale += 1
            if not dontwake:
                self.ops.wake(page, self.ps)
                self.ioctls += 1
            return ri
        wflag = FLAG_FAULTING | (FLAG_WRITE if flags & abi.UFFD_PAGEFAULT_FLAG_WRITE else 0)
        src: int | None = None
        pieces: list[tuple[int, int, int]] | None = None
        zero = False
        if self.strategy.kind == "prefetch" and self._ws_entry is not None:
            e = int(self._ws_entry[idx])
            if e < 0:
                self.misses += 1
            else:
                self.late += 1
                ws = self.ws
                if ws is not None and ws.kinds[e] == KIND_DATA:
                    if ws.full[e]:
                        src = ws.src(e)
                    else:
                        pieces = ws.pieces(e)
                else:
                    zero = True
        if self.strategy.kind == "fault-around" and self.strategy.around > 1 and st != REMOVED:
            self._around(r, off, idx, wflag, fi, t_read, dontwake)
            return ri
        if src is None and pieces is None and st != REMOVED and not zero:
            if self.ps == 4096:
                zero = not self.mem.has_data(off, 4096)
                src = None if zero else self.mem.addr + off
            else:
                _h, msrc, _n, _o, zero, pcs = self._mem_rows(page, off, self.ps)[0]
                pieces, src = pcs or None, None if zero or pcs else msrc
        if st == REMOVED or zero:
            self._install(self.ops, self.rec, page, off, 1, None, Action.ZERO, wflag | FLAG_ZERO, fi, t_read,
                          dontwake)
        else:
            self._install(self.ops, self.rec, page, off, 1, src, Action.LOAD, wflag, fi, t_read, dontwake,
                          pieces=pieces)
        return ri

    def _mem_rows(self, hva: int, off: int, length: int, chunk: int = 0
                  ) -> list[tuple[int, int, int, int, bool, list[tuple[int, int, int]]]]:
        """How to install ``[off, off+length)`` (at ``hva``) from the memory file, as plan rows
        ``(hva, src, length, off, zero, pieces)``: data extents are copied, holes zero-filled, and a huge
        page only partly data is assembled from its data blocks (``pieces``) rather than copied whole
        (copying reads the holes through our mapping: page-cache zero pages, a fault per 4 KiB).
        ``chunk`` > 0 caps a data run's length (eager: bounded ioctls)."""
        mem, ps = self.mem, self.ps
        rows: list[tuple[int, int, int, int, bool, list[tuple[int, int, int]]]] = []
        if ps == 4096:
            for p_off, p_len, is_data in mem.split(off, length, ps):
                step = chunk if chunk and is_data else p_len
                for c in range(0, p_len, step):
                    o = p_off + c
                    rows.append((hva + (o - off), mem.addr + o if is_data else 0, min(step, p_len - c), o,
                                 not is_data, []))
            return rows
        for u in range(off, off + length, ps):
            parts = [(s, ln) for s, ln, d in mem.split(u, ps, 4096) if d]
            h = hva + (u - off)
            if not parts:
                rows.append((h, 0, ps, u, True, []))
            elif parts[0][1] == ps:
                last = rows[-1] if rows else None
                if last and last[1] and not last[4] and not last[5] and last[3] + last[2] == u and \
                        (not chunk or last[2] + ps <= chunk):
                    rows[-1] = (last[0], last[1], last[2] + ps, last[3], False, [])
                else:
                    rows.append((h, mem.addr + u, ps, u, False, []))
            else:
                rows.append((h, 0, ps, u, False, [(s - u, mem.addr + s, ln) for s, ln in parts]))
        return rows

    def _around(self, r: Region, off: int, idx: int, wflag: int, fi: int, t_read: int,
                dontwake: bool) -> None:
        n = self.strategy.around
        first = r.offset >> self.shift
        last = (r.offset + r.size) >> self.shift
        blk = idx - idx % n
        b0 = max(blk, first)
        b1 = min(blk + n, last)
        st = self.state
        # runs of missing pages in [b0, b1); the faulting page (missing) is inside one of them
        runs: list[tuple[int, int]] = []
        i = b0
        while i < b1:
            if st[i] != MISSING:
                i += 1
                continue
            j = i + 1
            while j < b1 and st[j] == MISSING:
                j += 1
            runs.append((i, j))
            i = j
        runs.sort(key=lambda ij: not (ij[0] <= idx < ij[1]))  # the faulting run first: wake early
        for i, j in runs:
            base = i << self.shift
            rows = self._mem_rows(r.base_host_virt_addr + (base - r.offset), base, (j - i) << self.shift)
            rows.sort(key=lambda row: not row[3] <= off < row[3] + row[2])  # the faulting piece first
            for hva, src, p_len, p_off, zero, pcs in rows:
                has_fault = p_off <= off < p_off + p_len
                self._install(self.ops, self.rec, hva, p_off, p_len >> self.shift,
                              None if zero or pcs else src, Action.AROUND, FLAG_ZERO if zero else 0, fi,
                              t_read, dontwake or not has_fault, fault_off=off if has_fault else -1,
                              fault_flags=wflag, pieces=pcs or None)

    def _remove(self, start: int, end: int) -> None:
        self.removes.append({"t_ns": time.monotonic_ns() - self.t0, "start": start, "end": end})
        for r in self.regions:
            s, e = max(start, r.base_host_virt_addr), min(end, r.end)
            if s >= e:
                continue
            a = (r.offset + (s - r.base_host_virt_addr)) >> self.shift
            b = (r.offset + (e - r.base_host_virt_addr) + self.ps - 1) >> self.shift
            self.state[a:b] = bytes([REMOVED]) * (b - a)

    def _drain_for_retry(self) -> None:
        """On EAGAIN: read queued events now (REMOVEs applied), keep their faults for later."""
        msgs = self._read()
        if msgs:
            self.pending.extend(self._sort_events(msgs))

    # -- installing ----------------------------------------------------------------------------------

    def _install(self, ops: abi.Ops, rec: _Recorder, hva: int, off: int, npages: int, src: int | None,
                 action: int, flags: int, fault: int, t_start: int, dontwake: bool, *, fault_off: int = -1,
                 fault_flags: int = 0, background: bool = False,
                 pieces: list[tuple[int, int, int]] | None = None, staging: int = 0) -> int:
        """Install ``npages`` at ``hva`` (file offset ``off``) from ``src`` (None: zeros); returns pages done.

        ``pieces`` (one huge page): assemble it from ``(offset in page, our address, length)`` pieces in
        the zeroed ``staging`` buffer (default: the session's) and copy that. Partial installs continue
        after the page that stopped them; ``EEXIST`` pages are skipped.
        """
        ps, shift = self.ps, self.shift
        mode = abi.UFFDIO_COPY_MODE_DONTWAKE if dontwake else 0
        staging = staging or self._zero_buf
        if pieces:
            assert npages == 1 and staging, "only single huge pages are assembled"
            for poff, psrc, plen in pieces:
                ctypes.memmove(staging + poff, psrc, plen)
            try:
                return self._install(ops, rec, hva, off, 1, staging, action, flags, fault, t_start, dontwake,
                                     fault_off=fault_off, fault_flags=fault_flags, background=background)
            finally:
                for poff, _psrc, plen in pieces:
                    ctypes.memset(staging + poff, 0, plen)
        done_total = 0
        pos = 0
        busy_since = 0
        length = npages << shift
        while pos < length:
            rest = length - pos
            if src is not None:
                res = ops.copy(hva + pos, src + pos, rest, mode)
            elif staging:
                rest = ps
                res = ops.copy(hva + pos, staging, ps, mode)
            else:
                res = ops.zeropage(hva + pos, rest, mode)
            self.ioctls += 1
            if res > 0:
                t = time.monotonic_ns()
                n = res >> shift
                self._record(rec, t, hva + pos, off + pos, n, flags, action, fault, t - t_start, fault_off,
                             fault_flags)
                i0 = (off + pos) >> shift
                if n == 1:
                    self.state[i0] = PRESENT
                else:
                    self.state[i0:i0 + n] = b"\x01" * n
                pos += n << shift
                done_total += n
                busy_since = 0
            elif res == -errno.EEXIST:
                if ps > 4096 and not self._peer_has_page(hva + pos):
                    # hugetlbfs answers EEXIST, not ENOMEM, when its pool has no free page left (and the
                    # page table exists): taking it as "present" would leave the vCPU faulting forever
                    raise ServeError(_pool_exhausted(hva + pos, off + pos))
                self.eexist += 1
                log.info("uffd session %d: %#x (file offset %#x) was already present", self.index, hva + pos,
                         off + pos)
                self.state[(off + pos) >> shift] = PRESENT
                if not dontwake:
                    ops.wake(hva + pos, ps)
                pos += ps
            elif res == -errno.EAGAIN:
                self.eagain += 1
                now = time.monotonic_ns()
                busy_since = busy_since or now
                if now - busy_since > _EAGAIN_BUDGET_NS:
                    raise ServeError(f"install at {hva + pos:#x} kept failing with EAGAIN for 10 s")
                if background:
                    time.sleep(0.0001)
                else:
                    self._drain_for_retry()
            elif res in (-errno.ESRCH, -errno.ENOENT):
                raise PeerGone
            else:
                raise ServeError(f"{'UFFDIO_COPY' if src is not None else 'UFFDIO_ZEROPAGE'} of {rest} bytes "
                                 f"at {hva + pos:#x} (file offset {off + pos:#x}) failed: "
                                 f"{os.strerror(-res)}")
        return done_total

    def _peer_has_page(self, hva: int) -> bool:
        """Whether the peer really has a page mapped at ``hva`` (its ``/proc/PID/pagemap``); True when
        that cannot be read (then the pool itself is asked: no free huge page means it is not there)."""
        try:
            fd = os.open(f"/proc/{self.hs.peer_pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            try:
                entry = os.pread(fd, 8, (hva >> 12) * 8)
            finally:
                os.close(fd)
            if len(entry) == 8:
                return bool(int.from_bytes(entry, "little") >> 63)
        except OSError:
            pass
        from firecracer import hugepages

        try:
            return hugepages.pool().free > 0
        except FirecracerError:
            return True

    def _record(self, rec: _Recorder, t: int, hva: int, off: int, n: int, flags: int, action: int, fault: int,
                svc: int, fault_off: int, fault_flags: int) -> None:
        tr = t - self.t0
        if fault_off < 0 or not off <= fault_off < off + (n << self.shift):
            rec.add(tr, hva, off, n, flags, action, fault, svc)
            return
        k = (fault_off - off) >> self.shift
        if k:
            rec.add(tr, hva, off, k, flags, action, fault, svc)
        zero = flags & FLAG_ZERO
        rec.add(tr, hva + (k << self.shift), fault_off, 1, fault_flags | zero,
                Action.ZERO if zero else Action.LOAD, fault, svc)
        if n - k - 1:
            rec.add(tr, hva + ((k + 1) << self.shift), fault_off + self.ps, n - k - 1, flags, action, fault,
                    svc)

    def _install_all(self) -> None:
        """``eager``: copy every region whole (holes as zero pages), then wake everything."""
        t_start = time.monotonic_ns()
        with contextlib.suppress(OSError):  # read ahead all data (not holes): it is about to be copied
            for s, e in zip(self.mem.data_start, self.mem.data_end, strict=True):
                os.posix_fadvise(self.mem.fd, s, e - s, os.POSIX_FADV_WILLNEED)
        rows = []
        for r in self.regions:
            rows += self._mem_rows(r.base_host_virt_addr, r.offset, r.size, _EAGER_CHUNK)
        plan = _Plan.from_rows(rows)
        self._install_plan(plan, Action.EAGER, t_start)
        self._wake_all()
        self.prefetch = {"eager_ms": (time.monotonic_ns() - t_start) / 1e6, "runs": len(plan),
                         "staged": int((plan.ops["npieces"] > 0).sum()), "threads": self._threads_for(plan)}

    def _threads_for(self, plan: _Plan) -> int:
        return min(self.install_threads, max(1, len(plan)))

    def _install_plan(self, plan: _Plan, action: int, t_start: int) -> int:
        """Install ``plan`` (``DONTWAKE``) with ``install_threads`` threads taking every n-th run (so all
        advance in loading order); returns pages installed."""
        threads = self._threads_for(plan)
        if threads == 1:
            return self._run_plan(plan, action, t_start, self.rec, self.ops, self._zero_buf, background=False)
        n = len(plan)
        recs = [_Recorder() for _ in range(threads)]
        pages = [0] * threads
        errors: list[BaseException] = []
        bufs = [self._staging_buffer() if self.ps > 4096 else 0 for _ in range(threads)]

        def work(k: int) -> None:
            try:
                pages[k] = self._run_plan(plan.take(np.arange(k, n, threads)), action, t_start, recs[k],
                                          abi.Ops(self.fd), bufs[k], background=False)
            except BaseException as exc:  # re-raised in the session thread below
                errors.append(exc)

        ths = [threading.Thread(target=work, args=(k,), name=f"uffd-install-{self.index}-{k}")
               for k in range(threads)]
        try:
            for th in ths:
                th.start()
        finally:
            for th in ths:
                if th.is_alive() or th.ident is not None:
                    th.join()
            for buf in bufs:
                if buf:
                    abi.munmap(buf, self.ps)
        for rec in recs:
            self.rec.blocks.extend(rec.blocks)
            self.rec.runs.extend(rec.runs)
        if errors:
            raise errors[0]
        return sum(pages)

    def _run_plan(self, plan: _Plan, action: int, t_start: int, rec: _Recorder, ops: abi.Ops, staging: int, *,
                  background: bool) -> int:
        """Install ``plan``'s runs in order: batches in C (``native.install``) where available, the run that
        stopped a batch (or every run, without the native helper) through :meth:`_install`. ``background``:
        wake each run's waiters, small batches, stop when asked."""
        lib = native.load()
        shift = self.shift
        n = len(plan)
        dontwake = not background
        mode = abi.UFFDIO_COPY_MODE_DONTWAKE if dontwake else 0
        done_ns = np.zeros(n, dtype=np.uint64)
        state = np.frombuffer(self.state, dtype=np.uint8)
        pages = 0
        i = 0
        batch = 32 if background else max(n, 1)
        while i < n:
            if background and self._stop_bg.is_set():
                break
            j = min(n, i + batch)
            k = 0
            if lib is not None:
                k, _err, partial = native.install(lib, self.fd, plan.ops[i:j], plan.pieces, staging or 0,
                                                  zeropage=self.ps == 4096, mode=mode, t0=self.t0,
                                                  done_ns=done_ns[i:j])
                if k:
                    o = plan.ops[i:i + k]
                    npg = (o["len"] >> np.uint64(shift)).astype(np.int64)
                    blk = np.empty((k, 8), dtype=np.int64)
                    blk[:, 0] = done_ns[i:i + k].astype(np.int64)
                    blk[:, 1] = o["dst"].astype(np.int64)
                    blk[:, 2] = plan.off[i:i + k].astype(np.int64)
                    blk[:, 3] = npg
                    blk[:, 4] = np.where(plan.zero[i:i + k], FLAG_ZERO, 0)
                    blk[:, 5] = action
                    blk[:, 6] = -1
                    blk[:, 7] = blk[:, 0] - (t_start - self.t0)
                    rec.blocks.append(blk)
                    first = (plan.off[i:i + k] >> np.uint64(shift)).astype(np.int64)
                    state[_expand_ranges(first, npg)] = PRESENT
                    pages += int(npg.sum())
                    with self._count_lock:  # install threads share the counter
                        self.ioctls += k
                i += k
                if i >= j:
                    continue
            else:
                partial = 0
            # run i, from byte `partial` on, the careful way (EEXIST, EAGAIN, errors, partial copies)
            op = plan.ops[i]
            dst, src, length, off = int(op["dst"]), int(op["src"]), int(op["len"]), int(plan.off[i])
            p0, np_ = int(op["piece0"]), int(op["npieces"])
            pcs = [(int(p["off"]), int(p["src"]), int(p["len"])) for p in plan.pieces[p0:p0 + np_]] or None
            zero = bool(plan.zero[i])
            flags = FLAG_ZERO if zero else 0
            if partial:  # only runs of 4 KiB pages stop part-way: record what went in, go on after it
                t = time.monotonic_ns()
                done = partial >> shift
                self._record(rec, t, dst, off, done, flags, action, -1, t - t_start, -1, 0)
                state[off >> shift:(off >> shift) + done] = PRESENT
                pages += done
            pages += self._install(ops, rec, dst + partial, off + partial, (length - partial) >> shift,
                                   None if zero or pcs else src + partial, action, flags, -1, t_start,
                                   dontwake, background=background, pieces=pcs, staging=staging)
            i += 1
        return pages

    def _wake_all(self) -> None:
        for r in self.regions:
            self.ops.wake(r.base_host_virt_addr, r.size)
            self.ioctls += 1

    def _prepare_ws(self) -> None:
        assert self.ws is not None
        entry = np.full(len(self.state), -1, dtype=np.int32)
        idx = (self.ws.offsets >> np.uint64(self.shift)).astype(np.int64)
        entry[idx[::-1]] = np.arange(self.ws.n, dtype=np.int32)[::-1]
        self._ws_entry = entry

    def _ws_plan(self) -> _Plan:
        """The working set as install runs, in loading order (one per run of ``WorkingSet.runs``; huge
        zero pages one by one, from the zero staging buffer; huge pages stored in blocks assembled)."""
        assert self.ws is not None
        ws, ps = self.ws, self.ps
        if ws.page_size != ps:
            raise ServeError(f"{ws.path}: working set of {ws.page_size}-byte pages, but this restore uses "
                             f"{ps}-byte pages (record the trace with a restore of the same page size)")
        starts, lengths = ws.runs([r.offset for r in self.regions])
        offs = ws.offsets[starts]
        roffs = np.array([r.offset for r in self.regions], dtype=np.uint64)
        rid = np.searchsorted(roffs, offs, side="right") - 1
        bases = np.array([r.base_host_virt_addr for r in self.regions], dtype=np.uint64)
        hvas = bases[rid] + (offs - roffs[rid])
        zero = ws.kinds[starts] != KIND_DATA
        staged = ~zero & ~ws.full[starts]
        if ps > 4096:  # hole runs of huge pages: one copy of the zero buffer per page
            per = np.where(zero, lengths, 1)
            rep = np.repeat(np.arange(len(starts)), per)
            within = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
            starts = starts[rep] + within
            lengths = np.where(zero[rep], 1, lengths[rep])
            hvas = hvas[rep] + within.astype(np.uint64) * np.uint64(ps)
            offs = offs[rep] + within.astype(np.uint64) * np.uint64(ps)
            zero, staged = zero[rep], staged[rep]
        ops = np.zeros(len(starts), dtype=native.OP_DTYPE)
        ops["dst"] = hvas
        ops["len"] = lengths.astype(np.uint64) * np.uint64(ps)
        src = np.uint64(ws.addr + ws.data_offset) + ws.first_block[starts].astype(np.uint64) * np.uint64(4096)
        ops["src"] = np.where(zero | staged, np.uint64(0), src)
        plist: list[tuple[int, int, int]] = []
        for i in np.flatnonzero(staged).tolist():
            pcs = ws.pieces(int(starts[i]))
            ops[i]["piece0"], ops[i]["npieces"] = len(plist), len(pcs)
            plist.extend(pcs)
        return _Plan(ops, offs.astype(np.uint64), zero, np.array(plist, dtype=native.PIECE_DTYPE))

    def _prefetch_fg(self) -> None:
        """Install the working set before serving any fault (all DONTWAKE, then one wake per region)."""
        t_start = time.monotonic_ns()
        plan = self._ws_plan()
        pages = self._install_plan(plan, Action.PREFETCH, t_start)
        self._wake_all()
        self.prefetch.update({"installed": pages, "runs": len(plan), "threads": self._threads_for(plan),
                              "staged": int((plan.ops["npieces"] > 0).sum()),
                              "install_ms": (time.monotonic_ns() - t_start) / 1e6, "mode": "before-resume"})

    def _prefetch_bg(self) -> None:
        """Background install racing the vCPUs: each run wakes its own waiters; errors end quietly."""
        t_start = time.monotonic_ns()
        ops = abi.Ops(self.fd)
        pages = 0
        plan = self._ws_plan()
        staging = self._staging_buffer() if self.ps > 4096 else 0
        try:
            pages = self._run_plan(plan, Action.PREFETCH, t_start, self._bg_rec, ops, staging,
                                   background=True)
        except (PeerGone, ServeError, OSError) as exc:
            log.info("background prefetch stopped: %s", exc)
        finally:
            if staging:
                abi.munmap(staging, self.ps)
        self.prefetch.update({"installed": pages, "runs": len(plan), "threads": 1,
                              "install_ms": (time.monotonic_ns() - t_start) / 1e6, "mode": "background"})

    # -- results -------------------------------------------------------------------------------------

    def peer_version(self) -> str | None:
        """The peer's Firecracker version (``--version`` of its executable), None if it is not one."""
        if not self.peer_exe or "firecracker" not in Path(self.peer_exe).name:
            return None
        from firecracer.fcversion import firecracker_version

        try:
            return str(firecracker_version(self.peer_exe.removesuffix(" (deleted)")))
        except FirecracerError:
            return None

    def trace(self, *, vmm: str = "firecracker", firecracker_version: str | None = None) -> Trace:
        """The session's trace (rows sorted by time); Firecracker's version is asked of the peer's binary."""
        cols = _expand(np.concatenate([self.rec.as_array(), self._bg_rec.as_array()]), self.ps)
        cols["gpa"] = gpa_of(cols["file_off"], self.mem.size)
        meta: dict[str, Any] = {
            "page_size": self.ps, "strategy": str(self.strategy),
            "regions": [r.as_dict() for r in self.regions], "vmm": vmm, "mem_file": str(self.mem.path),
            "faults": self.nfaults, "events": dict(self.events), "removes": self.removes,
            "handshake": self.hs.generation, "peer_pid": self.hs.peer_pid, "mem": self.mem.identity,
        }
        version = firecracker_version or self.peer_version()
        if version:
            meta["firecracker_version"] = version
        if self.peer_exe:
            meta["peer_exe"] = self.peer_exe
        return make_trace(cols, meta)

    def metrics(self) -> dict[str, Any]:
        """Counts, bytes and latency percentiles of this session."""
        runs = np.concatenate([self.rec.as_array(), self._bg_rec.as_array()])
        counts = np.bincount(runs[:, 5], weights=runs[:, 3], minlength=len(Action)) if len(runs) else \
            np.zeros(len(Action))
        pages = Counter({a.name.lower(): int(counts[a.value]) for a in Action})
        zero_pages = int(runs[(runs[:, 4] & FLAG_ZERO) != 0, 3].sum())
        total = sum(pages.values())
        lat = np.array(self.latency_ns, dtype=np.float64) / 1e3
        pct = ({f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)} |
               {"mean": round(float(lat.mean()), 1), "max": round(float(lat.max()), 1)}) if lat.size else {}
        out: dict[str, Any] = {
            "session": self.index, "strategy": str(self.strategy), "peer_pid": self.hs.peer_pid,
            "handshake": self.hs.generation, "page_size": self.ps, "regions": len(self.regions),
            "mem_bytes": self.mem.size, "faults": self.nfaults, "stale_faults": self.stale,
            "events": dict(self.events),
            "pages": {a.name.lower(): pages.get(a.name.lower(), 0) for a in Action},
            "pages_total": total, "pages_zero": zero_pages,
            "bytes_copied": (total - zero_pages) * self.ps, "bytes_zeroed": zero_pages * self.ps,
            "ioctls": self.ioctls, "eexist": self.eexist, "eagain": self.eagain,
            "latency_us": pct, "handshake_to_last_fault_ms": round(self.last_fault_ns / 1e6, 3),
            "ended": self.ended, "error": self.error, "native_fast_path": self.native,
        }
        if self.strategy.kind in ("prefetch", "eager"):
            pf = dict(self.prefetch)
            if self.strategy.kind == "prefetch":
                pf.update({"misses": self.misses, "late": self.late})
                if self.ws is not None:
                    pf["ws_pages"] = self.ws.n
            out["prefetch"] = pf
        return out


# ---------------------------------------------------------------------------------------------------
# Server

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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name and rename it, so readers never see half a file."""
    from firecracer.fsio import atomic_write

    atomic_write(path, json.dumps(data, indent=2) + "\n", "metrics")


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
        self.mem = MemoryFile(mem_file, populate=populate, mem_id=mem_id)
        self.ws_path: Path | None = None
        if self.strategy.kind == "prefetch":
            assert self.strategy.trace is not None
            try:
                self.ws_path = self._prepare_prefetch(self.strategy.trace)
            except BaseException:
                self.mem.close()
                raise
            if self.read_ahead:
                self._read_ahead_ns = read_ahead(self.ws_path)
        self._stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sock: socket.socket | None = None

    def _prepare_prefetch(self, trace_path: Path) -> Path:
        """The working-set file prefetch installs, checked against this memory file (built if missing).

        :raises FirecracerError: the trace, or the working set, was recorded on another memory file (one
            line naming both), or the working set's pages differ from this memory file's.
        """
        from firecracer.uffd.memfile import identity_mismatch
        from firecracer.uffd.strategies import check_trace_matches, trace_identity
        from firecracer.uffd.trace import load_trace

        check_trace_matches(load_trace(trace_path), self.mem, trace_path)
        ws_path = ws_path_for(trace_path)
        if ws_page_size(ws_path) is None:  # missing, or an older format: (re)build it
            write_working_set(trace_path, self.mem, ws_path)
            return ws_path
        ws = WorkingSet(ws_path, mem_size=self.mem.size, populate=False)
        try:
            why = identity_mismatch(ws.meta.get("mem"), self.mem.identity)
            if why:
                raise FirecracerError(f"working set {ws_path} does not belong to memory file "
                                      f"{self.mem.path}: {why}; rebuild it with 'firecracer uffd "
                                      f"working-set {trace_path} {self.mem.path} --force'")
            made_from = ws.meta.get("trace")
            if isinstance(made_from, dict) and \
                    made_from.get("sha256") != trace_identity(trace_path)["sha256"]:
                raise FirecracerError(f"working set {ws_path} was built from another trace than {trace_path} "
                                      f"({made_from.get('path')}); rebuild it with 'firecracer uffd "
                                      f"working-set {trace_path} {self.mem.path} --force'")
            ws.verify_against(self.mem, samples=16)
        finally:
            ws.close()
        return ws_path

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
                    s.prefetch["ws_read_ms"] = read_ms
                    s.prefetch["ws_bytes"] = ws.file_size
                    if self._read_ahead_ns:  # how long before the hand-off the file started to be read
                        ahead = (hs.received_ns - self._read_ahead_ns) / 1e6
                        s.prefetch["ws_read_ahead_ms"] = round(ahead, 3)
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
            if self.trace_out is not None:
                out = self.trace_out if s.index == 0 else self.trace_out.with_name(
                    f"{self.trace_out.stem}-{s.index}{self.trace_out.suffix or '.npz'}")
                traces.append((s, out))
                result.traces.append(out)
        if self.metrics_out is not None:
            write_json_atomic(self.metrics_out, result.metrics())
        for s, out in traces:
            tr = s.trace(firecracker_version=self.firecracker_version)
            save_trace(tr, out)
        for s, out in traces:
            if self.write_ws and self.strategy.kind in ("ondemand", "fault-around") and s.nfaults:
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
