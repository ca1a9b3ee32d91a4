"""From an empty cache: ``image kernel && image rootfs && image check`` (the issue's "fresh machine" path).

Marked ``slow`` (tens of minutes on 2 shared cores); run it with ``pytest -m slow tests/image``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _fc(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "image", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.qemu
@pytest.mark.timeout(7200)
def test_kernel_rootfs_check_from_an_empty_cache(need_root: None, qemu_bin: str,
                                                request: pytest.FixtureRequest) -> None:
    expr = str(request.config.getoption("-m") or "")
    if "slow" not in expr or "not slow" in expr:
        pytest.skip("slow (a kernel + rootfs build, tens of minutes): run with 'pytest -m slow tests/image'")
    images = Path(os.environ["FIRECRACER_CACHE"]) / "images"
    assert not images.exists()
    try:
        k = _fc("kernel", "--quiet", timeout=5400)
        assert k.returncode == 0, k.stderr[-2000:]
        meta = json.loads(next(images.glob("kernel-*/kernel.json")).read_text())
        assert meta["release"].startswith("6.1") and meta["options_verified"] > 50
        r = _fc("rootfs", "--quiet", timeout=3600)
        assert r.returncode == 0, r.stderr[-2000:]
        manifest = json.loads(next(images.glob("rootfs-*/image.json")).read_text())
        assert manifest["jdk"]["has_jcmd"] and manifest["agent"]["installed"]
        assert "/opt/app/app-cds.jsa" in manifest["archives"]
        c = _fc("check", "--json", timeout=1200)
        assert c.returncode == 0, c.stdout + c.stderr
        assert json.loads(c.stdout)["ok"] is True
        assert not list(images.glob("build/*/root")), "a build tree was left behind"
    finally:
        shutil.rmtree(images, ignore_errors=True)
