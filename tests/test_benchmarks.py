"""Every script in benchmarks/ runs in its small mode (``--smoke``: seconds), so a benchmark that breaks
fails here instead of rotting unseen. Scripts that need what this host lacks skip, naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _newest_firecracker() -> Path | None:
    """The newest installed Firecracker >= 1.8, looked up at import (before the tests isolate the cache)."""
    from firecracer.fcversion import firecracker_version
    from firecracer.vmm.binary import installed_binaries

    try:
        good = [p for p in installed_binaries().values() if firecracker_version(p).at_least(1, 8)]
    except Exception:
        return None
    return max(good, key=firecracker_version) if good else None


FIRECRACKER = _newest_firecracker()


def _firecracker_probe() -> str | None:
    """Why the probe guest cannot run in real Firecracker here, or None."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "needs /dev/kvm"
    return None if FIRECRACKER else "needs Firecracker >= 1.8 (firecracer install-firecracker)"


def _collector() -> str | None:
    missing = [t for t in ("gcc", "java") if shutil.which(t) is None]
    if os.geteuid() != 0:
        return "needs root (pagemap PFNs)"
    return f"needs {', '.join(missing)}" if missing else None


def _chromium() -> str | None:
    from firecracer.viz.browser import find_chromium

    return None if find_chromium() else "needs Chromium (apt-get install chromium, or CHROMIUM=...)"


#: script → (what it needs: a function saying why it cannot run here, or None; timeout in seconds)
SCRIPTS = {
    "analysis_scale.py": (None, 120),
    "collector_vs_virt2phys.py": (_collector, 180),
    "jvm_working_set.py": (None, 60),
    "restore_strategies.py": (_firecracker_probe, 300),
    "viewer_load.py": (_chromium, 240),
    "vmm_versions.py": (_firecracker_probe, 180),
}


def test_every_benchmark_is_covered() -> None:
    assert {p.name for p in BENCH.glob("*.py")} == set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_runs_in_smoke_mode(script: str, tmp_path: Path) -> None:
    needs, timeout = SCRIPTS[script]
    why = needs() if needs is not None else None
    if why:
        pytest.skip(f"{script} --smoke {why}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FIRECRACER_STATE": str(tmp_path / "state")}
    argv = [sys.executable, str(BENCH / script), "--smoke"]
    if script == "restore_strategies.py":
        argv += ["--firecracker", str(FIRECRACKER)]
    elif script == "vmm_versions.py":
        argv.append(str(FIRECRACKER))
    res = subprocess.run(argv, capture_output=True, text=True,
                         timeout=timeout, cwd=tmp_path, env=env, check=False)
    assert res.returncode == 0, f"{script} --smoke exited {res.returncode}:\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-3000:]}"
