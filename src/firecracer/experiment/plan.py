"""The run matrix: variants × strategies × first requests × repetitions, in a fixed order, and its split
into shards.

Runs are ordered variant-major (then repetition, then strategy: strategies interleave so that slow drift
of the host, such as a warming page cache, does not favour one strategy), because runs of one variant
share its snapshot: a shard that holds a contiguous slice of this order boots and snapshots as few variants as
possible. ``--shard i/n`` takes the i-th of n contiguous, nearly equal slices; every shard computes the
same plan from the same spec, so n hosts need no coordination beyond their i.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from firecracer.errors import FirecracerError
from firecracer.experiment.spec import Request, Spec, Strategy, Variant


@dataclass(frozen=True)
class Run:
    """One cell repetition of the study; ``run_id`` is stable across hosts, shards and re-runs."""

    index: int
    variant: Variant
    strategy: Strategy
    repetition: int
    #: the first request after the restore, and whether the study names several (then it is in the id)
    request: Request = field(default_factory=Request)
    several_requests: bool = False

    @property
    def run_id(self) -> str:
        q = f".{self.request.slug}" if self.several_requests else ""
        return f"{self.variant.name}.{self.strategy.slug}{q}.r{self.repetition}"


@dataclass(frozen=True)
class Shard:
    """``i/n``: this host runs slice i (1-based) of n."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise FirecracerError(f"--shard {text!r}: expected i/n, e.g. 2/4")
        i, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 1 <= i <= n:
            raise FirecracerError(f"--shard {text!r}: need 1 <= i <= n")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def plan_runs(spec: Spec, shard: Shard | None = None) -> list[Run]:
    """Every run of the study (or of one shard), in execution order.

    ``file`` is not planned for variants with 2 MiB pages: Firecracker restores hugetlbfs snapshots only
    through Uffd (it refuses the File backend), so such a cell has no run rather than failed ones.
    """
    several = len(spec.workload.requests) > 1
    runs = [Run(0, v, s, r, q, several) for v in spec.variants for r in range(1, spec.repetitions + 1)
            for s in spec.strategies if not (v.huge and not s.uses_uffd) for q in spec.workload.requests]
    runs = [dataclasses.replace(r, index=i) for i, r in enumerate(runs)]
    if shard is None:
        return runs
    total = len(runs)
    lo = (shard.index - 1) * total // shard.count
    hi = shard.index * total // shard.count
    return runs[lo:hi]


def group_by_variant(runs: list[Run]) -> list[tuple[Variant, list[Run]]]:
    """Consecutive runs of the same variant, preserving order (one snapshot per group)."""
    groups: list[tuple[Variant, list[Run]]] = []
    for run in runs:
        if groups and groups[-1][0] == run.variant:
            groups[-1][1].append(run)
        else:
            groups.append((run.variant, [run]))
    return groups
