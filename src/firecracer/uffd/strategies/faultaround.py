"""``fault-around:N``: on a fault, the missing pages of the aligned N-page block around it.

One ioctl per contiguous data/hole piece; the faulting piece first (it wakes the vCPU), neighbours with
``DONTWAKE``. A removed page is served alone (as zeros). Its faults never take the fast loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from firecracer.errors import FirecracerError
from firecracer.uffd.installer import MISSING, REMOVED
from firecracer.uffd.strategies.base import Strategy
from firecracer.uffd.trace import FLAG_ZERO, Action

if TYPE_CHECKING:
    from firecracer.uffd.handshake import Region
    from firecracer.uffd.session import Session

MAX_AROUND = 1 << 18


@dataclass(frozen=True)
class FaultAround(Strategy):
    """``around`` pages per fault (aligned block), missing ones only."""

    name: ClassVar[str] = "fault-around"
    usage: ClassVar[str] = "fault-around:N"
    takes_arg: ClassVar[bool] = True
    fast_path: ClassVar[bool] = False
    records_working_set: ClassVar[bool] = True
    around: int = 16

    @classmethod
    def parse(cls, arg: str) -> FaultAround:
        try:
            n = int(arg) if arg else 16
        except ValueError:
            n = 0
        if n < 1 or n > MAX_AROUND:
            raise FirecracerError(f"fault-around needs a block size 1..{MAX_AROUND} pages, got {arg!r}")
        return cls(n)

    def __str__(self) -> str:
        return f"fault-around:{self.around}"

    def serve_fault(self, s: Session, r: Region, page: int, off: int, idx: int, st: int, wflag: int, fi: int,
                    t_read: int, dontwake: bool) -> None:
        if self.around == 1 or st == REMOVED:
            s.install_page(page, off, st, wflag, fi, t_read, dontwake)
            return
        inst = s.installer
        shift = inst.shift
        n = self.around
        first = r.offset >> shift
        last = (r.offset + r.size) >> shift
        blk = idx - idx % n
        b0 = max(blk, first)
        b1 = min(blk + n, last)
        state = inst.state
        # runs of missing pages in [b0, b1); the faulting page (missing) is inside one of them
        runs: list[tuple[int, int]] = []
        i = b0
        while i < b1:
            if state[i] != MISSING:
                i += 1
                continue
            j = i + 1
            while j < b1 and state[j] == MISSING:
                j += 1
            runs.append((i, j))
            i = j
        runs.sort(key=lambda ij: not (ij[0] <= idx < ij[1]))  # the faulting run first: wake early
        for i, j in runs:
            base = i << shift
            rows = inst.mem_rows(r.base_host_virt_addr + (base - r.offset), base, (j - i) << shift)
            rows.sort(key=lambda row: not row[3] <= off < row[3] + row[2])  # the faulting piece first
            for hva, src, p_len, p_off, zero, pcs in rows:
                has_fault = p_off <= off < p_off + p_len
                inst.install(inst.ops, s.rec, hva, p_off, p_len >> shift, None if zero or pcs else src,
                             Action.AROUND, FLAG_ZERO if zero else 0, fi, t_read, dontwake or not has_fault,
                             fault_off=off if has_fault else -1, fault_flags=wflag, pieces=pcs or None)
