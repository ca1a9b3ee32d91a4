"""Process-restore recordings (image space) on a real JVM: its maps, its NMT report and its present pages.

What CRIU would dump of a JVM is approximated here by what the kernel says is present in its private
mappings (``/proc/PID/pagemap``, root only); the faults of a "lazy restore" are pages picked from the
Java heap, metaspace and code cache by their NMT regions. The recording must then go through the same
loader, join, tables, comparison and viewer as a VM restore's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from firecracer.analysis.join import attribute
from firecracer.analysis.memmap import is_process_recording, save_memmap
from firecracer.analysis.nmt import parse_nmt_text
from firecracer.analysis.process import (
    ADDRESS_SPACE,
    eager_pages,
    eager_trace,
    expand_ranges,
    fault_trace,
    parse_maps,
    process_image,
)
from firecracer.analysis.recording import load_recording
from firecracer.analysis.tables import nmt_categories_table, totals
from firecracer.errors import FormatError
from firecracer.guest import jvm as guest_jvm
from firecracer.guest import workload
from firecracer.uffd.trace import Action, save_trace

MAPS = """\
00400000-00401000 r-xp 00000000 fe:00 123 /opt/jdk/bin/java
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
7f0000010000-7f0000012000 r--p 00002000 fe:00 99 /opt/jdk/lib/server/classes.jsa
"""


def test_parse_maps_and_ranges() -> None:
    vmas = parse_maps(MAPS)
    assert [v.name for v in vmas] == ["/opt/jdk/bin/java", "", "/opt/jdk/lib/server/classes.jsa"]
    pages = expand_ranges([[0x7F0000000000, 3], [0x400000, 1], [0x7F0000001000, 1]])
    assert pages.tolist() == [0x400000, 0x7F0000000000, 0x7F0000001000, 0x7F0000002000]
    with pytest.raises(FormatError, match="not a /proc/PID/maps line"):
        parse_maps("garbage\n")
    with pytest.raises(FormatError, match="page-aligned"):
        expand_ranges([[0x7F0000000010, 1]])


def test_zero_fault_pages_get_a_slot_and_unknown_pages_fail() -> None:
    img = process_image(7, "/opt/jdk/bin/java", MAPS, [[0x7F0000000000, 2]],
                        extra=np.array([0x7F0000003000], dtype=np.uint64))
    assert img.vaddr.tolist() == [0x7F0000000000, 0x7F0000001000, 0x7F0000003000]
    assert img.dumped.tolist() == [True, True, False]
    tr = fault_trace(img, [0.5, 0.1], [0x7F0000003010, 0x7F0000000000], [True, False], "criu-lazy")
    assert tr.gpa.tolist() == [0x2000, 0x0] and tr.hva.tolist() == [0x7F0000003000, 0x7F0000000000]
    assert tr.is_zero().tolist() == [True, False]
    with pytest.raises(FormatError, match="not in the process image"):
        fault_trace(img, [0.1], [0x7F0000002000], [False], "criu-lazy")
    mm = img.memmap()
    assert mm.meta["address_space"] == ADDRESS_SPACE and mm.page_paddr.tolist() == [0, 0x1000, 0x2000]
    with pytest.raises(FormatError, match="lies in no mapping"):
        process_image(7, "java", MAPS, [[0x7F0000020000, 1]]).memmap()


def test_pages_criu_restores_eagerly_come_first_in_a_lazy_trace() -> None:
    """A lazy restore still installs non-lazy pages (a thread's stack page, non-anonymous memory) before
    the process runs: they are rows of the trace (EAGER, t = 0), not faults."""
    dumped = [[0x7F0000000000, 2, 1], [0x7F0000002000, 1, 0], [0x400000, 1, 0]]
    eager = eager_pages(dumped)
    assert eager is not None and eager.tolist() == [0x400000, 0x7F0000002000]
    assert eager_pages([[0x7F0000000000, 2]]) is None  # ranges from before the flags were kept
    img = process_image(7, "java", MAPS, dumped)
    tr = fault_trace(img, [0.2], [0x7F0000001000], [False], "criu-lazy", eager=eager)
    assert tr.action.tolist() == [Action.EAGER, Action.EAGER, Action.LOAD]
    assert tr.fault.tolist() == [-1, -1, 0] and tr.t_ns.tolist() == [0, 0, 200_000_000]
    assert tr.working_set().tolist() == [0x2000]  # image address of the one faulted page


@pytest.fixture(scope="module")
def live_jvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[workload.RunningJvm]:
    why = workload.java_available()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("needs root (/proc/PID/pagemap present bits of another process)")
    running = workload.start_jvm(Path(tmp_path_factory.mktemp("jvm")))
    try:
        yield running
    finally:
        running.stop()


def _present_private_pages(pid: int, maps: str) -> list[list[int]]:
    """What CRIU dumps, near enough: present pages of private, writable mappings, as [vaddr, n] runs."""
    from firecracer.guest.procfs import present_pages

    ranges: list[list[int]] = []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for v in parse_maps(maps):
            if v.perms & 2 == 0 or v.perms & 8 or v.name.startswith("[v"):
                continue
            for va, _pfn in present_pages(fd, v.start, v.end):
                if ranges and ranges[-1][0] + ranges[-1][1] * 4096 == va:
                    ranges[-1][1] += 1
                else:
                    ranges.append([va, 1])
    finally:
        os.close(fd)
    return ranges


def test_a_lazy_restore_recording_of_a_real_jvm_is_attributed_by_virtual_address(
        live_jvm: workload.RunningJvm, tmp_path: Path) -> None:
    pid = live_jvm.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    nmt_text = guest_jvm.jcmd(pid, "VM.native_memory detail", timeout=60)
    dumped = _present_private_pages(pid, maps)  # the same maps: a running JVM's change meanwhile
    nmt = parse_nmt_text(nmt_text)
    img = process_image(pid, os.readlink(f"/proc/{pid}/exe"), maps, dumped)
    # faults: the first committed, dumped pages of three categories, in a known order
    want = ["Java Heap", "Class", "Code"]
    faults: list[int] = []
    for cat in want:
        pages = [int(v) for v in img.vaddr if any(
            r.category == cat and any(s <= int(v) < e for s, e in r.committed) for r in nmt.regions)]
        assert pages, f"the JVM has no dumped page in {cat}"
        faults += pages[:5]
    rec = tmp_path / "rec"
    rec.mkdir()
    save_memmap(img.memmap(), rec / "memmap.npz")
    save_trace(fault_trace(img, [i * 1e-3 for i in range(len(faults))], faults, [False] * len(faults),
                           "criu-lazy"), rec / "trace.npz")
    (rec / "nmt.txt").write_text(nmt_text)
    (rec / "recording.json").write_text(json.dumps({"format": "firecracer-recording", "version": 1,
                                                    "source": "criu", "address_space": ADDRESS_SPACE,
                                                    "strategy": "criu-lazy"}))
    r = load_recording(rec)
    assert is_process_recording(r.meta)
    att = attribute(r)
    t = totals(att)
    assert t["restored_pages"] == len(faults)
    cats = {row["category"]: row for row in nmt_categories_table(att).to_dicts()}
    for cat in want:
        assert cats[cat]["restored_kb"] == 5 * 4, (cat, cats.get(cat))
    # the CLI reads it like any recording, and says which address space it is in
    out = subprocess.run([sys.executable, "-m", "firecracer", "analyze", str(rec), "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["totals"]["restored_pages"] == len(faults)
    # an eager restore: every dumped page, none faulting
    tr = eager_trace(img, "criu")
    assert len(tr) == int(img.dumped.sum()) and (tr.flags == 0).all()
