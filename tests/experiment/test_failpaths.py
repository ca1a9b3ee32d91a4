"""Failure paths of ``firecracer experiment`` as a user meets them (subprocesses, real files, real locks).

Two runs into one results directory, studies whose runs all fail, specs that cannot fit, malformed rows,
merges of mismatched shards, hostile results directories.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firecracer.experiment.store import DB_NAME

from .conftest import spec_text


def fx(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "experiment", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("firecracer: error: "), res.stderr
    return lines[0]


def test_second_run_into_one_results_dir_refuses_at_once_naming_the_holder(tmp_path: Path) -> None:
    """Before: both ran (48 restores for 24 runs), disturbing each other."""
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(repetitions=40, viewer=False))
    res_dir = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "firecracer", "experiment", "run", str(spec), "-o",
                              str(res_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (res_dir / DB_NAME).exists() or not (res_dir / ".lock").read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never got going"
            time.sleep(0.02)
        t0 = time.monotonic()
        line = one_line_error(fx("run", str(spec), "-o", str(res_dir)))
        assert time.monotonic() - t0 < 30  # refused at once, not after waiting for the first one
        assert f"{res_dir}: another command is writing this results directory (pid {first.pid}:" in line
        assert first.poll() is None  # the first one is not disturbed
    finally:
        first.kill()
        first.wait()
    # the holder died (SIGKILL): the kernel dropped its lock, the study resumes
    res = fx("run", str(spec), "-o", str(res_dir))
    assert res.returncode == 0, res.stderr


def _broken_firecracker(tmp_path: Path) -> Path:
    """An executable that says it is Firecracker 1.14.2 and exits 1 when started (a broken install)."""
    p = tmp_path / "firecracker"
    p.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Firecracker v1.14.2"; exit 0; fi\n'
                 'echo "broken on purpose" >&2\nexit 1\n')
    p.chmod(0o755)
    return p


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which("as") is None,
                    reason="the probe backend needs /dev/kvm and binutils")
def test_a_study_whose_runs_fail_exits_1_and_says_how_many_and_where(tmp_path: Path) -> None:
    """Before: a study where every run failed exited 0."""
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(name="allfail", strategies=("file", "ondemand"), repetitions=1,
                              variants=(("v", 64),), mem_mib=128)
                    .replace('backend = "host-replay"', 'backend = "probe"'))
    fcbin = _broken_firecracker(tmp_path)
    res = fx("run", str(spec), "-o", str(tmp_path / "r"), "--firecracker", str(fcbin))
    assert res.returncode == 1, res.stderr
    assert "0 ok, 2 failed" in res.stdout
    assert f"2 of 2 runs failed: v.file.r1, v.ondemand.r1; their reasons are in {tmp_path / 'r' / DB_NAME}" \
        in " ".join(res.stderr.split())
    with sqlite3.connect(tmp_path / "r" / DB_NAME) as c:
        reasons = [r[0] for r in c.execute("SELECT reason FROM runs")]
    assert len(reasons) == 2 and all("broken on purpose" in r or "did not come up" in r for r in reasons)
    # recorded: the same command skips them; with --keep-going a failing study exits 0
    res = fx("run", str(spec), "-o", str(tmp_path / "r"), "--firecracker", str(fcbin))
    assert res.returncode == 0 and "2 runs recorded as failed earlier" in " ".join(res.stderr.split())
    res = fx("run", str(spec), "-o", str(tmp_path / "r"), "--firecracker", str(fcbin), "--retry-failed",
             "--keep-going")
    assert res.returncode == 0 and "2 of 2 runs failed" in " ".join(res.stderr.split())


def test_a_working_set_that_cannot_fit_fails_validation(tmp_path: Path) -> None:
    """Before: it passed validation and failed every run at run time."""
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(variants=(("huge", 16000),), mem_mib=128)
                    .replace('backend = "host-replay"', 'backend = "probe"'))
    line = one_line_error(fx("run", str(spec), "--dry-run"))
    assert f"{spec}:" in line
    assert "variant[0].working_set_pages: 16000 pages do not fit a 128 MiB guest" in line
    assert "at most 14336" in line


def test_malformed_row_is_one_line_for_report_and_merge(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(strategies=("ondemand",), repetitions=1))
    assert fx("run", str(spec), "-o", str(tmp_path / "r")).returncode == 0
    with sqlite3.connect(tmp_path / "r" / DB_NAME) as c:
        c.execute("UPDATE runs SET metrics = '{not json' WHERE run_id = 'big.ondemand.r1'")
    db = tmp_path / "r" / DB_NAME
    line = one_line_error(fx("report", str(tmp_path / "r")))
    assert f"{db}: run 'big.ondemand.r1': malformed row" in line
    assert not (tmp_path / "r" / "report.html").exists()
    line = one_line_error(fx("merge", str(tmp_path / "m"), str(tmp_path / "r")))
    assert f"{db}: run 'big.ondemand.r1': malformed row" in line
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_merge_names_the_offending_source_and_leaves_nothing(tmp_path: Path) -> None:
    """Before: it named the destination, and the first shard's rows were already merged."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(spec_text(strategies=("ondemand",), repetitions=1))
    b.write_text(spec_text(strategies=("ondemand",), repetitions=2))  # another spec, same study name
    assert fx("run", str(a), "-o", str(tmp_path / "ra")).returncode == 0
    assert fx("run", str(b), "-o", str(tmp_path / "rb")).returncode == 0
    line = one_line_error(fx("merge", str(tmp_path / "m"), str(tmp_path / "ra"), str(tmp_path / "rb")))
    assert f"firecracer: error: {tmp_path / 'rb'}: holds study 't' from another spec" in line
    assert "nothing was merged" in line
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))
    # into an existing results directory of the first study: refused too, nothing written
    shutil.copytree(tmp_path / "ra", tmp_path / "m2")
    before = (tmp_path / "m2" / DB_NAME).read_bytes()
    one_line_error(fx("merge", str(tmp_path / "m2"), str(tmp_path / "rb")))
    assert (tmp_path / "m2" / DB_NAME).read_bytes() == before


def test_hostile_entries_in_the_results_directory_fail_runs_not_the_tool(tmp_path: Path) -> None:
    """A file where a run's directory goes, a variant directory that is a file: recorded, no traceback."""
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(strategies=("ondemand",), repetitions=1))
    r = tmp_path / "r"
    (r / "runs").mkdir(parents=True)
    (r / "runs" / "small.ondemand.r1").write_text("in the way")
    (r / "variants").mkdir()
    (r / "variants" / "big").write_text("in the way")
    res = fx("run", str(spec), "-o", str(r))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "1 ok, 1 failed" in res.stdout  # the stray file was replaced; the variant could not be prepared
    with sqlite3.connect(r / DB_NAME) as c:
        rows = dict(c.execute("SELECT run_id, status FROM runs"))
    assert rows == {"small.ondemand.r1": "ok", "big.ondemand.r1": "failed"}


@pytest.mark.firecracker
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_study_leaves_nothing_running(firecracker_bin: Path, tmp_path: Path, sig: int) -> None:
    """Before: SIGTERM or SIGKILL of `experiment run` left Firecracker (spinning), the page server and
    /tmp/fcx-* directories behind, unknown to `vm ls` and `vm kill`."""
    from firecracer.vmm.lifeline import processes_by_run_dir

    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(name="stop", strategies=("ondemand", "file"), repetitions=3,
                              variants=(("v", 256),), mem_mib=128)
                    .replace('backend = "host-replay"', 'backend = "probe"'))
    state = Path(os.environ["FIRECRACER_STATE"]).resolve()
    proc = subprocess.Popen([sys.executable, "-m", "firecracer", "experiment", "run", str(spec), "-o",
                             str(tmp_path / "r"), "--firecracker", str(firecracker_bin)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def ours() -> list[int]:
            return [p for d, pids in processes_by_run_dir().items() if d.startswith(str(state)) for p in pids]

        deadline = time.monotonic() + 60
        while not any("uffd" in Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in ours()
                      if Path(f"/proc/{p}").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, "no restore with a page server"
            time.sleep(0.01)
        running = ours()
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        assert rc == (128 + sig if sig == signal.SIGTERM else -sig)
        deadline = time.monotonic() + 10
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ours() == [], f"still running 10 s after {signal.Signals(sig).name}: {running}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listed = subprocess.run([sys.executable, "-m", "firecracer", "vm", "ls", "--all", "--json"],
                            capture_output=True, text=True, check=True).stdout
    assert all(r["processes"] == [] for r in json.loads(listed))
    res = fx("run", str(spec), "-o", str(tmp_path / "r"), "--firecracker", str(firecracker_bin))
    assert res.returncode == 0, res.stderr  # the lock went with the process: the study resumes and ends
