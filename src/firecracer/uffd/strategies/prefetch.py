"""``prefetch:TRACE`` and ``prefetch-background:TRACE``: REAP-style record and replay.

At the hand-off, install the working set recorded in TRACE from its loading set (``TRACE.ws``, one
sequential read, one ioctl per run of adjacent pages, in C), all ``DONTWAKE``, then one ``UFFDIO_WAKE``
per region; faults outside it are served on demand ("misses"). ``prefetch-background`` installs it from
a thread racing the vCPUs instead (each run wakes its own waiters); a fault on a working-set page not
installed yet is served from the working-set buffer ("late").

``@ORDER`` picks the working set's loading order (:data:`~firecracer.uffd.workingset.ORDERS`): ``runs``
(default: runs of file-adjacent pages by their first touch), ``touch`` (page by page in first-touch
order, REAP's) or ``file`` (by memory-file offset). It matters most when loading races the vCPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from firecracer.errors import FirecracerError
from firecracer.uffd import abi, native
from firecracer.uffd.installer import PeerGone, Plan, ServeError
from firecracer.uffd.strategies.base import Strategy
from firecracer.uffd.trace import Action
from firecracer.uffd.workingset import DEFAULT_ORDER, KIND_DATA, ORDERS, WorkingSet

if TYPE_CHECKING:
    from firecracer.uffd.handshake import Region
    from firecracer.uffd.session import Session

log = logging.getLogger("firecracer.uffd")


@dataclass(frozen=True)
class Prefetch(Strategy):
    """Install the working set recorded in ``path`` before the first fault is served."""

    name: ClassVar[str] = "prefetch"
    usage: ClassVar[str] = "prefetch[@ORDER]:TRACE"
    takes_arg: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ORDERS
    path: Path = Path()
    order: str = DEFAULT_ORDER

    @classmethod
    def parse(cls, arg: str) -> Prefetch:
        if not arg:
            raise FirecracerError(f"{cls.name} needs a recorded trace: {cls.name}:TRACE")
        path = Path(arg)
        if not path.exists():
            raise FirecracerError(f"prefetch trace {path} does not exist (record one with --trace first)")
        return cls(path)

    def with_option(self, option: str) -> Prefetch:
        return dataclasses.replace(self, order=option)

    def __str__(self) -> str:
        at = f"@{self.order}" if self.order != DEFAULT_ORDER else ""
        return f"{self.name}{at}:{self.path}"

    @property
    def trace(self) -> Path | None:
        return self.path

    @property
    def load_order(self) -> str | None:
        return self.order

    def at_handoff(self, s: Session) -> None:
        if s.ws is None:
            return
        s.ws_entry = entry_index(s.ws, len(s.state), s.installer.shift)
        inst = s.installer
        t_start = time.monotonic_ns()
        plan = ws_plan(s)
        pages = inst.install_plan(plan, Action.PREFETCH, t_start)
        inst.wake_all()
        s.install_facts.update({"installed": pages, "runs": len(plan), "threads": inst.threads_for(plan),
                                "staged": plan.staged(), "install_ms": (time.monotonic_ns() - t_start) / 1e6,
                                "mode": "before-resume", "order": self.order})

    def serve_fault(self, s: Session, r: Region, page: int, off: int, idx: int, st: int, wflag: int, fi: int,
                    t_read: int, dontwake: bool) -> None:
        src: int | None = None
        pieces: list[tuple[int, int, int]] | None = None
        zero = False
        if s.ws_entry is not None:
            e = int(s.ws_entry[idx])
            if e < 0:
                s.misses += 1
            else:  # not installed yet (background), or it failed: from the working-set buffer
                s.late += 1
                ws = s.ws
                if ws is not None and ws.kinds[e] == KIND_DATA:
                    if ws.full[e]:
                        src = ws.src(e)
                    else:
                        pieces = ws.pieces(e)
                else:
                    zero = True
        s.install_page(page, off, st, wflag, fi, t_read, dontwake, src=src, pieces=pieces,
                       zero=zero)

    def metrics(self, s: Session) -> dict[str, Any] | None:
        pf = dict(s.install_facts)
        pf.update({"misses": s.misses, "late": s.late})
        if s.ws is not None:
            pf["ws_pages"] = s.ws.n
        return pf


@dataclass(frozen=True)
class PrefetchBackground(Prefetch):
    """Install the working set from a thread racing the vCPUs."""

    name: ClassVar[str] = "prefetch-background"
    usage: ClassVar[str] = "prefetch-background[@ORDER]:TRACE"

    def at_handoff(self, s: Session) -> None:
        if s.ws is None:
            return
        s.ws_entry = entry_index(s.ws, len(s.state), s.installer.shift)
        s.start_background(lambda: self._install(s), name="prefetch")

    @staticmethod
    def _install(s: Session) -> None:
        """Each run wakes its own waiters; errors end the install quietly (faults are still served)."""
        inst = s.installer
        t_start = time.monotonic_ns()
        ops = abi.Ops(inst.fd)
        pages = 0
        plan = ws_plan(s)
        staging = inst.staging_buffer() if inst.ps > 4096 else 0
        try:
            pages = inst.run_plan(plan, Action.PREFETCH, t_start, s.bg_rec, ops, staging, background=True)
        except (PeerGone, ServeError, OSError) as exc:
            log.info("background prefetch stopped: %s", exc)
        finally:
            if staging:
                abi.munmap(staging, inst.ps)
        s.install_facts.update({"installed": pages, "runs": len(plan), "threads": 1,
                                "install_ms": (time.monotonic_ns() - t_start) / 1e6, "mode": "background",
                                "order": s.ws.order if s.ws is not None else DEFAULT_ORDER})


def entry_index(ws: WorkingSet, pages: int, shift: int) -> np.ndarray[Any, np.dtype[np.int32]]:
    """For each page of the memory file, its first entry in ``ws`` (-1: not in the working set)."""
    entry = np.full(pages, -1, dtype=np.int32)
    idx = (ws.offsets >> np.uint64(shift)).astype(np.int64)
    entry[idx[::-1]] = np.arange(ws.n, dtype=np.int32)[::-1]
    return entry


def ws_plan(s: Session) -> Plan:
    """Session ``s``'s working set as install runs, in loading order (one per run of
    ``WorkingSet.runs``; huge zero pages one by one, from the zero staging buffer; huge pages stored in
    blocks assembled)."""
    assert s.ws is not None
    ws, ps = s.ws, s.ps
    if ws.page_size != ps:
        raise ServeError(f"{ws.path}: working set of {ws.page_size}-byte pages, but this restore uses "
                         f"{ps}-byte pages (record the trace with a restore of the same page size)")
    starts, lengths = ws.runs([r.offset for r in s.regions])
    offs = ws.offsets[starts]
    roffs = np.array([r.offset for r in s.regions], dtype=np.uint64)
    rid = np.searchsorted(roffs, offs, side="right") - 1
    bases = np.array([r.base_host_virt_addr for r in s.regions], dtype=np.uint64)
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
    return Plan(ops, offs.astype(np.uint64), zero, np.array(plist, dtype=native.PIECE_DTYPE))
