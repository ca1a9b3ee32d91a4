"""Image tests: find the user's built kernel/rootfs *before* tests isolate FIRECRACER_CACHE.

``FIRECRACER_IMAGE_DIR`` points at another images directory (e.g. CI's); otherwise the user's cache
(``~/.cache/firecracer/images``) is used. Tests needing an image skip naming the command that builds it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from firecracer.paths import images_dir

USER_IMAGES = Path(os.environ.get("FIRECRACER_IMAGE_DIR") or images_dir())


def newest_rootfs(app: str) -> Path | None:
    """The newest rootfs in USER_IMAGES built with this workload (``petclinic``, ``tiny``), or None."""
    builds = sorted(USER_IMAGES.glob("rootfs-*/image.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in builds:
        try:
            name = json.loads(manifest.read_text()).get("app", {}).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if name == app and (manifest.parent / "rootfs.ext4").is_file():
            return manifest.parent / "rootfs.ext4"
    return None


def _built(name: str) -> Path | None:
    link = USER_IMAGES / name
    return link.resolve() if link.exists() else None


@pytest.fixture
def built_kernel() -> Path:
    """The newest built vmlinux; skips with the reason when there is none."""
    path = _built("vmlinux")
    if path is None:
        pytest.skip(f"no kernel built in {USER_IMAGES} (run 'firecracer image kernel')")
    return path


@pytest.fixture
def built_rootfs() -> Path:
    """The newest built rootfs.ext4; skips with the reason when there is none."""
    path = _built("rootfs.ext4")
    if path is None:
        pytest.skip(f"no rootfs built in {USER_IMAGES} (run 'firecracer image rootfs')")
    return path


@pytest.fixture
def qemu_bin() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    return path


@pytest.fixture
def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
