"""Tests that boot our Linux image (the JVM) in real Firecracker: on a KVM host that boots Linux guests,
which includes the lab's L1 (``tests/lab`` runs this package there with ``firecracer lab run``).

Everything is found *before* the tests isolate FIRECRACER_CACHE: the built image (``FIRECRACER_IMAGE_DIR``
or the user's cache) and a Firecracker that can serve Uffd restores here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from firecracer import host
from firecracer.errors import FirecracerError
from firecracer.fcversion import Version, firecracker_version
from firecracer.paths import images_dir
from firecracer.vmm.binary import installed_binaries

IMAGES = Path(os.environ.get("FIRECRACER_IMAGE_DIR") or images_dir())


def _firecracker() -> tuple[Path | None, str]:
    """``$FIRECRACKER`` if set, else the newest installed one; or why it cannot do Uffd restores here."""
    found: dict[Version, Path] = {Version.parse(v): p for v, p in installed_binaries().items()}
    env = os.environ.get("FIRECRACKER")
    if env:
        found = {}
        with contextlib.suppress(FirecracerError):
            found[firecracker_version(env)] = Path(env)
    if not found:
        return None, "no Firecracker binary (set FIRECRACKER, or 'firecracer install-firecracker FILE')"
    best = max(found)
    kernel = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    if not best.at_least(1, 8) and kernel >= (6, 6):
        return None, f"Firecracker {best} cannot serve Uffd restores on host kernel {os.uname().release}"
    return found[best], ""


FIRECRACKER, _FC_WHY = _firecracker()


def _why_no_linux_guests() -> str | None:
    kvm = host.check_kvm()
    if not kvm.ok:
        return f"KVM is not usable ({kvm.detail})"
    if host.check_pvm_nested().ok:
        return ("this host's KVM is PVM-nested, where no Linux guest boots; 'python3 -m pytest -m lab "
                "tests/lab' runs these tests in the lab")
    caps = host.check_kvm_caps()
    if not caps.ok:
        return caps.detail
    return None


def _image(name: str) -> Path | None:
    link = IMAGES / name
    return link.resolve() if link.exists() else None


@pytest.fixture(scope="session")
def guest_env() -> tuple[Path, Path, Path]:
    """``(firecracker, vmlinux, rootfs)``, or a skip naming what is missing."""
    why = _why_no_linux_guests()
    if why:
        pytest.skip(why)
    if FIRECRACKER is None:
        pytest.skip(_FC_WHY)
    kernel, rootfs = _image("vmlinux"), _image("rootfs.ext4")
    if kernel is None or rootfs is None:
        pytest.skip(f"no built image in {IMAGES} (run 'firecracer image kernel' and "
                    "'firecracer image rootfs')")
    return FIRECRACKER, kernel, rootfs
