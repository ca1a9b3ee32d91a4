"""``firecracer uffd serve`` as a subprocess (ready line, options after positionals, exit codes), and
the seed import/export commands."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tests.uffd.fakefc import Peer, PeerSpec, digest
from tests.uffd.test_server import pytestmark as _uffd_mark  # skips without userfaultfd

from firecracer.uffd.trace import load_trace

pytestmark = _uffd_mark
PS = 4096


def _start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "firecracer", "uffd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stderr], [], [], 1)
        if r:
            line = proc.stderr.readline()
            if "listening on" in line:
                return proc
            if not line:
                break
    proc.kill()
    _out, err = proc.communicate(timeout=10)
    raise AssertionError(f"no ready line: {err}")


def _mem(tmp_path: Path, pages: int = 16) -> Path:
    mem = tmp_path / "mem"
    mem.write_bytes(np.random.default_rng(1).integers(0, 256, pages * PS, dtype=np.uint8).tobytes())
    return mem


def test_serve_options_after_positionals(tmp_path: Path) -> None:
    mem, sock = _mem(tmp_path), str(tmp_path / "s.sock")
    proc = _start(["serve", sock, str(mem), "--strategy", "fault-around:4",
                   "--trace", str(tmp_path / "t.npz"), "--metrics", str(tmp_path / "m.json"),
                   "--accept-timeout", "20"])
    try:
        peer = Peer(PeerSpec(sock, [16 * PS], ops=[("read", [5, 13])]))
        _status, rep = peer.finish(30)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert rep["reads"]["5"] == [digest(mem.read_bytes()[5 * PS:6 * PS])]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["ok"] and m["sessions"][0]["faults"] == 2 and m["sessions"][0]["pages"]["around"] == 6
    assert len(load_trace(tmp_path / "t.npz")) == 8
    assert (tmp_path / "t.ws").exists()
    assert "uffd page server" in out and "uffd page server" not in err  # the table is the result
    assert "32.0 kB" in out  # 8 pages served, in the CLI's one byte spelling
    assert m["sessions"][0]["fault_taxonomy"]["classes"]["data"]["installed"] == 2
    assert "faults by page class and outcome" in out  # the taxonomy's table follows the metrics'


def test_serve_no_working_set(tmp_path: Path) -> None:
    mem, sock = _mem(tmp_path), str(tmp_path / "s.sock")
    proc = _start(["serve", sock, str(mem), "--trace", str(tmp_path / "t.npz"), "--no-working-set", "-q"])
    try:
        Peer(PeerSpec(sock, [16 * PS], ops=[("read", [5, 13])])).finish(30)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert len(load_trace(tmp_path / "t.npz")) == 2 and not (tmp_path / "t.ws").exists()


def test_accept_timeout_prints_no_empty_table(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "firecracer", "uffd", "serve", str(tmp_path / "s.sock"),
                          str(_mem(tmp_path)), "--accept-timeout", "0.5"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 1
    assert res.stdout == ""
    assert "uffd page server" not in res.stderr and "session" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("firecracer: error: uffd serve:")


def test_sigint_before_any_session_is_one_line_not_a_table(tmp_path: Path) -> None:
    import signal

    proc = _start(["serve", str(tmp_path / "s.sock"), str(_mem(tmp_path))])
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out == ""
    assert "uffd page server" not in err
    assert "nothing was served" in err and len(err.strip().splitlines()) == 1  # (the ready line was read)


def test_serve_fatal_handshake_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    mem, sock = _mem(tmp_path), str(tmp_path / "s.sock")
    proc = _start(["serve", "--quiet", sock, str(mem)])
    try:
        peer = Peer(PeerSpec(sock, [32 * PS], ops=[("read", [1])]))
        status, _ = peer.finish(30)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert os.WIFSIGNALED(status)
    assert err.strip().splitlines()[-1].startswith("firecracer: error: uffd serve: handshake regions cover")


def test_sigterm_while_waiting_exits_cleanly(tmp_path: Path) -> None:
    mem, sock = _mem(tmp_path), tmp_path / "s.sock"
    proc = _start(["serve", str(sock), str(mem), "--sessions", "0", "-q"])
    proc.terminate()
    proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert not sock.exists()


def test_seed_export_import_commands(tmp_path: Path) -> None:
    log = tmp_path / "seed.log"
    log.write_text("UFFD_EVENT_PAGEFAULT (r): 7 0x00007f0000001000 0x00007f0000001000 Loading: "
                   "0x0000000000001000 - 0x0000000000002000\n"
                   "UFFD_EVENT_PAGEFAULT (w): 0x00007f0000005000 0x00007f0000005000  Zeroing: "
                   "0x0000000000005000 - 0x0000000000006000\n")
    env = {**os.environ}
    run = [sys.executable, "-m", "firecracer", "uffd"]
    subprocess.run([*run, "import-seed", str(log), "-o", str(tmp_path / "t.npz")], check=True, env=env,
                   capture_output=True, timeout=60)
    tr = load_trace(tmp_path / "t.npz")
    assert tr.file_off.tolist() == [0x1000, 0x5000] and tr.meta["seed_format"] == "mixed"
    subprocess.run([*run, "export-seed", str(tmp_path / "t.npz"), "-o", str(tmp_path / "out.log")],
                   check=True, env=env, capture_output=True, timeout=60)
    lines = (tmp_path / "out.log").read_text().splitlines()
    assert lines[1] == ("UFFD_EVENT_PAGEFAULT (w): 0x00007f0000005000 0x00007f0000005000  Zeroing: "
                        "0x0000000000005000 - 0x0000000000006000")
    res = subprocess.run([*run, "info", "--json", str(tmp_path / "t.npz")], check=True, env=env,
                         capture_output=True, text=True, timeout=60)
    assert json.loads(res.stdout)["actions"]["zero"] == 1
    res = subprocess.run([*run, "info", str(tmp_path / "t.npz")], check=True, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.stderr == ""  # the table is the result: stdout
    assert "zero=1" in res.stdout and "{" not in res.stdout  # no Python/JSON dict repr for people


def test_unknown_strategy_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "firecracer", "uffd", "serve", str(tmp_path / "s"),
                          str(_mem(tmp_path)), "--strategy", "bogus"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "unknown strategy 'bogus'" in res.stderr


@pytest.mark.parametrize("bad", ["fault-around:0", "prefetch:/nonexistent.npz", "prefetch"])
def test_bad_strategy_arguments(tmp_path: Path, bad: str) -> None:
    from firecracer.errors import FirecracerError
    from firecracer.uffd.strategies import parse_strategy

    with pytest.raises(FirecracerError):
        parse_strategy(bad)
