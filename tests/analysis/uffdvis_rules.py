"""Test oracle: the original UffdVisualizer's parsing rules (SEED.md §5.2), written the way the Java does it.

Deliberately naive and independent of ``firecracer.analysis``: it splits on single spaces, takes hex
characters [2:18] of a field, and counts what the visualizer prints on its console. Our ``totals`` must
give the same numbers for our seed-format exports.
"""

from __future__ import annotations

import re
from pathlib import Path

_RES = re.compile(r"\[0x([0-9a-fA-F]+) - 0x([0-9a-fA-F]+)\] .+ for (.+) from")
_COM = re.compile(r"\t\[0x([0-9a-fA-F]+) - 0x([0-9a-fA-F]+)\] (committed [^ ]+) (?:from)?")


def mappings_counts(path: Path) -> tuple[int, int]:
    """``Parsed %d mappings for %d processes``: distinct physical pages in p lines, '=' sections."""
    phys: set[int] = set()
    procs = 0
    pid = 0
    for line in path.read_text().splitlines():
        f = line.split(" ")
        if f[0] == "=":
            pid = int(f[1])
            procs += 1
        elif f[0] == "p":
            virt = int(f[1][2:18], 16)
            physical = virt if pid <= 0 else int(f[2][2:18], 16)
            phys.add(physical)
    return len(phys), procs


def uffd_counts(path: Path) -> tuple[int, int, int]:
    """``Parsed %d UFFD events (%d pages … loaded, %d pages … zeroed)``."""
    events = loaded = zeroed = 0
    for line in path.read_text().splitlines():
        f = re.split(" +", line)
        if len(f) < 6 or not f[0].startswith("UFFD_EVENT") or f[0] != "UFFD_EVENT_PAGEFAULT":
            continue
        int(f[5][2:18], 16)    # parsed here by the visualizer (crashes on the tid format)
        events += 1
        if f[4] == "Loading:":
            loaded += 1
        else:
            zeroed += 1
    return events, loaded, zeroed


def nmt_regions(path: Path) -> int:
    """``Parsed %d NMT mappings``: reserved regions (with a call stack) between the map and Details."""
    lines = path.read_text().splitlines()
    if not lines or not re.fullmatch(r"\d+:", lines[0]):
        raise ValueError("NMT file must start with a '<pid>:' line")
    state = "wait"
    count = 0
    for line in lines[1:]:
        if state == "wait":
            if line == "Virtual memory map:":
                state = "map"
            continue
        if line.startswith("Details:"):
            break
        if line.startswith("[0x") and _RES.fullmatch(line):
            count += 1
        elif line.startswith("\t"):
            _COM.fullmatch(line)
    return count
