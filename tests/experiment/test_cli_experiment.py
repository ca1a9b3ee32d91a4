"""``firecracer experiment`` end to end in subprocesses: dry run, run, Ctrl-C + resume, report, merge."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firecracer.experiment.spec import example_spec_path

from .conftest import spec_text


def fc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "experiment", *args], capture_output=True,
                          text=True, timeout=300, check=False, cwd=cwd)


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path: Path) -> None:
    out = fc("run", str(example_spec_path()), "-o", str(tmp_path / "res"), "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["backend"] == "probe" and len(plan["runs"]) == 24
    assert {r["status"] for r in plan["runs"]} == {"pending"}
    assert not (tmp_path / "res").exists()
    half = json.loads(fc("run", "--example", "--dry-run", "--json", "--shard", "2/2").stdout)
    assert [r["run_id"] for r in half["runs"]] == [r["run_id"] for r in plan["runs"][12:]]
    text = fc("run", "--example", "--dry-run")
    assert "24 runs in this plan (2 variants × 4 strategies × 3 repetitions)" in " ".join(text.stdout.split())


def test_bad_spec_is_one_line_and_exit_1(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(spec_text().replace("repetitions = 2", "repetitions = -1"))
    out = fc("run", str(p), "--dry-run")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "study.repetitions" in out.stderr and str(p) in out.stderr


def test_sigint_mid_study_then_resume_redoes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(variants=(("v", 64),), strategies=("ondemand", "prefetch"), repetitions=150))
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "firecracer", "experiment", "run", str(spec), "-o", str(res)]
    proc = subprocess.Popen(cmd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        done: dict[str, tuple[str, str]] = {}
        while time.monotonic() < deadline and len(done) < 4:
            time.sleep(0.05)
            if (res / "results.sqlite").exists():
                try:
                    with sqlite3.connect(res / "results.sqlite", timeout=5) as c:
                        rows = c.execute("SELECT run_id, started, finished FROM runs")
                        done = {r[0]: (r[1], r[2]) for r in rows}
                except sqlite3.OperationalError:
                    pass  # schema not created yet
        assert len(done) >= 4, "the study did not record runs in time"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in " ".join(err.split())
    with sqlite3.connect(res / "results.sqlite") as c:
        before = {r[0]: (r[1], r[2]) for r in c.execute("SELECT run_id, started, finished FROM runs")}
    assert 4 <= len(before) < 300, "SIGINT came too late to test resuming"

    again = fc("run", str(spec), "-o", str(res))
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(before)} runs already recorded" in " ".join(again.stderr.split())
    with sqlite3.connect(res / "results.sqlite") as c:
        after = {r[0]: (r[1], r[2]) for r in c.execute("SELECT run_id, started, finished FROM runs")}
        statuses = {r[0] for r in c.execute("SELECT DISTINCT status FROM runs")}
    assert len(after) == 300 and statuses == {"ok"}
    assert all(after[k] == v for k, v in before.items())  # finished runs were not redone


def test_run_report_and_merge_from_the_cli(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(repetitions=1))
    for i in (1, 2):
        out = fc("run", str(spec), "-o", str(tmp_path / f"s{i}"), "--shard", f"{i}/2")
        assert out.returncode == 0, out.stderr
        assert "4 ok, 0 failed" in " ".join(out.stdout.split())
    merged = fc("merge", str(tmp_path / "all"), str(tmp_path / "s1"), str(tmp_path / "s2"))
    assert merged.returncode == 0 and "8 runs added" in " ".join(merged.stdout.split()), merged.stderr
    rep = fc("report", str(tmp_path / "all"))
    assert rep.returncode == 0, rep.stderr
    html = (tmp_path / "all" / "report.html").read_text()
    assert "8 of 8 planned runs recorded" in html
    assert os.path.isdir(tmp_path / "all" / "runs" / "big.ondemand.r1")
    ex = fc("example")
    assert ex.returncode == 0 and 'backend = "probe"' in ex.stdout


def test_missing_firecracker_stops_the_study_with_one_line(tmp_path: Path) -> None:
    out = fc("run", "--example", "-o", str(tmp_path / "res"), "--firecracker", "/nonexistent/firecracker")
    assert out.returncode == 1
    err = out.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("firecracer: error:"), err
    assert "/nonexistent/firecracker" in err or "/dev/kvm" in err


@pytest.mark.parametrize(("vcpus", "warned"), [(2, True), (1, False)])
def test_a_jvm_study_routed_to_the_lab_warns_about_two_vcpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], vcpus: int,
                                                             warned: bool) -> None:
    """Two vCPUs on TCG's threads lose a guest now and then (docs/lab.md): the user is told so."""
    from firecracer.cli.experiment import _route_to_lab
    from firecracer.experiment.spec import load_spec

    for name in ("vmlinux", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"x")
    p = tmp_path / "jvm.toml"
    p.write_text(f'[study]\nname = "j"\nbackend = "jvm"\nstrategies = ["ondemand"]\n\n[guest]\n'
                 f'mem_size_mib = 1024\nvcpus = {vcpus}\nkernel = "{tmp_path / "vmlinux"}"\n'
                 f'rootfs = "{tmp_path / "rootfs.ext4"}"\n\n[[variant]]\nname = "default"\n')
    monkeypatch.delenv("FIRECRACER_LAB", raising=False)
    monkeypatch.setattr("firecracer.placement.why_lab", lambda: "this host's KVM is PVM-nested")
    monkeypatch.setattr("firecracer.placement.lab_or_error", lambda why: None)
    assert _route_to_lab(load_spec(p), None) is True
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal's width
    assert "running the study in the lab" in err
    assert ("vcpus = 1 is steadier" in err) is warned
