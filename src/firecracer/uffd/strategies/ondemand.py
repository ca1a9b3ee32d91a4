"""``ondemand``: one page per fault (``UFFDIO_COPY``; holes of a sparse memory file as zero pages).

Everything is the base class's default; the fast single-fault loops serve most of its faults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from firecracer.uffd.strategies.base import Strategy


@dataclass(frozen=True)
class OnDemand(Strategy):
    """One page per fault; the trace it records can be replayed by ``prefetch``."""

    name: ClassVar[str] = "ondemand"
    usage: ClassVar[str] = "ondemand"
    records_working_set: ClassVar[bool] = True
