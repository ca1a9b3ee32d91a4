"""The session's event loops: the hot path of the page server.

Which one runs (``Session.run``): :func:`serve_native` when the native helper loads and the strategy
allows the fast path; else :func:`serve_blocking` in the main thread (one blocking ``read`` per
wakeup), :func:`serve_poll` in other threads (clones served in parallel). All three serve the commonest
case — one event, a missing data page, not in the working set — without leaving the loop, and hand
everything else to ``Session.handle``. Each returns why the session ended (``stopped``,
``peer-exited``, ``uffd-closed``). Measured in docs/uffd.md; keep them free of per-fault allocations.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import os
import select
import signal
import struct
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from firecracer.uffd import abi, native
from firecracer.uffd.installer import MISSING, PRESENT, PeerGone
from firecracer.uffd.trace import FLAG_FAULTING, FLAG_WRITE, Action

if TYPE_CHECKING:
    from firecracer.uffd.session import Session

_COPY = struct.Struct("<QQQQq")  # struct uffdio_copy: dst, src, len, mode, copy


class _Wakeup(BaseException):
    """Raised in the serving thread (by SIGUSR1) when its peer exited or a stop was asked."""


def serve_poll(s: Session) -> str:
    """``poll`` on uffd + stop fd + pidfd, every event through ``Session.handle`` (threaded sessions)."""
    poller = select.poll()
    poller.register(s.fd, select.POLLIN)
    poller.register(s.stop_fd, select.POLLIN)
    if s.pidfd >= 0:
        poller.register(s.pidfd, select.POLLIN)
    uffd, stop_fd, pidfd = s.fd, s.stop_fd, s.pidfd
    while True:
        if s.pending:
            s.handle([], time.monotonic_ns())
        ready = poller.poll(1000)
        peer_exited = False
        for fd, ev in ready:
            if fd == stop_fd:
                if s.peer_alive():
                    s.kill_peer()
                return "stopped"
            if fd == pidfd:
                peer_exited = True
            elif fd == uffd and ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return "uffd-closed"
        msgs = s.read_events()
        if msgs:
            s.handle(msgs, time.monotonic_ns())
        elif peer_exited:
            return "peer-exited"


def serve_native(s: Session, lib: ctypes.CDLL) -> str:
    """The loop with the C fast path (``native.fc_serve``): it serves single missing-data faults of
    region 0 and polls the peer's pidfd and the stop fd itself; everything else comes back here."""
    r0 = s.regions[0]
    state, mem, shift, ps = s.state, s.mem, s.shift, s.ps
    hole = None
    if not mem.dense:  # "hole" = not one plain copy: holes, and huge pages only partly data
        hole = np.ones(len(state), dtype=np.uint8)
        for ds, de in zip(mem.data_start, mem.data_end, strict=True):
            if ps == 4096:
                hole[ds >> shift:(de + ps - 1) >> shift] = 0
            else:
                hole[(ds + ps - 1) >> shift:de >> shift] = 0
    ws_entry = s.ws_entry
    state_view = (ctypes.c_char * len(state)).from_buffer(state)
    recbuf = np.zeros(4096, dtype=native.REC_DTYPE)
    left = np.zeros(native.MAX_MSGS * abi.MSG_SIZE, dtype=np.uint8)
    nleft = ctypes.c_long()
    args = (s.fd, s.pidfd, s.stop_fd, r0.base_host_virt_addr, r0.size, r0.offset, mem.addr,
            ctypes.addressof(state_view), None if hole is None else hole.ctypes.data,
            None if ws_entry is None else ws_entry.ctypes.data, shift, s.t0)
    serve = lib.fc_serve
    s.native = True
    fast_faults = 0
    try:
        while True:
            if s.pending:
                s.handle([], time.monotonic_ns())
            n = serve(*args, s.nfaults, recbuf.ctypes.data, len(recbuf), left.ctypes.data,
                      ctypes.byref(nleft))
            if n == native.STOPPED:
                if s.peer_alive():
                    s.kill_peer()
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
                s.rec.chunks.append(chunk)
                s.nfaults += n
                fast_faults += n
                s.latency_ns.extend(chunk["svc"].tolist())
                s.kinds.extend(bytes(n))  # faultclass.DATA_INSTALLED: all the C path serves
                s.last_fault_ns = int(chunk["t_ns"][-1])
                if ws_entry is not None:
                    s.misses += n
            if nleft.value:
                msgs = list(abi.MSG.iter_unpack(left[:nleft.value * abi.MSG_SIZE].tobytes()))
                s.handle(msgs, time.monotonic_ns())
    finally:
        s.events["pagefault"] += fast_faults
        s.installer.ioctls += fast_faults
        del state_view


def serve_blocking(s: Session) -> str:
    """The main-thread loop: one blocking ``read`` per wakeup (no ``poll``), single faults inline.

    The uffd is switched to blocking mode (Firecracker never reads it). A watcher thread polls the
    peer's pidfd and the stop fd and interrupts the read with SIGUSR1, whose handler raises
    ``_Wakeup``. Under PVM every syscall is costly, so a fault costs one ``read`` and one ioctl.
    """
    fd = s.fd
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    s.blocking = True
    reason: list[str] = []
    armed = [True]
    quit_fd = os.eventfd(0, os.EFD_CLOEXEC)
    main_ident = threading.get_ident()

    def watch() -> None:
        p = select.poll()
        for wfd in (s.pidfd, s.stop_fd, quit_fd):
            if wfd >= 0:
                p.register(wfd, select.POLLIN)
        ready = {f for f, _ in p.poll()}
        if quit_fd in ready:
            return
        reason.append("stopped" if s.stop_fd in ready else "peer-exited")
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
    watcher = threading.Thread(target=watch, name=f"uffd-watch-{s.index}", daemon=True)
    watcher.start()
    read, mono, unpack, pack_into, ioctl = os.read, time.monotonic_ns, abi.MSG.unpack, _COPY.pack_into, \
        fcntl.ioctl
    want = abi.MSG_SIZE * 256
    r0 = s.regions[0]
    base, rend, roff = r0.base_host_virt_addr, r0.end, r0.offset
    mask, shift, ps, t0 = s.mask, s.shift, s.ps, s.t0
    state, mem, maddr = s.state, s.mem, s.mem.addr
    dense = mem.dense
    fast = s.strategy.fast_path and mem.direct  # a compressed file is read only through ensure()
    ws_entry = s.ws_entry
    runs_append, lat_append, kind_append = s.rec.runs.append, s.latency_ns.append, s.kinds.append
    cbuf = bytearray(_COPY.size)
    copy_req = abi.UFFDIO_COPY
    pf = abi.UFFD_EVENT_PAGEFAULT
    fast_faults = 0
    gc_was = gc.isenabled()
    gc.disable()  # the loop makes no reference cycles; collections would only add latency
    try:
        while True:
            if s.pending:
                s.handle([], mono())
            in_read[0] = True
            if woke[0]:
                raise _Wakeup
            buf = read(fd, want)
            in_read[0] = False
            t_read = mono()
            if len(buf) == 32 and fast and not s.pending:
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
                            fi = s.nfaults
                            s.nfaults = fi + 1
                            fast_faults += 1
                            if ws_entry is not None:
                                s.misses += 1
                            runs_append((t - t0, page, off, 1, FLAG_FAULTING | (flags & FLAG_WRITE),
                                         Action.LOAD, fi, t - t_read))
                            lat_append(t - t_read)
                            kind_append(0)  # faultclass.DATA_INSTALLED
                            s.last_fault_ns = t - t0
                            continue
            if buf:
                s.handle(list(abi.MSG.iter_unpack(buf)), t_read)
            elif not s.peer_alive():
                return "peer-exited"
            else:
                time.sleep(0.001)
    except _Wakeup:
        why = reason[0] if reason else "stopped"
        if why == "stopped" and s.peer_alive():
            s.kill_peer()
        return why
    finally:
        if gc_was:
            gc.enable()
        armed[0] = in_read[0] = False
        os.eventfd_write(quit_fd, 1)
        watcher.join(timeout=5)
        os.close(quit_fd)
        signal.signal(signal.SIGUSR1, old)
        s.events["pagefault"] += fast_faults
        s.installer.ioctls += fast_faults
