"""Where the tool keeps its cache (binaries, built images) and run state (live VMs).

Both can be moved with environment variables so tests and CI never touch a user's home.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FIRECRACER_CACHE`` or ``$XDG_CACHE_HOME/firecracer`` (default ``~/.cache/firecracer``)."""
    env = os.environ.get("FIRECRACER_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "firecracer"


def bin_dir() -> Path:
    """Installed Firecracker binaries: ``firecracker-vX.Y.Z`` plus ``installed.json``."""
    return cache_dir() / "bin"


def images_dir() -> Path:
    """Built kernels and root file systems, keyed by a hash of their inputs."""
    return cache_dir() / "images"


def state_dir() -> Path:
    """Per-VM run directories (API socket, logs, pid). ``$FIRECRACER_STATE`` overrides.

    Defaults to ``/run/firecracer`` for root (tmpfs, cleared at reboot), else the cache dir.
    """
    env = os.environ.get("FIRECRACER_STATE")
    if env:
        return Path(env)
    if os.geteuid() == 0 and Path("/run").is_dir():
        return Path("/run/firecracer")
    return cache_dir() / "state"
