"""Every path the uffd and analysis stages read treated as hostile: garbage, binary, endless, FIFOs,
devices, directories, zip bombs, traces with impossible addresses; and page-server sockets that cannot
be created. One line naming the file, bounded time, nothing half-written left (issue 14)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tests.cli import fcr, one_line_error

from firecracer.errors import FormatError
from firecracer.uffd.trace import FLAG_FAULTING, import_seed_log, load_trace, make_trace, save_trace
from firecracer.uffd.workingset import WorkingSet

PS = 4096




def hostile(tmp_path: Path, kind: str) -> Path:
    """A path of the given hostile kind."""
    p = tmp_path / f"hostile-{kind}"
    if kind == "text":
        p.write_text("Lorem ipsum dolor sit amet,\nconsectetur adipiscing elit.\n" * 100)
    elif kind == "binary":
        p.write_bytes(np.random.default_rng(7).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
    elif kind == "endless-line":
        with open(p, "wb") as f:
            f.write(b"x" * (32 << 20))  # 32 MiB, no newline
    elif kind == "fifo":
        os.mkfifo(p)  # nobody ever writes: a plain open() would block forever
    elif kind == "device":
        p.symlink_to("/dev/zero")  # endless
    elif kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    return p


# -- seed uffd logs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "why"), [
    ("text", "no UFFD_EVENT line and no GuestRegionUffdMapping line: not a seed uffd_handler log"),
    ("binary", "binary data|not UTF-8"),
    ("endless-line", "line longer than 4096 bytes"),
    ("fifo", "is a FIFO, not a regular file"),
    ("device", "is a character device, not a regular file"),
    ("empty", "no UFFD_EVENT line"),
])
def test_seed_log_garbage_is_refused(tmp_path: Path, kind: str, why: str) -> None:
    """Before: text or binary garbage imported as '0 faults' with exit 0; a FIFO hung."""
    src = hostile(tmp_path, kind)
    out = tmp_path / "t.npz"
    t0 = time.monotonic()
    line = one_line_error(fcr("uffd", "import-seed", str(src), "-o", str(out)))
    assert time.monotonic() - t0 < 30
    assert str(src) in line
    import re

    assert re.search(why, line), line
    assert not out.exists() and not list(tmp_path.glob(".t.npz*"))


def test_seed_log_with_unaligned_addresses_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "u.log"
    log.write_text("UFFD_EVENT_PAGEFAULT (r): 0x00007fffb3cc0000 0x00007fffb3cc0000  Loading: "
                   "0x0000000003cc1010 - 0x0000000003cc2010\n")
    with pytest.raises(FormatError, match=r"u\.log:1: address not aligned to the page size 4096"):
        import_seed_log(log)


# -- traces -------------------------------------------------------------------------------------------
def _trace(tmp_path: Path, file_off: list[int], gpa: list[int] | None = None, regions_bytes: int = 128 << 20,
           vmm: str = "firecracker") -> Path:
    n = len(file_off)
    meta = {"vmm": vmm, "regions": [{"base_host_virt_addr": 1 << 40, "size": regions_bytes, "offset": 0,
                                     "page_size": PS}]}
    cols = {"t_ns": range(n), "hva": [(1 << 40) + o for o in file_off], "file_off": file_off,
            "gpa": gpa if gpa is not None else file_off, "flags": [FLAG_FAULTING] * n, "action": [0] * n,
            "fault": range(n), "service_ns": [0] * n}
    out = tmp_path / "t.npz"
    save_trace(make_trace(cols, meta), out)
    return out


def test_trace_with_impossible_addresses_is_refused(tmp_path: Path) -> None:
    """Before: unaligned gpa or gpa outside guest RAM was accepted although docs promise validation."""
    assert len(load_trace(_trace(tmp_path, [0, PS, 5 * PS]))) == 3
    with pytest.raises(FormatError, match=r"1 rows have a gpa that is not aligned to the page size 4096 "
                                          r"\(first: row 1, gpa=0x1010\)"):
        load_trace(_trace(tmp_path, [0, PS], gpa=[0, PS + 0x10]))
    with pytest.raises(FormatError, match=r"1 rows have a file_off beyond the 134,217,728-byte guest memory"):
        load_trace(_trace(tmp_path, [0, 128 << 20]))
    with pytest.raises(FormatError, match=r"gpa that is not the guest-physical address of their file_off"):
        load_trace(_trace(tmp_path, [0, PS], gpa=[0, 1 << 33]))
    # a trace of a 4 GiB guest: above 3 GiB the gpa skips the MMIO hole, as Firecracker lays it out
    ok = _trace(tmp_path, [3 << 30], gpa=[4 << 30], regions_bytes=4 << 30)
    assert int(load_trace(ok).gpa[0]) == 4 << 30


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "text", "empty"])
def test_hostile_trace_paths(tmp_path: Path, kind: str) -> None:
    p = hostile(tmp_path, kind)
    t0 = time.monotonic()
    with pytest.raises(FormatError) as exc:
        load_trace(p)
    assert time.monotonic() - t0 < 10 and str(p) in str(exc.value)
    line = one_line_error(fcr("uffd", "info", str(p))) if kind not in ("fifo", "device", "directory") else ""
    assert kind in ("fifo", "device", "directory") or str(p) in line


def test_trace_zip_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    """A member that claims 3 GiB (as a deflated run of zeros would): refused from the zip directory,
    before anything is inflated."""
    good = _trace(tmp_path, [0, PS])
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
        zout.writestr("padding.npy", bytes(4096))
    data = bytearray(bomb.read_bytes())
    cd = data.rindex(b"PK\x01\x02")  # the central directory entry of the last member, padding.npy
    assert data[cd + 46:cd + 46 + 11] == b"padding.npy"
    struct.pack_into("<I", data, cd + 24, 3 << 30)  # its uncompressed size
    bomb.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"expands to 3,2\d\d,\d\d\d,\d\d\d bytes"):
        load_trace(bomb)


@pytest.mark.parametrize("kind", ["fifo", "device", "text"])
def test_hostile_working_set_file(tmp_path: Path, kind: str) -> None:
    p = hostile(tmp_path, kind)
    with pytest.raises(FormatError, match=str(p)):
        WorkingSet(p)


# -- page-server sockets and memory files -------------------------------------------------------------
def test_serve_with_a_socket_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """Before: a traceback (FileNotFoundError / OSError: AF_UNIX path too long)."""
    mem = tmp_path / "mem"
    mem.write_bytes(bytes(16 * PS))
    line = one_line_error(fcr("uffd", "serve", str(tmp_path / "no" / "such" / "dir" / "s.sock"), str(mem)))
    assert f"{tmp_path / 'no' / 'such' / 'dir' / 's.sock'}: cannot listen on this socket path" in line
    (tmp_path / "plain").write_text("x")
    line = one_line_error(fcr("uffd", "serve", str(tmp_path / "plain"), str(mem)))
    assert "exists and is not a socket" in line
    fifo = hostile(tmp_path, "fifo")
    line = one_line_error(fcr("uffd", "serve", str(tmp_path / "s.sock"), str(fifo)))
    assert f"memory file {fifo} is not a regular file" in line


def test_serve_listens_on_a_socket_path_longer_than_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    sock = deep / "uffd.sock"
    assert len(str(sock)) > 107
    mem = tmp_path / "mem"
    mem.write_bytes(bytes(16 * PS))
    proc = subprocess.Popen([sys.executable, "-m", "firecracer", "uffd", "serve", str(sock), str(mem),
                             "--sessions", "0", "-q"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()
        assert sock.is_socket()
        dfd = os.open(deep, os.O_PATH)
        try:
            c = socket.socket(socket.AF_UNIX)
            c.connect(f"/proc/self/fd/{dfd}/uffd.sock")  # it accepts connections there
            c.close()
        finally:
            os.close(dfd)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- analysis inputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("member", ["recording.json", "memmap.npz", "nmt.txt", "trace.npz"])
def test_recording_with_a_fifo_member_is_one_line(tmp_path: Path, member: str) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "recording.json").write_text(json.dumps({"format": "firecracer-recording", "version": 1}))
    if member == "recording.json":
        (rec / member).unlink()
    os.mkfifo(rec / member)
    t0 = time.monotonic()
    line = one_line_error(fcr("analyze", str(rec), timeout=60))
    assert time.monotonic() - t0 < 30
    assert f"{rec / member}:" in line and "FIFO" in line


# -- the viewer's outputs ---------------------------------------------------------------------------------
FIXTURE = Path(__file__).parents[1] / "fixtures" / "probe_ondemand"


def test_view_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        line = one_line_error(fcr("view", str(FIXTURE), "-o", str(tmp_path / "r.html"), "--serve", "--port",
                                  str(port)))
        assert f"cannot serve on 127.0.0.1:{port} (Address already in use)" in line
    finally:
        busy.close()


def test_view_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(fcr("view", str(FIXTURE), "-o", "/proc/version/report.html"))
    assert "/proc/version/report.html: cannot write the report there" in line


@pytest.mark.root
def test_view_onto_a_full_file_system_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Before: a traceback, and report.html.tmp left behind."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        line = one_line_error(fcr("view", str(FIXTURE), "-o", str(mnt / "r.html")))
        assert f"{mnt / 'r.html'}: cannot write the report (No space left on device)" in line
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_serve_refuses_an_unwritable_trace_before_listening(tmp_path: Path) -> None:
    mem = tmp_path / "mem"
    mem.write_bytes(bytes(16 * PS))
    line = one_line_error(fcr("uffd", "serve", str(tmp_path / "s.sock"), str(mem), "--trace",
                              str(tmp_path / "missing" / "t.npz")))
    assert f"{tmp_path / 'missing' / 't.npz'}: cannot write the trace there" in line
    assert not (tmp_path / "s.sock").exists()
