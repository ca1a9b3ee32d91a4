"""Putting pages into the guest: the ioctls of one session, their failure modes, and whole install plans.

:class:`Installer` is what every strategy installs through. ``install`` is the careful single-run path
(partial copies continue after the page that stopped them, ``EEXIST`` is benign, ``EAGAIN`` drains
events and retries for up to 10 s, ``ESRCH``/``ENOENT`` mean the peer's memory is gone); a :class:`Plan`
(runs built with numpy) is installed in C batches (``native.install``) with that path as the fallback,
by one or several threads. 2 MiB pages are assembled in a zeroed staging buffer from their data blocks
(hugetlbfs has no ``ZEROPAGE``, and copying a partly-hole huge page through our mapping of the sparse
memory file would fault every hole into the page cache).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from firecracer import hugepages
from firecracer.errors import FirecracerError
from firecracer.uffd import abi, native
from firecracer.uffd.handshake import Region
from firecracer.uffd.memfile import MemoryFile
from firecracer.uffd.recorder import Recorder
from firecracer.uffd.trace import FLAG_ZERO, Action

log = logging.getLogger("firecracer.uffd")

#: Page states, one byte per page of the memory file (``Installer.state``).
MISSING = 0
PRESENT = 1
REMOVED = 2
_EAGAIN_BUDGET_NS = 10_000_000_000  # give up on a range that stays busy for 10 s

#: A plan row: ``(hva, src or 0, length, file offset, zero fill, pieces)``; pieces are
#: ``(offset in page, our address, length)`` of a huge page assembled in a staging buffer.
PlanRow = tuple[int, int, int, int, bool, list[tuple[int, int, int]]]


class PeerGone(Exception):
    """The peer's memory is gone (it exited): the session ends, not an error."""


class ServeError(FirecracerError):
    """A session failed fatally; its peer was killed."""


class Plan:
    """Runs to install, in order: one ``native.OP_DTYPE`` row each, plus its file offset and whether it
    is a zero fill; ``pieces`` (``native.PIECE_DTYPE``) of huge pages assembled in a staging buffer."""

    __slots__ = ("off", "ops", "pieces", "zero")

    def __init__(self, ops: np.ndarray[Any, Any], off: np.ndarray[Any, np.dtype[np.uint64]],
                 zero: np.ndarray[Any, np.dtype[np.bool_]], pieces: np.ndarray[Any, Any]) -> None:
        self.ops, self.off, self.zero, self.pieces = ops, off, zero, pieces

    def __len__(self) -> int:
        return len(self.ops)

    @classmethod
    def from_rows(cls, rows: list[PlanRow]) -> Plan:
        """From :data:`PlanRow` rows."""
        ops = np.zeros(len(rows), dtype=native.OP_DTYPE)
        off = np.zeros(len(rows), dtype=np.uint64)
        zero = np.zeros(len(rows), dtype=bool)
        plist: list[tuple[int, int, int]] = []
        for i, (hva, src, length, o, z, pcs) in enumerate(rows):
            ops[i] = (hva, src, length, len(plist), len(pcs))
            off[i], zero[i] = o, z
            plist.extend(pcs)
        return cls(ops, off, zero, np.array(plist, dtype=native.PIECE_DTYPE))

    def take(self, idx: np.ndarray[Any, np.dtype[np.int64]]) -> Plan:
        """The runs ``idx`` (pieces stay shared: ``piece0`` indexes the same array)."""
        return Plan(np.ascontiguousarray(self.ops[idx]), self.off[idx], self.zero[idx], self.pieces)

    def staged(self) -> int:
        """Runs assembled in a staging buffer (huge pages only partly data)."""
        return int((self.ops["npieces"] > 0).sum())


def expand_ranges(first: np.ndarray[Any, Any], count: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``concatenate(arange(f, f + c) for f, c in zip(first, count))``, vectorised."""
    count = count.astype(np.int64)
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(first.astype(np.int64) - (np.cumsum(count) - count), count)
    out: np.ndarray[Any, Any] = starts + np.arange(total, dtype=np.int64)
    return out


def _pool_exhausted(hva: int, off: int) -> str:
    try:
        p = hugepages.pool()
        have = f" (HugePages: {p.total} total, {p.free} free)"
    except FirecracerError:
        have = ""
    return (f"cannot install the 2 MiB page at {hva:#x} (file offset {off:#x}): the huge-page pool is "
            f"exhausted{have}; reserve more pages in {hugepages.NR_HUGEPAGES}")


class Installer:
    """Installs pages into one session's uffd, keeps the page states and counts its ioctls.

    ``state`` is one byte per page of the memory file (:data:`MISSING`, :data:`PRESENT`,
    :data:`REMOVED`). ``drain`` is called on ``EAGAIN`` in the session's own thread (it reads queued
    events so REMOVEs are applied before the retry). ``threads``: install threads for plans (0: two for
    huge pages on a machine with two CPUs or more, one otherwise; docs/uffd.md has the measurements).
    """

    def __init__(self, fd: int, mem: MemoryFile, regions: tuple[Region, ...], page_size: int, t0: int,
                 rec: Recorder, *, drain: Callable[[], None], peer_pid: int = 0, index: int = 0,
                 threads: int = 0) -> None:
        self.fd = fd
        self.mem = mem
        self.regions = regions
        self.ps = page_size
        self.shift = page_size.bit_length() - 1
        self.t0 = t0
        self.rec = rec
        self.drain = drain
        self.peer_pid = peer_pid
        self.index = index
        # 2 MiB installs are memory copies and gained 17-20 % from a second thread on our 2-core host;
        # 4 KiB ones are ioctl-bound and lost under load (docs/uffd.md): one thread unless told otherwise
        self.threads = threads or (2 if page_size > 4096 and (os.cpu_count() or 1) >= 2 else 1)
        self.state = bytearray(mem.size >> self.shift)
        self.ops = abi.Ops(fd)
        self.ioctls = 0
        self.eexist = 0
        self.eagain = 0
        self.eagain_fg = 0  # EAGAINs retried in the session's own thread (faultclass: a fault's outcome)
        self.eexist_offs: list[int] = []  # file offsets that met EEXIST since the session's last fault
        self.stop_bg = threading.Event()  # set when the session ends: background installs stop
        self._count_lock = threading.Lock()
        # hugetlbfs ranges have no ZEROPAGE: zero pages are copied from this buffer, and pages of which only
        # some 4 KiB blocks hold data are assembled in it (it is all zero between installs)
        self.zero_buf = self.staging_buffer() if page_size > 4096 else 0

    def close(self) -> None:
        """Unmap the staging buffer (idempotent)."""
        if self.zero_buf:
            abi.munmap(self.zero_buf, self.ps)
            self.zero_buf = 0

    def staging_buffer(self) -> int:
        """A zeroed, populated ``page_size`` buffer (one per installing thread)."""
        return abi.mmap(self.ps, abi.PROT_READ | abi.PROT_WRITE,
                        abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_POPULATE)

    def wake_all(self) -> None:
        """Wake every waiter of every region (one ``UFFDIO_WAKE`` each)."""
        for r in self.regions:
            self.ops.wake(r.base_host_virt_addr, r.size)
            self.ioctls += 1

    # -- one run, carefully ------------------------------------------------------------------------

    def install(self, ops: abi.Ops, rec: Recorder, hva: int, off: int, npages: int, src: int | None,
                action: int, flags: int, fault: int, t_start: int, dontwake: bool, *, fault_off: int = -1,
                fault_flags: int = 0, background: bool = False,
                pieces: list[tuple[int, int, int]] | None = None, staging: int = 0) -> int:
        """Install ``npages`` at ``hva`` (file offset ``off``) from ``src`` (None: zeros); returns pages done.

        ``pieces`` (one huge page): assemble it from ``(offset in page, our address, length)`` pieces in
        the zeroed ``staging`` buffer (default: the session's) and copy that. Partial installs continue
        after the page that stopped them; ``EEXIST`` pages are skipped. ``fault_off``: the file offset of
        the faulting page inside the run (recorded with ``fault_flags`` and action LOAD/ZERO).
        """
        ps, shift = self.ps, self.shift
        mode = abi.UFFDIO_COPY_MODE_DONTWAKE if dontwake else 0
        staging = staging or self.zero_buf
        if pieces:
            assert npages == 1 and staging, "only single huge pages are assembled"
            for poff, psrc, plen in pieces:
                ctypes.memmove(staging + poff, psrc, plen)
            try:
                return self.install(ops, rec, hva, off, 1, staging, action, flags, fault, t_start, dontwake,
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
                self.record(rec, t, hva + pos, off + pos, n, flags, action, fault, t - t_start, fault_off,
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
                self.eexist_offs.append(off + pos)
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
                    self.eagain_fg += 1
                    self.drain()
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
            fd = os.open(f"/proc/{self.peer_pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            try:
                entry = os.pread(fd, 8, (hva >> 12) * 8)
            finally:
                os.close(fd)
            if len(entry) == 8:
                return bool(int.from_bytes(entry, "little") >> 63)
        except OSError:
            pass
        try:
            return hugepages.pool().free > 0
        except FirecracerError:
            return True

    def record(self, rec: Recorder, t: int, hva: int, off: int, n: int, flags: int, action: int, fault: int,
               svc: int, fault_off: int, fault_flags: int) -> None:
        """Record ``n`` pages installed at ``t``; the faulting page of a run (``fault_off``) gets a row of
        its own (action LOAD or ZERO, ``fault_flags``)."""
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

    def mem_rows(self, hva: int, off: int, length: int, chunk: int = 0) -> list[PlanRow]:
        """How to install ``[off, off+length)`` (at ``hva``) from the memory file, as :data:`PlanRow` rows:
        data extents are copied, holes zero-filled, and a huge page only partly data is assembled from its
        data blocks (``pieces``) rather than copied whole (copying reads the holes through our mapping:
        page-cache zero pages, a fault per 4 KiB). ``chunk`` > 0 caps a data run's length (bounded
        ioctls)."""
        mem, ps = self.mem, self.ps
        mem.ensure(off, length)  # readable at mem.addr until this thread's next ensure (compressed files)
        rows: list[PlanRow] = []
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

    # -- whole plans -------------------------------------------------------------------------------

    def threads_for(self, plan: Plan) -> int:
        """Threads :meth:`install_plan` uses for ``plan``."""
        return min(self.threads, max(1, len(plan)))

    def install_plan(self, plan: Plan, action: int, t_start: int) -> int:
        """Install ``plan`` (``DONTWAKE``) with ``threads`` threads taking every n-th run (so all advance
        in loading order); returns pages installed. Wake the waiters afterwards (:meth:`wake_all`)."""
        threads = self.threads_for(plan)
        if threads == 1:
            return self.run_plan(plan, action, t_start, self.rec, self.ops, self.zero_buf, background=False)
        n = len(plan)
        recs = [Recorder() for _ in range(threads)]
        pages = [0] * threads
        errors: list[BaseException] = []
        bufs = [self.staging_buffer() if self.ps > 4096 else 0 for _ in range(threads)]

        def work(k: int) -> None:
            try:
                pages[k] = self.run_plan(plan.take(np.arange(k, n, threads)), action, t_start, recs[k],
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

    def run_plan(self, plan: Plan, action: int, t_start: int, rec: Recorder, ops: abi.Ops, staging: int, *,
                 background: bool) -> int:
        """Install ``plan``'s runs in order: batches in C (``native.install``) where available, the run that
        stopped a batch (or every run, without the native helper) through :meth:`install`. ``background``:
        wake each run's waiters, small batches, stop when ``stop_bg`` is set."""
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
            if background and self.stop_bg.is_set():
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
                    state[expand_ranges(first, npg)] = PRESENT
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
                self.record(rec, t, dst, off, done, flags, action, -1, t - t_start, -1, 0)
                state[off >> shift:(off >> shift) + done] = PRESENT
                pages += done
            pages += self.install(ops, rec, dst + partial, off + partial, (length - partial) >> shift,
                                  None if zero or pcs else src + partial, action, flags, -1, t_start,
                                  dontwake, background=background, pieces=pcs, staging=staging)
            i += 1
        return pages
