"""One hand-off served until its peer exits: the session's lifecycle, its events and fault dispatch.

A :class:`Session` owns the uffd and the peer's pidfd; its :class:`~firecracer.uffd.installer.Installer`
puts pages in; its strategy (``firecracer.uffd.strategies``) says what happens at the hand-off and how
far one fault reaches; the loops (``firecracer.uffd.loops``) read events:

* every wakeup drains all queued events; ``REMOVE`` events are applied before the faults read with
  them (pages in a removed range are served as zero afterwards);
* several faults read in one wakeup are installed with ``DONTWAKE`` and woken with one ``UFFDIO_WAKE``
  per region; ``EEXIST`` is benign, ``EAGAIN`` drains events and retries.

On a fatal error the peer is killed (``SIGKILL``) so Firecracker never hangs on a fault nobody will
serve. Every page installed is recorded for the trace (``firecracer.uffd.recorder``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from firecracer.errors import FirecracerError
from firecracer.uffd import abi, faultclass, loops, native
from firecracer.uffd.handshake import Handshake, Region
from firecracer.uffd.installer import PRESENT, REMOVED, Installer, PeerGone, ServeError
from firecracer.uffd.memfile import MemoryFile
from firecracer.uffd.recorder import Recorder, session_metrics, session_trace
from firecracer.uffd.strategies import Strategy
from firecracer.uffd.trace import FLAG_FAULTING, FLAG_WRITE, FLAG_ZERO, Action, Trace
from firecracer.uffd.workingset import WorkingSet

log = logging.getLogger("firecracer.uffd")

#: An event as ``abi.MSG`` unpacks it: ``(event, 3 reserved, arg0, arg1, arg2)``.
Msg = tuple[int, int, int, int, int, int, int]


class Session:
    """Serve one uffd hand-off until its peer exits or ``stop_fd`` becomes readable."""

    def __init__(self, hs: Handshake, mem: MemoryFile, strategy: Strategy, *, stop_fd: int, index: int = 0,
                 ws: WorkingSet | None = None, install_threads: int = 0) -> None:
        self.hs = hs
        self.mem = mem
        self.strategy = strategy
        self.stop_fd = stop_fd
        self.index = index
        self.ws = ws
        self.fd = hs.uffd
        self.ps = hs.page_size
        self.shift = self.ps.bit_length() - 1
        self.mask = ~(self.ps - 1)
        self.t0 = hs.received_ns
        self.regions: tuple[Region, ...] = hs.regions
        self.rec = Recorder()
        self.bg_rec = Recorder()  # what a background install recorded (its own thread)
        self.installer = Installer(self.fd, mem, self.regions, self.ps, self.t0, self.rec,
                                   drain=self.drain_for_retry, peer_pid=hs.peer_pid or 0, index=index,
                                   threads=install_threads)
        self.state = self.installer.state
        self.pending: deque[tuple[int, int]] = deque()
        self.events: Counter[str] = Counter()
        self.removes: list[dict[str, int]] = []
        self.latency_ns: list[int] = []
        #: One ``faultclass`` kind byte per fault, beside ``latency_ns``; peer-gone faults per class.
        self.kinds = bytearray()
        self.peer_gone_by_class = [0, 0, 0, 0]
        self.nfaults = 0
        self.stale = 0
        self.misses = 0  # faults on pages outside the working set (prefetch)
        self.late = 0  # faults on working-set pages not installed yet (prefetch-background)
        self.last_fault_ns = 0
        self.error: str | None = None
        self.ended = ""
        #: What the strategy's hand-off install did (its metrics block; the server adds the ws read times).
        self.install_facts: dict[str, Any] = {}
        #: For each page, its entry in the working set (-1: not in it); None without a working set.
        self.ws_entry: np.ndarray[Any, np.dtype[np.int32]] | None = None
        self.pidfd = -1
        self.blocking = False  # the uffd is in blocking mode (the main-thread loop)
        self.native = False
        self._bg: threading.Thread | None = None
        self._serve_fault = strategy.serve_fault
        self.peer_exe = ""
        if hs.peer_pid:
            with contextlib.suppress(OSError):
                self.peer_exe = os.readlink(f"/proc/{hs.peer_pid}/exe")
            try:
                self.pidfd = os.pidfd_open(hs.peer_pid)
            except OSError:
                self.pidfd = -1  # already gone: the loop ends at once
                self.ended = "peer-gone"

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> None:
        """The session's whole life; never raises (``error`` says what went wrong)."""
        try:
            if self.ended != "peer-gone":
                self.strategy.at_handoff(self)
                lib = native.load() if self.strategy.fast_path and self.mem.direct else None
                if lib is not None:
                    self.ended = loops.serve_native(self, lib)
                elif threading.current_thread() is threading.main_thread():
                    self.ended = loops.serve_blocking(self)
                else:
                    self.ended = loops.serve_poll(self)
        except PeerGone:
            self.ended = "peer-gone"
        except Exception as exc:  # fatal: never leave the peer hanging on a fault
            self.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FirecracerError) else str(exc)
            self.ended = "error"
            log.error("uffd session %d failed: %s; killing peer %s", self.index, self.error, self.hs.peer_pid)
            self.kill_peer()
        finally:
            self.installer.stop_bg.set()
            if self._bg is not None:
                self._bg.join(timeout=30)
            self.close()

    def start_background(self, job: Callable[[], None], name: str) -> None:
        """Run ``job`` in a thread racing the vCPUs (a strategy's background work); it is told to stop
        (``installer.stop_bg``) and joined when the session ends."""
        self._bg = threading.Thread(target=job, daemon=True, name=f"uffd-{name}-{self.index}")
        self._bg.start()

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
        """Close the uffd and pidfd, unmap the staging buffer (idempotent)."""
        for attr in ("fd", "pidfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
        self.installer.close()

    # -- events --------------------------------------------------------------------------------------

    def read_events(self) -> list[Msg]:
        """Every queued event (none when nothing is queued)."""
        out: list[Msg] = []
        want = abi.MSG_SIZE * 256
        while True:
            if self.blocking and not select.select([self.fd], [], [], 0)[0]:
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

    def _sort_events(self, msgs: list[Msg]) -> list[tuple[int, int]]:
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

    def handle(self, msgs: list[Msg], t_read: int) -> None:
        """Serve the faults of ``msgs`` (read at ``t_read``) and any left pending, REMOVEs first."""
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
            inst = self.installer
            for ri in touched:
                r = self.regions[ri]
                inst.ops.wake(r.base_host_virt_addr, r.size)
                inst.ioctls += 1
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
        """Serve one fault (the strategy decides its extent); returns its region index."""
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
            self.kinds.append(faultclass.RESIDENT_WOKEN)
            if not dontwake:
                self.installer.ops.wake(page, self.ps)
                self.installer.ioctls += 1
            return ri
        wflag = FLAG_FAULTING | (FLAG_WRITE if flags & abi.UFFD_PAGEFAULT_FLAG_WRITE else 0)
        cls = faultclass.REMOVED if st == REMOVED else \
            faultclass.DATA if self.mem.has_data(off, self.ps) else faultclass.ZERO
        inst = self.installer
        eagain = inst.eagain_fg
        if inst.eexist_offs:
            inst.eexist_offs.clear()
        try:
            self._serve_fault(self, r, page, off, idx, st, wflag, fi, t_read, dontwake)
        except PeerGone:
            self.peer_gone_by_class[cls] += 1
            raise
        outcome = faultclass.EEXIST if inst.eexist_offs and off in inst.eexist_offs else \
            faultclass.EAGAIN if inst.eagain_fg != eagain else faultclass.INSTALLED
        self.kinds.append(cls * 4 + outcome)
        return ri

    def install_page(self, page: int, off: int, st: int, wflag: int, fi: int, t_read: int, dontwake: bool, *,
                     src: int | None = None, pieces: list[tuple[int, int, int]] | None = None,
                     zero: bool = False) -> None:
        """Install the faulting page alone: from ``src``/``pieces`` when given, else from the memory file
        (zeros for its holes and for removed pages)."""
        inst = self.installer
        if src is None and pieces is None and st != REMOVED and not zero:
            self.mem.ensure(off, self.ps)  # a compressed file decompresses the frame here
            if self.ps == 4096:
                zero = not self.mem.has_data(off, 4096)
                src = None if zero else self.mem.addr + off
            else:
                _h, msrc, _n, _o, zero, pcs = inst.mem_rows(page, off, self.ps)[0]
                pieces, src = pcs or None, None if zero or pcs else msrc
        if st == REMOVED or zero:
            inst.install(inst.ops, self.rec, page, off, 1, None, Action.ZERO, wflag | FLAG_ZERO, fi, t_read,
                         dontwake)
        else:
            inst.install(inst.ops, self.rec, page, off, 1, src, Action.LOAD, wflag, fi, t_read, dontwake,
                         pieces=pieces)

    def _remove(self, start: int, end: int) -> None:
        self.removes.append({"t_ns": time.monotonic_ns() - self.t0, "start": start, "end": end})
        for r in self.regions:
            s, e = max(start, r.base_host_virt_addr), min(end, r.end)
            if s >= e:
                continue
            a = (r.offset + (s - r.base_host_virt_addr)) >> self.shift
            b = (r.offset + (e - r.base_host_virt_addr) + self.ps - 1) >> self.shift
            self.state[a:b] = bytes([REMOVED]) * (b - a)

    def drain_for_retry(self) -> None:
        """On EAGAIN: read queued events now (REMOVEs applied), keep their faults for later."""
        msgs = self.read_events()
        if msgs:
            self.pending.extend(self._sort_events(msgs))

    # -- results -------------------------------------------------------------------------------------

    def trace(self, *, vmm: str = "firecracker", firecracker_version: str | None = None) -> Trace:
        """The session's trace (rows sorted by time); Firecracker's version is asked of the peer's binary."""
        return session_trace(self, vmm=vmm, version=firecracker_version)

    def metrics(self) -> dict[str, Any]:
        """Counts, bytes and latency percentiles of this session."""
        return session_metrics(self)
