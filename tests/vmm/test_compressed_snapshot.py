"""Compressed snapshots: ``vm compress``/``vm decompress`` on real snapshot directories, the one-line
refusals, and real Firecracker restoring a compressed probe snapshot through the page server."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from tests.cli import fcr, one_line_error
from tests.vmm.hostcaps import uffd_unsupported
from tests.vmm.test_machine import assert_clean

from firecracer.errors import FirecracerError, FormatError
from firecracer.fcversion import firecracker_version
from firecracer.uffd.zmem import HEADER
from firecracer.vmm.config import MemBackend
from firecracer.vmm.machine import MicroVM
from firecracer.vmm.probe import build_probe
from firecracer.vmm.probe.run import boot_probe, trigger
from firecracer.vmm.snapshot import (
    Snapshot,
    check_compressed,
    compress_snapshot,
    decompress_snapshot,
    full_memory,
)

PAGE = 4096


def _snapdir(d: Path, pages: int = 1024, typ: str = "Full") -> Path:
    """A snapshot directory (no Firecracker needed): 4 MiB of memory, some data, a hole, zero pages."""
    d.mkdir(parents=True)
    (d / "vmstate").write_bytes(b"state")
    rng = np.random.default_rng(3)
    with open(d / "mem", "wb") as f:
        f.truncate(pages * PAGE)
        for p in range(0, pages, 3):
            f.seek(p * PAGE)
            f.write(rng.integers(0, 16, PAGE, dtype=np.uint8).tobytes() if p % 2 else bytes(PAGE))
    meta = {"format": "firecracer-snapshot", "version": 1, "id": "s1", "type": typ,
            "firecracker_version": "1.14.2", "snapshot_format": "v8.0.0", "created": "2026-12-06T00:00:00Z",
            "parent": "/x" if typ == "Diff" else None, "vm": {"mem_size_mib": pages * PAGE >> 20},
            "mem": {"size": pages * PAGE}}
    (d / "snapshot.json").write_text(json.dumps(meta))
    return d


def test_compress_then_decompress_gives_the_same_memory(tmp_path: Path) -> None:
    d = _snapdir(tmp_path / "s")
    before = (d / "mem").read_bytes()
    snap = compress_snapshot(Snapshot.load(d), frame_size=16 << 10)
    assert not (d / "mem").exists() and (d / "mem.fcz").is_file()  # the point is the disk space
    assert snap.compressed_only
    rec = snap.compressed
    assert rec is not None
    assert rec["frame_size"] == 16 << 10 and rec["frames"] == 256 and rec["size"] == len(before)
    assert rec["compressed_bytes"] == (d / "mem.fcz").stat().st_size
    assert rec["raw"]["sha256"] == hashlib.sha256(before).hexdigest()
    assert rec["data_bytes"] == sum(1 for p in range(0, 1024, 3) if p % 2) * PAGE  # zero pages are holes
    assert rec["ratio"] > 1.5 and rec["raw_kept"] is False
    assert check_compressed(snap) == d / "mem.fcz"
    with pytest.raises(FirecracerError, match="already compressed"):
        compress_snapshot(snap)
    back = decompress_snapshot(snap)
    assert (d / "mem").read_bytes() == before
    assert back.compressed is None and not (d / "mem.fcz").exists()


def test_keep_raw_keeps_both_and_the_raw_file_is_what_restores_use(tmp_path: Path) -> None:
    d = _snapdir(tmp_path / "s")
    snap = compress_snapshot(Snapshot.load(d), keep_raw=True)
    assert (d / "mem").is_file() and (d / "mem.fcz").is_file()
    assert snap.compressed is not None and snap.compressed["raw_kept"] and not snap.compressed_only


def test_diff_snapshots_are_not_compressed(tmp_path: Path) -> None:
    d = _snapdir(tmp_path / "s", typ="Diff")
    with pytest.raises(FirecracerError, match="compress a Full snapshot"):
        compress_snapshot(Snapshot.load(d))
    assert not (d / "mem.fcz").exists()


def test_a_diff_on_a_compressed_parent_asks_for_decompress(tmp_path: Path) -> None:
    parent = compress_snapshot(Snapshot.load(_snapdir(tmp_path / "p")))
    d = _snapdir(tmp_path / "d", typ="Diff")
    meta = json.loads((d / "snapshot.json").read_text())
    meta.update(parent=str(parent.dir), parent_id=parent.id)
    (d / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(FirecracerError, match=r"p: its memory exists only compressed .*vm decompress"):
        full_memory(Snapshot.load(d))


def test_file_restore_of_a_compressed_snapshot_is_one_line(tmp_path: Path) -> None:
    d = _snapdir(tmp_path / "s")
    compress_snapshot(Snapshot.load(d))
    with pytest.raises(FirecracerError, match="restore with --uffd, or 'firecracer vm decompress"):
        MicroVM.restore(d, firecracker="/nonexistent/firecracker")  # refused before Firecracker is looked up
    line = one_line_error(fcr("vm", "restore", str(d)))
    assert str(d) in line and "--uffd" in line and "compressed" in line


def test_a_compressed_file_that_does_not_match_snapshot_json_is_refused(tmp_path: Path) -> None:
    d = _snapdir(tmp_path / "s")
    compress_snapshot(Snapshot.load(d))
    meta = json.loads((d / "snapshot.json").read_text())
    meta["mem"]["compressed"]["frame_size"] = 1 << 20
    (d / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"mem.fcz: does not match .*snapshot.json: frame size 16384 here"):
        check_compressed(Snapshot.load(d))


def test_cli_compress_and_decompress(tmp_path: Path) -> None:
    d = _snapdir(tmp_path / "s")
    before = (d / "mem").read_bytes()
    res = fcr("vm", "compress", str(d), "--frame-kib", "32", "--level", "5", "--json")
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["frame_size"] == 32 << 10 and rec["level"] == 5 and rec["format"] == "firecracer-zmem"
    bad = fcr("vm", "compress", str(_snapdir(tmp_path / "t")), "--frame-kib", "48")
    assert bad.returncode == 2 and "--frame-kib 48: must be a power of two" in bad.stderr  # a usage error
    # damage a frame: decompress refuses in one line naming the file, and leaves no mem behind
    data = bytearray((d / "mem.fcz").read_bytes())
    n = HEADER.unpack(data[:HEADER.size])[3]
    idx = HEADER.unpack(data[:HEADER.size])[5]
    lens = struct.unpack_from(f"<{n}I", data, idx + 8 * n)
    first = next(i for i, ln in enumerate(lens) if ln)
    off = struct.unpack_from("<Q", data, idx + 8 * first)[0]
    good = bytes(data)
    data[off + lens[first] // 2] ^= 0xFF
    (d / "mem.fcz").write_bytes(bytes(data))
    line = one_line_error(fcr("vm", "decompress", str(d)))
    assert f"{d / 'mem.fcz'}: frame {first}" in line and "damaged" in line
    assert not (d / "mem").exists()
    (d / "mem.fcz").write_bytes(good)
    res = fcr("vm", "decompress", str(d))
    assert res.returncode == 0, res.stderr
    assert (d / "mem").read_bytes() == before


# -- real Firecracker ---------------------------------------------------------------------------------

@pytest.mark.firecracker
def test_cli_snapshot_compress_and_restore(firecracker_bin: Path, tmp_path: Path) -> None:
    why = uffd_unsupported(firecracker_bin)
    if why:
        pytest.skip(f"Firecracker {firecracker_version(firecracker_bin)}: {why}")
    fc = str(firecracker_bin)
    snap = tmp_path / "snap"
    try:
        assert fcr("vm", "boot", "--probe", "--name", "z1", "--firecracker", fc).returncode == 0
        deadline = time.monotonic() + 30
        while "PROBE READY" not in fcr("vm", "console", "z1").stdout:
            assert time.monotonic() < deadline, "probe never became ready"
            time.sleep(0.1)
        res = fcr("vm", "snapshot", "z1", str(snap), "--compress", "--frame-kib", "32", "--json")
        assert res.returncode == 0, res.stderr
        rec = json.loads(res.stdout)["mem"]["compressed"]
        assert rec["frame_size"] == 32 << 10 and rec["file"] == "mem.fcz" and not (snap / "mem").exists()
        assert "ratio" in res.stderr  # the one-line summary
        line = one_line_error(fcr("vm", "restore", str(snap), "--firecracker", fc))
        assert "--uffd" in line and "vm decompress" in line
        res = fcr("vm", "restore", str(snap), "--uffd", "--name", "z2", "--firecracker", fc)
        assert res.returncode == 0, res.stderr
        assert fcr("vm", "console", "z2", "--send", "a").returncode == 0
        while "kind=verify" not in fcr("vm", "console", "z2").stdout:
            assert time.monotonic() < deadline + 30, "no verify line after restore"
            time.sleep(0.1)
        assert "errors=0" in fcr("vm", "console", "z2").stdout
    finally:
        killed = fcr("vm", "kill", "--all")
    assert killed.returncode == 0, killed.stderr

FILL = range(4096, 4096 + 256)
TRACE = [*range(4096, 4096 + 64, 2), *range(4200, 4240), *range(6000, 6016)]


@pytest.mark.firecracker
def test_real_restore_of_a_compressed_probe_snapshot(firecracker_bin: Path, tmp_path: Path) -> None:
    why = uffd_unsupported(firecracker_bin)
    if why:
        pytest.skip(f"Firecracker {firecracker_version(firecracker_bin)}: {why}")
    elf = build_probe(TRACE, FILL, writes=[i % 5 == 0 for i in range(len(TRACE))])
    with boot_probe(elf, firecracker_bin) as vm:
        snap = vm.snapshot(tmp_path / "s", punch_holes=True)
    res = fcr("vm", "compress", str(snap.dir), "--frame-kib", "16")
    assert res.returncode == 0, res.stderr
    snap = Snapshot.load(snap.dir)
    assert snap.compressed_only
    rec = tmp_path / "rec.npz"
    with MicroVM.restore(snap, firecracker=firecracker_bin, backend=MemBackend.UFFD, trace=rec,
                         metrics=tmp_path / "m.json") as r:
        assert (trigger(r).errors, trigger(r, b"a").errors) == (0, 0)
    assert_clean(r)
    m = json.loads((tmp_path / "m.json").read_text())["sessions"][0]
    assert m["compressed"]["frames_decompressed"] > 0 and m["faults"] > 0
    for strategy in (f"prefetch:{rec}", "fault-around:16", "eager"):
        metrics = tmp_path / f"{strategy[:8]}.json"
        with MicroVM.restore(snap, firecracker=firecracker_bin, backend=MemBackend.UFFD, strategy=strategy,
                             metrics=metrics) as r:
            assert (trigger(r).errors, trigger(r, b"a").errors) == (0, 0), strategy
        assert_clean(r)
        assert json.loads(metrics.read_text())["ok"]
    # a damaged frame holding a page the walk reads: the page server fails, Firecracker is killed, nothing
    # is left running, and the failure names the file and the frame
    fcz = snap.zmem_file
    data = bytearray(fcz.read_bytes())
    n, idx = HEADER.unpack(data[:HEADER.size])[3], HEADER.unpack(data[:HEADER.size])[5]
    frame = TRACE[0] * PAGE // (16 << 10)
    off = struct.unpack_from("<Q", data, idx + 8 * frame)[0]
    ln = struct.unpack_from("<I", data, idx + 8 * n + 4 * frame)[0]
    assert ln > 0
    data[off + ln // 2] ^= 0xFF
    fcz.write_bytes(bytes(data))
    r = MicroVM.restore(snap, firecracker=firecracker_bin, backend=MemBackend.UFFD,
                        metrics=tmp_path / "bad.json")
    try:
        with pytest.raises(FirecracerError):
            trigger(r, timeout=30)
    finally:
        r.kill()
    assert_clean(r)
    bad = json.loads((tmp_path / "bad.json").read_text())
    assert not bad["ok"] and f"{fcz}: frame {frame}" in bad["error"] and "damaged" in bad["error"]
    assert os.path.exists(fcz)
