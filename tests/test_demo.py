"""``firecracer demo``: the mode follows what the host can do, and each mode really runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firecracer import host
from firecracer.demo import choose_mode
from firecracer.errors import FirecracerError


def test_no_firecracker_means_sample_mode_with_reason(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIRECRACKER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    choice = choose_mode(str(tmp_path / "missing-firecracker"))
    assert choice.mode == "sample"
    assert "no Firecracker binary" in choice.why


def test_forcing_an_impossible_mode_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FirecracerError, match=r"demo mode 'jvm' is not possible here: .*Firecracker"):
        choose_mode(str(tmp_path / "missing-firecracker"), forced="jvm")


def test_pvm_host_never_picks_jvm(firecracker_bin: Path) -> None:
    if not host.check_pvm_nested().ok:
        pytest.skip("this host's KVM is not PVM-nested")
    choice = choose_mode(str(firecracker_bin))
    assert choice.mode == "probe"
    assert "PVM-nested" in choice.why


@pytest.mark.firecracker
def test_probe_mode_runs_the_study_and_writes_its_report(firecracker_bin: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "firecracer", "demo", "--no-browser", "--mode", "probe",
                          "--firecracker", str(firecracker_bin), "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "probe mode" in out.stdout
    report = (tmp_path / "probe-report.html").read_text()
    assert "8 of 8 planned runs recorded" in report
    assert "<svg" in report


def test_sample_mode_analyses_and_views_the_bundled_recordings(tmp_path: Path) -> None:
    from firecracer import samples

    if not samples.names():
        pytest.skip("no bundled sample recordings in this checkout")
    out = subprocess.run([sys.executable, "-m", "firecracer", "demo", "--no-browser", "--mode", "sample",
                          "-o", str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sample mode" in out.stdout
    # a short summary leads: pages, MiB, attribution per recording, the page's path; no tables
    assert "first request after restore touched" in out.stdout and "% attributed" in out.stdout
    assert "viewer: " in out.stdout and "Java Heap" not in out.stdout
    assert len(out.stdout.splitlines()) < 15
    html = (tmp_path / "sample-view.html").read_text()
    assert "<canvas" in html


def test_demo_json_and_verbose(tmp_path: Path) -> None:
    import json

    from firecracer import samples

    if not samples.names():
        pytest.skip("no bundled sample recordings in this checkout")
    out = subprocess.run([sys.executable, "-m", "firecracer", "demo", "--no-browser", "--mode", "sample",
                          "--json", "-o", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert {"mode", "host", "recordings", "view"} <= set(data)
    assert data["mode"] == "sample" and Path(data["view"]).is_file()
    assert all(Path(p, "trace.npz").is_file() for p in data["recordings"])
    verbose = subprocess.run([sys.executable, "-m", "firecracer", "demo", "--no-browser", "--mode", "sample",
                              "--verbose", "-o", str(tmp_path)], capture_output=True, text=True, timeout=600,
                             check=False, env={**os.environ, "COLUMNS": "200"})
    assert verbose.returncode == 0 and "Java Heap" in verbose.stdout


@pytest.mark.parametrize(("lab", "vcpus"), [("", 2), ("L1 under QEMU TCG", 1)])
def test_the_jvm_demo_boots_one_vcpu_in_the_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                lab: str, vcpus: int) -> None:
    """L2 on two of L1's TCG threads loses guests now and then (docs/lab.md): one vCPU there."""
    from firecracer.demo import write_jvm_spec
    from firecracer.experiment.spec import load_spec

    for name in ("vmlinux", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr("firecracer.demo.latest_kernel", lambda: tmp_path / "vmlinux")
    monkeypatch.setattr("firecracer.demo.latest_rootfs", lambda: tmp_path / "rootfs.ext4")
    monkeypatch.setenv("FIRECRACER_LAB", lab)
    spec = load_spec(write_jvm_spec(tmp_path / "demo" / "jvm-study.toml"))
    assert spec.guest.vcpus == vcpus
