"""Cache plumbing: input hashing, the 'latest' links, pruning old builds."""

from __future__ import annotations

import os
import time
from pathlib import Path

from firecracer.fsio import short_hash
from firecracer.image._build import link_latest, prune


def test_short_hash_separates_parts() -> None:
    assert short_hash(["ab", "c"]) != short_hash(["a", "bc"])
    assert short_hash([b"x"]) == short_hash(["x"]) and len(short_hash(["x"])) == 16


def test_link_latest_is_relative_and_replaced(tmp_path: Path) -> None:
    for key in ("a", "b"):
        (tmp_path / f"kernel-{key}").mkdir()
        (tmp_path / f"kernel-{key}" / "vmlinux").write_text(key)
        link_latest(tmp_path / f"kernel-{key}" / "vmlinux", tmp_path / "vmlinux")
        assert (tmp_path / "vmlinux").read_text() == key
    assert os.readlink(tmp_path / "vmlinux") == "kernel-b/vmlinux"


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    now = time.time()
    for i in range(5):
        d = tmp_path / f"rootfs-{i}"
        d.mkdir()
        os.utime(d, (now - 100 + i, now - 100 + i))
    (tmp_path / "kernel-x").mkdir()
    removed = prune(tmp_path, "rootfs", keep=2)
    assert sorted(p.name for p in removed) == ["rootfs-0", "rootfs-1", "rootfs-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernel-x", "rootfs-3", "rootfs-4"]
