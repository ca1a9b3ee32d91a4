"""Shared fixtures: isolated cache/state dirs, and discovery of the Firecracker binaries to test against.

Tests that need Firecracker use ``fc_binaries`` (every installed version) or ``firecracker_bin`` (the
default one) and skip with the reason when none is found.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest

from firecracer.paths import bin_dir

# A suite started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored,
# and so would every CLI it starts: the Ctrl-C tests need it delivered. A Python handler here becomes
# SIG_DFL in children at exec, so they install their own KeyboardInterrupt handler as usual.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _all_firecracker_binaries() -> dict[str, Path]:
    """Versions installed in the *user's* cache (before tests isolate it), plus $FIRECRACKER/PATH."""
    from firecracer.errors import FirecracerError
    from firecracer.fcversion import firecracker_version
    from firecracer.vmm.binary import installed_binaries

    found: dict[str, Path] = dict(installed_binaries())
    for cand in (os.environ.get("FIRECRACKER"), shutil.which("firecracker")):
        if cand:
            with contextlib.suppress(FirecracerError):
                found.setdefault(str(firecracker_version(cand)), Path(cand))
    return found


FC_BINARIES = _all_firecracker_binaries()

# Subprocesses (``python -m firecracer …``, page servers, agents) must import the code under test, not
# whatever checkout an editable install points at: put this tree's src first on their PYTHONPATH.
_SRC = str(Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p)
USER_BIN_DIR = bin_dir()


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache and state dir, so nothing touches ~/.cache or /run."""
    base = tmp_path_factory.mktemp("fcr")
    monkeypatch.setenv("FIRECRACER_CACHE", str(base / "cache"))
    monkeypatch.setenv("FIRECRACER_STATE", str(base / "state"))


def _need_kvm() -> str | None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not usable"
    return None


@pytest.fixture
def firecracker_bin() -> Path:
    """The newest Firecracker available; skips naming what is missing."""
    why = _need_kvm()
    if why:
        pytest.skip(why)
    if not FC_BINARIES:
        pytest.skip("no Firecracker binary (set FIRECRACKER, or 'firecracer install-firecracker FILE')")
    return list(FC_BINARIES.values())[-1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``fc_any`` parametrises a test over every Firecracker version found (1.4, 1.7, 1.14 …)."""
    if "fc_any" in metafunc.fixturenames:
        if FC_BINARIES and not _need_kvm():
            metafunc.parametrize("fc_any", list(FC_BINARIES.values()), ids=[f"fc{v}" for v in FC_BINARIES])
        else:
            metafunc.parametrize("fc_any", [pytest.param(None, marks=pytest.mark.skip(
                reason=_need_kvm() or "no Firecracker binary (set FIRECRACKER, or "
                "'firecracer install-firecracker FILE')"))])
