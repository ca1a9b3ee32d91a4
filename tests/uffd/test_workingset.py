"""The working-set file (loading set): loading order, 2 MiB pages stored as data blocks, validation."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from firecracer.errors import FirecracerError, FormatError
from firecracer.uffd.memfile import MemoryFile
from firecracer.uffd.trace import FLAG_FAULTING, Trace, make_trace, save_trace
from firecracer.uffd.workingset import (
    KIND_DATA,
    KIND_HOLE,
    WS_MAGIC,
    WorkingSet,
    loading_order,
    prepare_working_set,
    write_working_set,
    ws_page_size,
)

PS = 4096
HUGE = 2 << 20


def _trace(offsets: list[int], page_size: int, mem_size: int) -> Trace:
    n = len(offsets)
    cols = {"t_ns": np.arange(n), "hva": np.array(offsets) + 0x7F00_0000_0000, "file_off": offsets,
            "gpa": offsets, "flags": np.full(n, FLAG_FAULTING), "action": np.zeros(n), "fault": np.arange(n),
            "service_ns": np.zeros(n)}
    return make_trace(cols, {"page_size": page_size, "strategy": "ondemand",
                             "regions": [{"base_host_virt_addr": 0x7F00_0000_0000, "size": mem_size,
                                          "offset": 0, "page_size": page_size}]})


def test_loading_order_groups_adjacent_pages_by_first_fault() -> None:
    offs = np.array([p * PS for p in [9, 3, 10, 4, 20, 8, 2]], dtype=np.uint64)
    order = loading_order(offs, PS)
    # runs by address: {2,3,4} first faulted at index 1, {8,9,10} at index 0, {20} at index 4
    assert (offs[order] // PS).tolist() == [8, 9, 10, 2, 3, 4, 20]
    kinds = np.array([KIND_DATA, KIND_DATA, KIND_HOLE, KIND_DATA, KIND_DATA, KIND_DATA, KIND_DATA], np.uint8)
    order = loading_order(offs, PS, kinds)  # 10 is a hole: its own run, ranked by its own first fault
    assert (offs[order] // PS).tolist() == [8, 9, 2, 3, 4, 10, 20]
    assert loading_order(np.zeros(0, np.uint64), PS).size == 0
    assert (offs[loading_order(offs, PS, order="touch")] // PS).tolist() == [9, 3, 10, 4, 20, 8, 2]
    assert (offs[loading_order(offs, PS, order="file")] // PS).tolist() == [2, 3, 4, 8, 9, 10, 20]
    with pytest.raises(FirecracerError, match="unknown loading order 'random'"):
        loading_order(offs, PS, order="random")


def test_each_order_has_its_own_file_and_says_so(tmp_path: Path) -> None:
    mem = tmp_path / "mem"
    rng = np.random.default_rng(2)
    mem.write_bytes(rng.integers(1, 256, 64 * PS, dtype=np.uint8).tobytes())
    trace = tmp_path / "rec.npz"
    tr = _trace([p * PS for p in [9, 3, 10, 4, 20, 8, 2]], PS, 64 * PS)
    save_trace(tr, trace)
    with MemoryFile(mem) as m:
        paths = {o: prepare_working_set(trace, m, o) for o in ("runs", "touch", "file")}
        assert paths == {"runs": tmp_path / "rec.ws", "touch": tmp_path / "rec.touch.ws",
                         "file": tmp_path / "rec.file.ws"}
        for order, path in paths.items():
            ws = WorkingSet(path, mem_size=m.size)
            try:
                assert ws.order == order
                want = {"runs": [8, 9, 10, 2, 3, 4, 20], "touch": [9, 3, 10, 4, 20, 8, 2],
                        "file": [2, 3, 4, 8, 9, 10, 20]}[order]
                assert (ws.offsets // PS).tolist() == want
                ws.verify_against(m, samples=7)  # the stored pages follow the index
                starts, _ = ws.runs()
                assert starts.size == {"runs": 3, "touch": 7, "file": 3}[order]
            finally:
                ws.close()


def test_2mib_working_set_stores_only_data_blocks(tmp_path: Path) -> None:
    mem = tmp_path / "mem"
    rng = np.random.default_rng(1)
    blocks = {0: range(512), 1: [0, 7, 8, 300], 3: [511]}  # page 2 is a hole
    with open(mem, "wb") as fh:
        for page, blks in blocks.items():
            for b in blks:
                fh.seek(page * HUGE + b * PS)
                fh.write(rng.integers(1, 256, PS, dtype=np.uint8).tobytes())
        fh.truncate(4 * HUGE)
    out = tmp_path / "t.ws"
    with MemoryFile(mem) as m:
        write_working_set(_trace([3 * HUGE, 1 * HUGE, 2 * HUGE, 0], HUGE, 4 * HUGE), m, out)
        ws = WorkingSet(out, mem_size=m.size)
        try:
            assert ws_page_size(out) == HUGE
            assert ws.n == 4 and ws.n_blocks == 512 + 4 + 1
            assert os.path.getsize(out) < 600 * PS  # not 4 x 2 MiB
            # one run 0-1 (data) ranked by page 1's fault, 2 a hole, 3 first faulted: loading order 3, 0, 1, 2
            assert (ws.offsets // HUGE).tolist() == [3, 0, 1, 2]
            assert ws.kinds.tolist() == [KIND_DATA, KIND_DATA, KIND_DATA, KIND_HOLE]
            assert ws.full.tolist() == [False, True, False, False]
            assert [(o // PS, n // PS) for o, _s, n in ws.pieces(2)] == [(0, 1), (7, 2), (300, 1)]
            ws.verify_against(m, samples=4)
            data = mem.read_bytes()
            for off, src, n in ws.pieces(2):
                assert ctypes.string_at(src, n) == data[HUGE + off:HUGE + off + n]
        finally:
            ws.close()


def test_old_or_damaged_working_sets_are_named(tmp_path: Path) -> None:
    old = tmp_path / "old.ws"
    old.write_bytes(struct.pack("<8sQQQQQQQ", b"FCRWSET1", PS, 0, PS, 0, PS, 64, 0).ljust(PS, b"\0"))
    assert ws_page_size(old) is None  # the server rebuilds it
    with pytest.raises(FormatError, match="rebuild it"):
        WorkingSet(old)
    bad = tmp_path / "bad.ws"
    bad.write_bytes(struct.pack("<8sQQQQQQQ", WS_MAGIC, PS, 5, PS * 8, 5, PS, 64, 1))
    with pytest.raises(FormatError, match="does not match its header"):
        WorkingSet(bad)


def test_cli_builds_a_working_set(tmp_path: Path) -> None:
    import subprocess
    import sys

    from firecracer.uffd.trace import save_trace

    mem = tmp_path / "mem"
    mem.write_bytes(np.random.default_rng(2).integers(0, 256, 8 * PS, dtype=np.uint8).tobytes())
    tr = save_trace(_trace([5 * PS, 2 * PS, 3 * PS], PS, 8 * PS), tmp_path / "t.npz")
    res = subprocess.run([sys.executable, "-m", "firecracer", "uffd", "working-set", str(tr), str(mem)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stdout.split())  # a result: stdout
    assert "3 pages of 4 KiB in 2 runs (loading order: runs), 3 4 KiB blocks stored" in said
    ws = WorkingSet(tmp_path / "t.ws")
    assert (ws.offsets // PS).tolist() == [5, 2, 3]
    ws.close()
