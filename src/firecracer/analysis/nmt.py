"""Parser for ``jcmd PID VM.native_memory detail`` (and ``summary``) output, JDK 8/17 through 21+.

What it extracts:

* the ``PID:`` header line jcmd prints first (``NmtReport.pid``);
* the summary: ``Total: reserved=…, committed=…`` and one ``NmtCategory`` per ``- NAME (reserved=…,
  committed=…)`` block with its ``(malloc=…)`` / ``(mmap: reserved=…, committed=…)`` lines;
* the ``Virtual memory map:`` section: every reserved region ``[0xA - 0xB] reserved[ and committed]
  NKB for CATEGORY[ from]`` with its committed sub-ranges ``[0xA - 0xB] committed NKB[ from]``
  (indented by a TAB in JDK ≤ 17, by 8 spaces in JDK 21+; call-stack lines are skipped; the section may
  come before or after ``Details:`` depending on the JDK).

A region printed as ``reserved and committed`` with no sub-ranges is committed in full. Sizes are in
bytes whatever ``scale=`` jcmd used. ``NmtRegion.has_stack`` records whether the reserved line ended in
``from``: the original UffdVisualizer only counts those (SEED.md §5.2), see ``NmtReport.seed_region_count``.

Every malformed input raises ``FormatError(path, line, why)``; nothing else escapes ``parse_nmt``.

Public API: ``parse_nmt(path) -> NmtReport``, ``parse_nmt_text(text, path="<nmt>") -> NmtReport``,
``NmtReport.arrays() -> NmtArrays`` (sorted numpy arrays for the join).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from firecracer.errors import FormatError
from firecracer.fsio import read_bytes

_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
_SIZE = r"(\d+)(B|KB|MB|GB)"
_RESERVED = re.compile(
    r"^\[0x([0-9a-fA-F]{1,16}) - 0x([0-9a-fA-F]{1,16})\] (reserved and committed|reserved) "
    + _SIZE + r" for (.+?)(?:( from)| )?$")
_COMMITTED = re.compile(
    r"^[\t ]+\[0x([0-9a-fA-F]{1,16}) - 0x([0-9a-fA-F]{1,16})\] committed " + _SIZE + r"(?:( from)| )?$")
_RANGE_START = re.compile(r"^[\t ]*\[0x[0-9a-fA-F]+ - ")
_FRAME = re.compile(r"^[\t ]*\[0x[0-9a-fA-F]+\]")
_CATEGORY = re.compile(r"^-\s*(.+?) \(reserved=" + _SIZE + r"(?: [+-]\d+\w+)?,\s*committed=" + _SIZE)
_TOTAL = re.compile(r"^Total:\s+reserved=" + _SIZE + r"(?: [+-]\d+\w+)?,\s*committed=" + _SIZE)
_MALLOC = re.compile(r"^\s*\(malloc=" + _SIZE)
_MMAP = re.compile(r"^\s*\(mmap: reserved=" + _SIZE + r"(?: [+-]\d+\w+)?,\s*committed=" + _SIZE)
_PID = re.compile(r"^(\d+):\s*$")

MAX_LINE = 1 << 16


@dataclass
class NmtRegion:
    """One reserved virtual-memory region of the JVM (addresses are gva of the JVM process)."""

    start: int
    end: int
    category: str
    committed: list[tuple[int, int]] = field(default_factory=list)
    all_committed: bool = False
    has_stack: bool = True
    line: int = 0

    @property
    def reserved_bytes(self) -> int:
        """Size of the reservation."""
        return self.end - self.start

    @property
    def committed_bytes(self) -> int:
        """Sum of the committed sub-ranges (the whole region when ``all_committed``)."""
        return sum(e - s for s, e in self.committed)


@dataclass
class NmtCategory:
    """Summary numbers of one NMT category, in bytes (``mmap_*`` are 0 when not printed)."""

    name: str
    reserved: int
    committed: int
    malloc: int = 0
    mmap_reserved: int = 0
    mmap_committed: int = 0


@dataclass
class NmtArrays:
    """The virtual memory map as sorted numpy arrays (for ``searchsorted`` joins).

    ``region_*`` are sorted by start and non-overlapping; ``region_cat`` indexes ``categories``.
    ``committed_*`` are all committed sub-ranges sorted by start, ``committed_region`` their region.
    """

    categories: list[str]
    region_start: npt.NDArray[np.uint64]
    region_end: npt.NDArray[np.uint64]
    region_cat: npt.NDArray[np.int32]
    committed_start: npt.NDArray[np.uint64]
    committed_end: npt.NDArray[np.uint64]
    committed_region: npt.NDArray[np.int32]


@dataclass
class NmtReport:
    """A parsed ``VM.native_memory`` report."""

    pid: int | None
    regions: list[NmtRegion]
    summary: dict[str, NmtCategory]
    total_reserved: int = 0
    total_committed: int = 0
    has_vm_map: bool = False

    @property
    def categories(self) -> list[str]:
        """Category names, in first-seen order (virtual memory map first, then summary-only ones)."""
        names: dict[str, None] = {}
        for r in self.regions:
            names.setdefault(r.category, None)
        for n in self.summary:
            names.setdefault(n, None)
        return list(names)

    @property
    def seed_region_count(self) -> int:
        """Reserved regions the original UffdVisualizer counts (those printed with a call stack)."""
        return sum(1 for r in self.regions if r.has_stack)

    def arrays(self) -> NmtArrays:
        """Sorted numpy view of the virtual memory map."""
        cats = self.categories
        cat_idx = {c: i for i, c in enumerate(cats)}
        order = sorted(range(len(self.regions)), key=lambda i: self.regions[i].start)
        regs = [self.regions[i] for i in order]
        cs: list[int] = []
        ce: list[int] = []
        cr: list[int] = []
        for i, r in enumerate(regs):
            for s, e in r.committed:
                cs.append(s)
                ce.append(e)
                cr.append(i)
        corder = np.argsort(np.array(cs, dtype=np.uint64), kind="stable")
        return NmtArrays(
            categories=cats,
            region_start=np.array([r.start for r in regs], dtype=np.uint64),
            region_end=np.array([r.end for r in regs], dtype=np.uint64),
            region_cat=np.array([cat_idx[r.category] for r in regs], dtype=np.int32),
            committed_start=np.array(cs, dtype=np.uint64)[corder],
            committed_end=np.array(ce, dtype=np.uint64)[corder],
            committed_region=np.array(cr, dtype=np.int32)[corder],
        )

    def sorted_regions(self) -> list[NmtRegion]:
        """Regions by start address (the order of ``arrays().region_*``)."""
        return sorted(self.regions, key=lambda r: r.start)


def parse_nmt(path: str | Path) -> NmtReport:
    """Parse an NMT report file; ``FormatError`` naming the file and line when it is not one."""
    p = Path(path)
    data = read_bytes(p, limit=1 << 30, what="NMT file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(p, data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from exc
    return parse_nmt_text(text, p)


def parse_nmt_text(text: str, path: str | Path = "<nmt>") -> NmtReport:
    """Parse NMT report text (see module docstring)."""
    return _Parser(path).run(text.splitlines())


def _size(num: str, unit: str) -> int:
    return int(num) * _UNITS[unit]


class _Parser:
    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.pid: int | None = None
        self.regions: list[NmtRegion] = []
        self.summary: dict[str, NmtCategory] = {}
        self.total: tuple[int, int] | None = None
        self.seen_nmt = False
        self.in_map = False
        self.has_map = False
        self.cur_cat: NmtCategory | None = None
        self.summary_done = False

    def fail(self, line: int, why: str) -> FormatError:
        return FormatError(self.path, line, why)

    def run(self, lines: Iterable[str]) -> NmtReport:
        first = True
        for no, raw in enumerate(lines, 1):
            if len(raw) > MAX_LINE:
                raise self.fail(no, f"line longer than {MAX_LINE} characters")
            line = raw.rstrip("\r")
            if first and line.strip():
                first = False
                m = _PID.match(line)
                if m:
                    self.pid = int(m.group(1))
                    continue
            self.line(no, line)
        if not self.seen_nmt:
            raise self.fail(0, "not NMT output: no 'Native Memory Tracking:' header "
                               "(was the JVM started with -XX:NativeMemoryTracking=detail?)")
        self.finish_region()
        # jcmd prints the map in address order, ascending or (seen with OpenJDK 17.0.19 in our guest)
        # descending; regions must not overlap whatever the order
        by_start = sorted(self.regions, key=lambda r: r.start)
        for prev, cur in itertools.pairwise(by_start):
            if cur.start < prev.end:
                raise self.fail(cur.line, f"reserved region {cur.start:#x} overlaps the one at "
                                          f"{prev.start:#x} (line {prev.line})")
        tr, tc = self.total or (0, 0)
        return NmtReport(self.pid, self.regions, self.summary, tr, tc, self.has_map)

    def finish_region(self) -> None:
        if self.regions:
            r = self.regions[-1]
            if r.all_committed and not r.committed:
                r.committed.append((r.start, r.end))

    def line(self, no: int, line: str) -> None:
        stripped = line.strip()
        if not stripped:
            return
        if stripped.startswith("Native memory tracking is not enabled"):
            raise self.fail(no, "the JVM runs without Native Memory Tracking "
                                "(start it with -XX:NativeMemoryTracking=detail)")
        if stripped == "Native Memory Tracking:":
            self.seen_nmt = True
            return
        if stripped == "Virtual memory map:":
            self.in_map = self.has_map = self.summary_done = True
            return
        if stripped == "Details:" or stripped.startswith("Memory file details"):
            self.finish_region()
            self.in_map = False
            self.summary_done = True     # malloc sites follow; their "(malloc=…)" lines are not summary
            return
        if self.in_map:
            self.map_line(no, line)
        elif not self.summary_done:
            self.summary_line(no, line)

    def map_line(self, no: int, line: str) -> None:
        if line.startswith("[0x") and " - 0x" in line:
            m = _RESERVED.match(line)
            if not m:
                raise self.fail(no, "unrecognised reserved-region line in the virtual memory map")
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            self.check_range(no, start, end, _size(m.group(4), m.group(5)), m.group(5))
            self.finish_region()
            self.regions.append(NmtRegion(start, end, m.group(6).strip(), [],
                                          m.group(3) == "reserved and committed",
                                          m.group(7) is not None, no))
            return
        if _RANGE_START.match(line):
            m = _COMMITTED.match(line)
            if not m:
                raise self.fail(no, "unrecognised committed-range line in the virtual memory map")
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            self.check_range(no, start, end, _size(m.group(3), m.group(4)), m.group(4))
            if not self.regions:
                raise self.fail(no, "committed range before any reserved region")
            r = self.regions[-1]
            if start < r.start or end > r.end:
                raise self.fail(no, f"committed range [{start:#x}, {end:#x}) lies outside its reserved "
                                    f"region [{r.start:#x}, {r.end:#x})")
            r.committed.append((start, end))
            return
        if _FRAME.match(line):
            return
        # other lines (JDK-specific notes) inside the map carry nothing we use

    def check_range(self, no: int, start: int, end: int, size: int, unit: str) -> None:
        if end <= start:
            raise self.fail(no, f"empty or inverted range [{start:#x}, {end:#x})")
        scale = _UNITS[unit]
        # jcmd rounds to the nearest unit; allow one unit of slack
        if abs((end - start) - size) > scale:
            raise self.fail(no, f"range [{start:#x}, {end:#x}) is {end - start} bytes "
                                f"but the line says {size // scale}{unit}")

    def summary_line(self, no: int, line: str) -> None:
        m = _TOTAL.match(line)
        if m:
            self.total = (_size(m.group(1), m.group(2)), _size(m.group(3), m.group(4)))
            return
        m = _CATEGORY.match(line)
        if m:
            name = m.group(1).strip()
            self.cur_cat = NmtCategory(name, _size(m.group(2), m.group(3)), _size(m.group(4), m.group(5)))
            self.summary[name] = self.cur_cat
            return
        if self.cur_cat is None:
            return
        m = _MMAP.match(line)
        if m:
            self.cur_cat.mmap_reserved = _size(m.group(1), m.group(2))
            self.cur_cat.mmap_committed = _size(m.group(3), m.group(4))
            return
        m = _MALLOC.match(line)
        if m:
            self.cur_cat.malloc = _size(m.group(1), m.group(2))
