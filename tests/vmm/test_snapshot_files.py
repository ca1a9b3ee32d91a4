"""Snapshot directory files without Firecracker: hole punching, Diff merging, snapshot.json parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firecracer.errors import FormatError
from firecracer.vmm.config import SnapshotType
from firecracer.vmm.snapshot import Snapshot, data_segments, full_memory, merge_diff, punch_zero_pages

PAGE = 4096


def _write_pages(path: Path, size_pages: int, pages: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size_pages * PAGE)
        for p, data in pages.items():
            f.seek(p * PAGE)
            f.write(data.ljust(PAGE, b"\0"))


def test_punch_zero_pages_keeps_contents(tmp_path: Path) -> None:
    mem = tmp_path / "mem"
    # fully allocated file: data in pages 1 and 700, zeros (written, so allocated) everywhere else
    with open(mem, "wb") as f:
        f.write(b"\0" * PAGE + b"x" * PAGE + b"\0" * (PAGE * 698))
        f.write(b"y" * 10 + b"\0" * (PAGE - 10) + b"\0" * PAGE)
    before = mem.read_bytes()
    allocated_before = os.stat(mem).st_blocks * 512
    punched = punch_zero_pages(mem)
    assert mem.read_bytes() == before
    assert punched == (702 - 2) * PAGE
    assert os.stat(mem).st_blocks * 512 <= allocated_before - punched + 2 * PAGE
    fd = os.open(mem, os.O_RDONLY)
    try:
        segs = data_segments(fd, len(before))
    finally:
        os.close(fd)
    assert segs == [(PAGE, 2 * PAGE), (700 * PAGE, 701 * PAGE)]
    assert punch_zero_pages(mem) == 0  # idempotent


def test_merge_diff_overlays_dirty_pages(tmp_path: Path) -> None:
    base, diff, out = tmp_path / "base", tmp_path / "diff", tmp_path / "out"
    _write_pages(base, 64, {0: b"base0", 5: b"base5", 63: b"base63"})
    _write_pages(diff, 64, {5: b"diff5", 9: b"diff9"})
    merge_diff(base, diff, out)
    data = out.read_bytes()
    assert len(data) == 64 * PAGE
    assert data[0:5] == b"base0" and data[5 * PAGE:5 * PAGE + 5] == b"diff5"
    assert data[9 * PAGE:9 * PAGE + 5] == b"diff9" and data[63 * PAGE:63 * PAGE + 6] == b"base63"
    assert data[5 * PAGE + 5:6 * PAGE] == b"\0" * (PAGE - 5)  # the whole diff page replaced the base page


def _snapdir(d: Path, **over: object) -> Path:
    d.mkdir(parents=True)
    (d / "vmstate").write_bytes(b"state")
    _write_pages(d / "mem", 4, {0: b"m"})
    meta = {"format": "firecracer-snapshot", "version": 1, "type": "Full", "firecracker_version": "1.14.2",
            "snapshot_format": "v8.0.0", "created": "2026-11-28T00:00:00Z", "parent": None}
    meta.update(over)
    (d / "snapshot.json").write_text(json.dumps(meta))
    return d


def test_snapshot_json_roundtrip_and_diff_chain(tmp_path: Path) -> None:
    full = Snapshot.load(_snapdir(tmp_path / "full"))
    assert full.type is SnapshotType.FULL and full.snapshot_format == "v8.0.0"
    diff_dir = _snapdir(tmp_path / "diff", type="Diff", parent=str(tmp_path / "full"))
    _write_pages(diff_dir / "mem", 4, {2: b"d"})
    diff = Snapshot.load(diff_dir)
    merged = full_memory(diff).read_bytes()
    assert merged[0:1] == b"m" and merged[2 * PAGE:2 * PAGE + 1] == b"d"


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda d: (d / "snapshot.json").unlink(), "missing"),
    (lambda d: (d / "snapshot.json").write_text("{nope"), "not valid JSON"),
    (lambda d: (d / "snapshot.json").write_text('{"format": "other"}'), "not a firecracer-snapshot"),
    (lambda d: (d / "snapshot.json").write_text('{"format": "firecracer-snapshot", "type": "Half"}'),
     "bad or missing"),
    (lambda d: (d / "mem").unlink(), "missing from the snapshot directory"),
])
def test_snapshot_json_errors_name_the_file(tmp_path: Path, mutate: object, why: str) -> None:
    d = _snapdir(tmp_path / "s")
    mutate(d)  # type: ignore[operator]
    with pytest.raises(FormatError, match=why) as exc:
        Snapshot.load(d)
    assert str(d) in str(exc.value)


def test_diff_without_parent_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="Diff snapshot without a parent"):
        Snapshot.load(_snapdir(tmp_path / "d", type="Diff"))
