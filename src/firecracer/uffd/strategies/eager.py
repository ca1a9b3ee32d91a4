"""``eager``: copy all of memory at the hand-off (data extents read ahead, holes as zero pages), like
Firecracker's ``fault_all`` example; the faults that still come are served on demand."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from firecracer.uffd.installer import Plan, PlanRow
from firecracer.uffd.strategies.base import Strategy
from firecracer.uffd.trace import Action

if TYPE_CHECKING:
    from firecracer.uffd.session import Session

_CHUNK = 64 << 20  # bytes per UFFDIO_COPY of a data extent: bounded ioctls
_ZPIECE = 16 << 20  # a compressed memory file is decompressed and installed this much at a time


@dataclass(frozen=True)
class Eager(Strategy):
    """Every region whole before the first fault, then one wake per region."""

    name: ClassVar[str] = "eager"
    usage: ClassVar[str] = "eager"

    def at_handoff(self, s: Session) -> None:
        inst = s.installer
        t_start = time.monotonic_ns()
        if not s.mem.direct:  # compressed: decompress and install a bounded piece at a time
            runs = staged = 0
            for r in s.regions:
                for o in range(0, r.size, _ZPIECE):
                    n = min(_ZPIECE, r.size - o)
                    piece = Plan.from_rows(inst.mem_rows(r.base_host_virt_addr + o, r.offset + o, n, _CHUNK))
                    inst.install_plan(piece, Action.EAGER, t_start)
                    runs += len(piece)
                    staged += piece.staged()
            inst.wake_all()
            s.install_facts = {"eager_ms": (time.monotonic_ns() - t_start) / 1e6, "runs": runs,
                               "staged": staged, "threads": inst.threads}
            return
        with contextlib.suppress(OSError):  # read ahead all data (not holes): it is about to be copied
            for a, b in zip(s.mem.data_start, s.mem.data_end, strict=True):
                os.posix_fadvise(s.mem.fd, a, b - a, os.POSIX_FADV_WILLNEED)
        rows: list[PlanRow] = []
        for r in s.regions:
            rows += inst.mem_rows(r.base_host_virt_addr, r.offset, r.size, _CHUNK)
        plan = Plan.from_rows(rows)
        inst.install_plan(plan, Action.EAGER, t_start)
        inst.wake_all()
        s.install_facts = {"eager_ms": (time.monotonic_ns() - t_start) / 1e6, "runs": len(plan),
                           "staged": plan.staged(), "threads": inst.threads_for(plan)}

    def metrics(self, s: Session) -> dict[str, Any] | None:
        return dict(s.install_facts)
