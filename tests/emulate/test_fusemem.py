"""The FUSE page recorder, with a real FUSE mount and a real MAP_SHARED mapping in another process.

The toucher must be another process: a Python thread that faults on the mount while holding the GIL
would deadlock against the server thread in this process (QEMU is always another process anyway).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firecracer.emulate.fusemem import FuseError, MemFileMount, data_extents, in_holes
from firecracer.emulate.nothp import drop_hugepage_advice
from firecracer.emulate.runner import build_trace
from firecracer.uffd.trace import FLAG_FAULTING, Action, load_trace, save_trace

PS = 4096
N_PAGES = 2048

pytestmark = pytest.mark.root

TOUCHER = r"""
import mmap, os, sys
path, npages, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_RDWR)
mm = mmap.mmap(fd, npages * 4096, mmap.MAP_SHARED)
mm.madvise(mmap.MADV_HUGEPAGE)  # as QEMU does on guest RAM: must not make the kernel read large folios
bad = 0
for item in spec.split(","):
    kind, page = item[0], int(item[1:])
    if kind == "r":
        want = page.to_bytes(8, "little") if page % 3 == 0 else bytes(8)
        bad += mm[page * 4096:page * 4096 + 8] != want
    else:
        mm[page * 4096 + 100] = 0x5A
mm.flush()
mm.close()
os.close(fd)
print(bad)
"""


def _need_fuse() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount FUSE")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/fuse")


def _source(tmp: Path) -> Path:
    """A sparse memory file: page i holds i (8 bytes LE) when i % 3 == 0, other pages are holes."""
    src = tmp / "mem"
    with open(src, "wb") as fh:
        fh.truncate(N_PAGES * PS)
        for i in range(0, N_PAGES, 3):
            fh.seek(i * PS)
            fh.write(i.to_bytes(8, "little"))
    return src


def _touch(path: Path, spec: list[str]) -> int:
    # like the restored QEMU: MADV_HUGEPAGE dropped (else the kernel reads 2 MiB per fault, see nothp)
    out = subprocess.run([sys.executable, "-c", TOUCHER, str(path), str(N_PAGES), ",".join(spec)],
                         capture_output=True, text=True, timeout=120, check=True,
                         preexec_fn=drop_hugepage_advice)
    return int(out.stdout.strip())


def test_every_first_touch_is_seen_once_in_order(tmp_path: Path) -> None:
    _need_fuse()
    src = _source(tmp_path)
    rng = random.Random(7)
    order = rng.sample(range(N_PAGES), 700)
    # reads and writes interleaved, then second touches of pages already seen (must not show up)
    spec = [("w" if i % 2 else "r") + str(p) for i, p in enumerate(order)]
    spec += ["r" + str(p) for p in order[:50]] + ["w" + str(p) for p in order[50:100]]
    with MemFileMount(src, tmp_path / "mnt") as m:
        bad = _touch(m.path, spec)
        reads = m.reads()
        assert m.error is None
    assert bad == 0, "pages read through the mount did not hold the source's data"
    assert [int(o) // PS for o in reads.offset] == order
    assert np.all(np.diff(reads.t_ns.astype(np.int64)) >= 0)
    # the snapshot's memory file is never written: writes land in the overlay
    assert src.read_bytes()[order[1] * PS + 100] == 0


def test_writes_survive_in_the_overlay(tmp_path: Path) -> None:
    _need_fuse()
    src = _source(tmp_path)
    with MemFileMount(src, tmp_path / "mnt") as m:
        _touch(m.path, ["w5", "w9"])
        assert m.writes >= 1  # msync wrote the dirty pages back through FUSE
        with open(m.path, "rb") as fh:  # read() after the mapping is gone: page cache or overlay
            fh.seek(5 * PS + 100)
            assert fh.read(1) == b"\x5a"
    assert src.read_bytes()[5 * PS + 100] == 0


def test_trace_from_reads_marks_holes_as_zero(tmp_path: Path) -> None:
    _need_fuse()
    src = _source(tmp_path)
    ext = data_extents(src)
    with MemFileMount(src, tmp_path / "mnt") as m:
        _touch(m.path, ["r3", "r4", "r6", "r7"])
        reads = m.reads()
    trace = build_trace(reads, ext, hva_base=0x7F0000000000, mem_bytes=N_PAGES * PS,
                        meta={"strategy": "ondemand", "vmm": "qemu-tcg-fuse", "regions": []})
    assert list(trace.file_off // PS) == [3, 4, 6, 7]
    assert list(trace.action) == [Action.LOAD, Action.ZERO, Action.LOAD, Action.ZERO]
    assert np.all(trace.flags == FLAG_FAULTING)
    assert list(trace.gpa) == list(trace.file_off)
    assert int(trace.hva[0]) == 0x7F0000000000 + 3 * PS
    back = load_trace(save_trace(trace, tmp_path / "trace.npz"))
    assert back.meta["vmm"] == "qemu-tcg-fuse" and len(back) == 4


def test_in_holes_edges() -> None:
    ext = np.array([[4096, 8192], [16384, 20480]], dtype=np.uint64)
    offs = np.array([0, 4096, 8192, 12288, 16384, 20480], dtype=np.uint64)
    assert list(in_holes(offs, ext)) == [True, False, True, True, False, True]
    assert list(in_holes(offs, np.zeros((0, 2), dtype=np.uint64))) == [True] * 6


def test_bad_source_size_is_one_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "odd"
    src.write_bytes(b"x" * 100)
    with pytest.raises(FuseError, match="not a multiple of the page size"):
        MemFileMount(src, tmp_path / "mnt")
