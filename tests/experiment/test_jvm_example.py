"""The bundled JVM-settings study on Spring PetClinic (``experiment example --jvm``): it names the built
PetClinic image and validates into the planned 5 variants × 2 strategies × 3 repetitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from firecracer.experiment.spec import jvm_example_spec_path, load_spec


def fc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "experiment", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def _fake_build(images: Path, key: str, app: str) -> Path:
    d = images / f"rootfs-{key}"
    d.mkdir(parents=True)
    (d / "rootfs.ext4").write_bytes(b"")
    (d / "image.json").write_text(json.dumps({"app": {"name": app}}))
    return d / "rootfs.ext4"


def test_example_jvm_names_the_built_petclinic_image_and_plans_30_runs(tmp_path: Path) -> None:
    images = Path(os.environ["FIRECRACER_CACHE"]) / "images"
    petclinic = _fake_build(images, "aaaa", "petclinic")
    tiny = _fake_build(images, "bbbb", "tiny")
    os.utime(petclinic.parent / "image.json", (1, 1))  # the tiny build is newer: still not chosen
    (images / "rootfs.ext4").symlink_to(tiny)
    out = fc("example", "--jvm", "-o", str(tmp_path / "jvm.toml"))
    assert out.returncode == 0, out.stderr
    spec = load_spec(tmp_path / "jvm.toml")
    assert spec.guest.rootfs == petclinic and spec.guest.kernel == images / "vmlinux"
    plan = fc("run", str(tmp_path / "jvm.toml"), "-o", str(tmp_path / "res"), "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["backend"] == "jvm" and len(data["runs"]) == 30
    assert {r["variant"] for r in data["runs"]} == {"default", "thp-appcds", "serialgc", "c1-only", "no-cds"}
    assert {r["strategy"] for r in data["runs"]} == {"ondemand", "prefetch"}
    printed = fc("example", "--jvm")
    assert printed.returncode == 0 and 'backend = "jvm"' in printed.stdout
    assert f'rootfs = "{petclinic}"' in printed.stdout


def test_shipped_spec_file_validates() -> None:
    spec = load_spec(jvm_example_spec_path())
    assert spec.name == "petclinic-jvm-settings" and spec.repetitions == 3
    thp = spec.variant("thp-appcds")
    assert thp.jvm_options == ("-XX:+UseTransparentHugePages", "-XX:SharedArchiveFile=/opt/app/app-cds.jsa")


def test_restores_and_warmup_examples_plan_what_they_say(tmp_path: Path) -> None:
    """``--restores``: 3 requests × 4 strategies × 2; ``--warmup``: k = 0, 1, 10, 100, 1000 × 2; the header
    comments' arithmetic matches the plan, and two flags at once are refused."""
    for flag, runs, first, last in (
            ("--restores", 24, "default.ondemand.get-owners-1.r1",
             "default.prefetch-background-file.post-owners-1-pets-1-visits-new.r2"),
            ("--warmup", 10, "k0.ondemand.r1", "k1000.ondemand.r2")):
        out = fc("example", flag, "-o", str(tmp_path / "s.toml"))
        assert out.returncode == 0, out.stderr
        plan = fc("run", str(tmp_path / "s.toml"), "-o", str(tmp_path / f"res{flag}"), "--dry-run", "--json")
        assert plan.returncode == 0, plan.stderr
        ids = [r["run_id"] for r in json.loads(plan.stdout)["runs"]]
        assert (len(ids), ids[0], ids[-1]) == (runs, first, last)
        assert f"= {runs} runs" in (tmp_path / "s.toml").read_text()
    spec = load_spec(tmp_path / "s.toml")
    assert [v.warmup_requests for v in spec.variants] == [0, 1, 10, 100, 1000]
    both = fc("example", "--restores", "--warmup")
    assert both.returncode == 2 and "not --restores and --warmup" in both.stderr
