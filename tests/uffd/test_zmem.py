"""Compressed memory files (``mem.fcz``): the format on real files, damaged at real offsets, and the page
server serving every strategy from one to a forked peer playing Firecracker with a real userfaultfd."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from tests.cli import fcr, one_line_error
from tests.uffd.fakefc import PeerSpec, uffd_unavailable
from tests.uffd.test_server import HUGE, NPAGES, PS, _huge_digests, _ok, expected, serve
from tests.uffd.test_server import huge_pool as huge_pool  # the fixture

from firecracer.errors import FormatError
from firecracer.uffd.memfile import MemoryFile
from firecracer.uffd.trace import load_trace
from firecracer.uffd.workingset import WorkingSet, ws_path_for
from firecracer.uffd.zmem import HEADER, ZMemFile, compress_memory, is_zmem
from firecracer.uffd.zsource import CompressedMemoryFile, open_memory

FRAME = 4 * PS  # 4 pages per frame: the 64-page test file has 16 frames
HOLES = range(40, 48)
ZEROS = (20, 21, 22, 23)  # written as zeros (data in the raw file, a whole zero frame)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """64 pages of compressible random data, a hole at 40..47, and a frame written with zeros."""
    path = tmp_path / "mem"
    rng = np.random.default_rng(7)
    with open(path, "wb") as fh:
        for p in range(NPAGES):
            if p in HOLES:
                fh.seek(PS, os.SEEK_CUR)
            elif p in ZEROS:
                fh.write(bytes(PS))
            else:
                fh.write(rng.integers(0, 8, PS, dtype=np.uint8).tobytes())
    return path


@pytest.fixture
def zfile(raw: Path, tmp_path: Path) -> Path:
    out = tmp_path / "mem.fcz"
    compress_memory(raw, out, level=3, frame_size=FRAME, snapshot_id="abc")
    return out


def _index(z: Path) -> tuple[int, int, int, int]:
    """(n frames, n extents, index offset, meta length) from the header."""
    _m, _size, _fs, n, n_ext, idx, meta_len, _crc, _r = HEADER.unpack(z.read_bytes()[:HEADER.size])
    return n, n_ext, idx, meta_len


def _frame(z: Path, i: int) -> tuple[int, int]:
    """(file offset, compressed length) of frame ``i``, read from the index."""
    n, _e, idx, _ml = _index(z)
    data = z.read_bytes()
    off = struct.unpack_from("<Q", data, idx + 8 * i)[0]
    ln = struct.unpack_from("<I", data, idx + 8 * n + 4 * i)[0]
    return off, ln


def _flip(path: Path, off: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(off)
        b = fh.read(1)
        fh.seek(off)
        fh.write(bytes([b[0] ^ 0xFF]))


# -- the format ---------------------------------------------------------------------------------------

def test_round_trip_and_holes_cost_nothing(raw: Path, zfile: Path, tmp_path: Path) -> None:
    info_frames = _index(zfile)[0]
    assert info_frames == 16
    with ZMemFile(zfile) as z:
        z.verify()
        content = raw.read_bytes()
        assert z.pread(5 * PS + 7, 3 * PS - 3) == content[3 * PS - 3:8 * PS + 4]  # across frames
        # the hole (frames 10, 11) and the zero frame (5) are not stored; their pages are not in the data map
        assert [i for i in range(16) if z.frame_len[i] == 0] == [5, 10, 11]
        assert z.data_bytes == (NPAGES - len(HOLES) - len(ZEROS)) * PS
        assert not any(s <= 20 * PS < e for s, e in zip(z.data_start, z.data_end, strict=True))
        assert z.meta["snapshot_id"] == "abc"
        digest = z.decompress_to(tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == content
    assert digest == __import__("hashlib").sha256(content).hexdigest()
    # holes stay holes when decompressed (sparse), so going back costs no more disk than before
    assert os.stat(tmp_path / "back").st_blocks * 512 <= (NPAGES - len(HOLES) - len(ZEROS)) * PS


def test_a_mostly_empty_memory_compresses_to_almost_nothing(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with open(path, "wb") as fh:
        fh.truncate(256 << 20)
        fh.seek(100 << 20)
        fh.write(b"x" * PS)
    info = compress_memory(path, tmp_path / "big.fcz")
    assert info.data_frames == 1 and info.frames == 16384  # 16 KiB frames by default
    # header, one small frame, the index (12 bytes per frame) and meta: nothing stored for the holes
    assert info.compressed_bytes < 12 * info.frames + 8192


def test_open_memory_picks_the_kind_by_its_magic(raw: Path, zfile: Path) -> None:
    assert is_zmem(zfile) and not is_zmem(raw)
    with open_memory(raw) as m:
        assert type(m) is MemoryFile
    with open_memory(zfile) as c:
        assert isinstance(c, CompressedMemoryFile)
        assert c.size == NPAGES * PS and c.identity["id"] == "abc"


def test_cache_is_bounded_and_evicted_frames_come_back(raw: Path, zfile: Path) -> None:
    content = raw.read_bytes()
    with CompressedMemoryFile(zfile, cache_bytes=4 * FRAME) as m:
        assert m.capacity == 4
        for _ in range(2):
            for p in range(NPAGES):
                if p in HOLES or p in ZEROS:
                    continue
                m.ensure(p * PS, PS)
                assert ctypes.string_at(m.addr + p * PS, PS) == content[p * PS:(p + 1) * PS], p
                assert len(m._lru) <= 4
        assert m.stats["evictions"] > 0
        assert m.stats["frames_decompressed"] == 2 * 13  # every data frame, twice (evicted in between)


@pytest.mark.parametrize("damage, want", [
    ("frame", "frame 2 (file offset"),
    ("truncate", "truncated"),
    ("index-byte", "index is damaged (CRC-32"),
    ("index-forged", "index is inconsistent: frame 3"),
    ("magic", "not a firecracer compressed memory file"),
    ("appended", "bytes after the end"),
])
def test_damage_is_one_line_naming_the_file(zfile: Path, damage: str, want: str) -> None:
    _n, _e, idx, _ml = _index(zfile)
    if damage == "frame":
        off, ln = _frame(zfile, 2)
        _flip(zfile, off + ln // 2)
    elif damage == "truncate":
        off, ln = _frame(zfile, 7)
        os.truncate(zfile, off + ln // 2)
    elif damage == "index-byte":
        _flip(zfile, idx + 8 * 3 + 1)
    elif damage == "index-forged":  # a consistent CRC over a wrong offset: caught by the layout check
        data = bytearray(zfile.read_bytes())
        struct.pack_into("<Q", data, idx + 8 * 3, struct.unpack_from("<Q", data, idx + 8 * 3)[0] + 16)
        head = list(HEADER.unpack(data[:HEADER.size]))
        head[7] = zlib.crc32(bytes(data[idx:]))
        data[:HEADER.size] = HEADER.pack(*head)
        zfile.write_bytes(bytes(data))
    elif damage == "magic":
        _flip(zfile, 0)
    else:
        with open(zfile, "ab") as fh:
            fh.write(b"junk")
    if damage == "frame":  # the index is intact: found when the frame is read
        with ZMemFile(zfile) as z:
            with pytest.raises(FormatError, match="is damaged") as exc:
                z.read_frame(2)
            with pytest.raises(FormatError):
                z.verify()
    else:
        with pytest.raises(FormatError) as exc:
            ZMemFile(zfile)
    assert want in str(exc.value) and str(zfile) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_file_that_does_not_match_snapshot_json_is_refused(zfile: Path) -> None:
    with ZMemFile(zfile) as z:
        rec = {"file": "mem.fcz", "size": z.size, "frame_size": z.frame_size, "frames": z.n_frames,
               "compressed_bytes": z.file_size, "raw": {"sha256": z.content_sha256}}
    (zfile.parent / "snapshot.json").write_text(json.dumps({"format": "firecracer-snapshot",
                                                            "mem": {"compressed": rec}}))
    CompressedMemoryFile(zfile).close()  # matches
    rec["raw"] = {"sha256": "0" * 64}
    (zfile.parent / "snapshot.json").write_text(json.dumps({"format": "firecracer-snapshot",
                                                            "mem": {"compressed": rec}}))
    with pytest.raises(FormatError, match=r"does not match .*snapshot.json: content SHA-256"):
        CompressedMemoryFile(zfile)


# -- the page server, real userfaultfd ----------------------------------------------------------------

needs_uffd = pytest.mark.skipif(uffd_unavailable() is not None, reason=str(uffd_unavailable()))


@pytest.fixture
def sock(tmp_path: Path) -> str:
    return str(tmp_path / "uffd.sock")


@needs_uffd
@pytest.mark.parametrize("strategy", ["ondemand", "fault-around:4", "eager"])
def test_strategies_serve_correct_pages_from_a_compressed_file(sock: str, raw: Path, zfile: Path,
                                                               tmp_path: Path, strategy: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRECRACER_UFFD_ZCACHE_MIB", str(4 * FRAME / (1 << 20)))  # 4 frames: evictions
    pages = [3, 0, 63, 41, 17, 21, 30, 31, 32, 9, 3]
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", pages)])
    result, [(status, rep)] = serve(sock, zfile, spec, strategy=strategy, trace=tmp_path / "t.npz")
    assert result.ok and _ok(status), (result.metrics(), rep)
    for p in set(pages):
        assert rep["reads"][str(p)][0] == expected(raw, p), p
    m = result.sessions[0]
    assert m["native_fast_path"] is False
    z = m["compressed"]
    assert z["frames_decompressed"] >= 1 and z["cache_frames"] == 4
    if strategy == "ondemand":  # pages 41 (hole) and 21 (zero frame) are zero pages: nothing decompressed
        assert m["pages"]["zero"] == 2 and m["pages"]["load"] == 8


@needs_uffd
@pytest.mark.parametrize("kind", ["prefetch", "prefetch-background"])
def test_prefetch_from_a_working_set_built_from_a_compressed_file(sock: str, raw: Path, zfile: Path,
                                                                  tmp_path: Path, kind: str) -> None:
    rec = tmp_path / "rec.npz"
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", [3, 4, 50, 41, 60])])
    result, [(status, _rep)] = serve(sock, zfile, spec, trace=rec)
    assert result.ok and _ok(status)
    ws = WorkingSet(ws_path_for(rec), populate=False)  # written from the compressed file's pages
    try:
        ws_n, first_page = ws.n, ctypes.string_at(ws.src(0), PS)
        assert ws.meta["mem"]["id"] == "abc"
        for i in range(ws.n):
            if ws.kinds[i] == 0:
                off = int(ws.offsets[i])
                assert ctypes.string_at(ws.src(i), PS) == raw.read_bytes()[off:off + PS]
    finally:
        ws.close()
    pages = [3, 4, 50, 41, 60, 12]  # 12 is a miss: decompressed on demand
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", pages)])
    result, [(status, rep)] = serve(sock, zfile, spec, strategy=f"{kind}:{rec}")
    assert result.ok and _ok(status), (result.metrics(), rep)
    for p in pages:
        assert rep["reads"][str(p)][0] == expected(raw, p)
    pf = result.sessions[0]["prefetch"]
    assert pf["misses"] + pf["late"] >= 1
    # only the miss's frame was decompressed: the working set came from the .ws file
    assert result.sessions[0]["compressed"]["frames_decompressed"] == 1
    assert load_trace(rec).meta["mem"]["id"] == "abc"
    # 'uffd working-set' builds the same file from the compressed memory
    built = tmp_path / "again.ws"
    res = fcr("uffd", "working-set", str(rec), str(zfile), "-o", str(built))
    assert res.returncode == 0, res.stderr
    again = WorkingSet(built, populate=False)
    try:
        assert again.n == ws_n and ctypes.string_at(again.src(0), PS) == first_page
    finally:
        again.close()


@needs_uffd
def test_clones_share_one_small_cache(sock: str, raw: Path, zfile: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hand-offs served in parallel threads from one compressed file whose cache holds 4 frames:
    evictions never pull a frame from under the other session's copy."""
    monkeypatch.setenv("FIRECRACER_UFFD_ZCACHE_MIB", str(4 * FRAME / (1 << 20)))
    pages = [p for p in range(NPAGES) if p not in HOLES][::-1]
    specs = [PeerSpec(sock, [NPAGES * PS], ops=[("parallel", pages[k::2] + pages[1 - k::2])]) for k in (0, 1)]
    result, reports = serve(sock, zfile, specs[0], sessions=2, extra=specs[1:])
    assert result.ok, result.metrics()
    for status, rep in reports:
        assert _ok(status), rep
        for p in pages:
            assert rep["reads"][str(p)][0] == expected(raw, p), p
    assert result.sessions[-1]["compressed"]["evictions"] > 0


@needs_uffd
def test_a_damaged_frame_kills_the_peer_and_fails_in_one_line(sock: str, zfile: Path) -> None:
    off, ln = _frame(zfile, 2)  # pages 8..11
    _flip(zfile, off + ln // 2)
    spec = PeerSpec(sock, [NPAGES * PS], ops=[("read", [0, 9])])
    result, [(status, _rep)] = serve(sock, zfile, spec)
    assert not result.ok
    err = result.metrics()["error"]
    assert str(zfile) in err and "frame 2" in err and "damaged" in err, err
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # never left hanging


def test_uffd_serve_refuses_a_corrupt_index_before_listening(zfile: Path, tmp_path: Path) -> None:
    _n, _e, idx, _ml = _index(zfile)
    _flip(zfile, idx + 2)
    sock = tmp_path / "s.sock"
    res = fcr("uffd", "serve", str(sock), str(zfile), "--accept-timeout", "5", timeout=60)
    line = one_line_error(res)
    assert str(zfile) in line and "index is damaged" in line
    assert not sock.exists()


@pytest.fixture
def mem2m(tmp_path: Path) -> Path:
    """Six 2 MiB pages: 0, 4, 5 random data, 1 and 3 holes, 2 data in three 4 KiB blocks."""
    mem = tmp_path / "mem2m"
    rng = np.random.default_rng(3)
    with open(mem, "wb") as fh:
        for page in (0, 4, 5):
            fh.seek(page * HUGE)
            fh.write(rng.integers(0, 256, HUGE, dtype=np.uint8).tobytes())
        for blk in (0, 200, 511):
            fh.seek(2 * HUGE + blk * PS)
            fh.write(rng.integers(0, 256, PS, dtype=np.uint8).tobytes())
        fh.truncate(6 * HUGE)
    return mem


@needs_uffd
@pytest.mark.parametrize("strategy", ["ondemand", "eager", "fault-around:2", "prefetch"])
def test_2mib_pages_from_a_compressed_file(sock: str, tmp_path: Path, huge_pool: None, mem2m: Path,
                                           strategy: str) -> None:
    """2 MiB pages (hugetlbfs) served from mem.fcz: whole pages, a page with three data blocks assembled in
    the staging buffer, holes as zero pages — the same contents as from the raw file."""
    z = tmp_path / "mem2m.fcz"
    compress_memory(mem2m, z)
    if strategy == "prefetch":
        rec = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", [2, 5, 0])])
        result, _ = serve(sock, z, rec, trace=tmp_path / "rec.npz")
        assert result.ok, result.metrics()
        strategy = f"prefetch:{tmp_path / 'rec.npz'}"
    spec = PeerSpec(sock, [6 * HUGE], page_size=HUGE, ops=[("read", [2, 0, 1, 5, 3, 4])])
    result, [(status, rep)] = serve(sock, z, spec, strategy)
    assert result.ok and _ok(status), (result.metrics(), rep)
    want = _huge_digests(mem2m)
    for p in range(6):
        assert rep["reads"][str(p)] == [want[p]], p
    m = result.sessions[0]
    assert m["page_size"] == HUGE and m["bytes_zeroed"] == 2 * HUGE
