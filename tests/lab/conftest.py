"""Lab tests boot real L1 machines (QEMU TCG + emulated SVM). They reuse the user's cached L1 kernel and
Firecracker binaries (linked into the test's own cache, so nothing is written to the user's), and hand
the user's built image to the guest-VM tests that run inside L1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firecracer.fcversion import Version
from firecracer.paths import cache_dir, images_dir
from firecracer.vmm.binary import installed_binaries
from firecracer.vmm.lifeline import set_pdeathsig

USER_CACHE = cache_dir()
USER_IMAGES = Path(os.environ.get("FIRECRACER_IMAGE_DIR") or images_dir())
FC = {Version.parse(v): p for v, p in installed_binaries().items()}
REPO = Path(__file__).resolve().parents[2]


def lab_skip_reason() -> str | None:
    from firecracer import host

    c = host.check_lab()
    return None if c.ok else f"the lab cannot run here: {c.detail}"


def firecracker(at_least: tuple[int, int] = (1, 8), exact: tuple[int, int] | None = None) -> Path:
    """An installed Firecracker (the newest matching), or skip naming what is missing."""
    for v in sorted(FC, reverse=True):
        if (exact and (v.major, v.minor) == exact) or (not exact and v.at_least(*at_least)):
            return FC[v]
    want = f"v{exact[0]}.{exact[1]}" if exact else f">= {at_least[0]}.{at_least[1]}"
    pytest.skip(f"no Firecracker {want} installed ('firecracer install-firecracker FILE')")


def built_image() -> tuple[Path, Path]:
    k, r = USER_IMAGES / "vmlinux", USER_IMAGES / "rootfs.ext4"
    if not (k.exists() and r.exists()):
        pytest.skip(f"no built image in {USER_IMAGES} (run 'firecracer image kernel' and "
                    "'firecracer image rootfs')")
    return k.resolve(), r.resolve()


@dataclass
class Lab:
    """Runs ``firecracer lab …`` as a user would, with a cache seeded from the user's L1 assets."""

    env: dict[str, str]
    cwd: Path

    def run(self, *args: str, timeout: float = 900, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # SIGTERM when this test session dies (a killed pytest left 'lab run' and L1 running until the
        # run's own --timeout): 'lab run' then stops its command and powers L1 off
        return subprocess.run([sys.executable, "-m", "firecracer", "lab", *args], cwd=cwd or self.cwd,
                              env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, check=False,
                              preexec_fn=lambda: set_pdeathsig(signal.SIGTERM))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "firecracer", "lab", *args], cwd=self.cwd,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    why = lab_skip_reason()
    if why:
        pytest.skip(why)
    cache = Path(os.environ["FIRECRACER_CACHE"])
    (cache / "lab").mkdir(parents=True, exist_ok=True)
    for p in (USER_CACHE / "lab").glob("*"):
        if p.name.startswith(("kernel-", "initramfs-", "busybox")):
            (cache / "lab" / p.name).symlink_to(p)
    for sub, src in (("bin", USER_CACHE / "bin"), ("images", USER_IMAGES)):
        if src.is_dir():
            shutil.rmtree(cache / sub, ignore_errors=True)
            (cache / sub).symlink_to(src)
    work = tmp_path / "work"
    work.mkdir()
    yield Lab(dict(os.environ), work)


def qemu_pids_for(run_marker: str) -> list[int]:
    """QEMU processes whose command line mentions ``run_marker`` (a lab run directory)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmd and run_marker in cmd:
            out.append(int(p.name))
    return out
