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


#: run directories hold a guest's console, Firecracker's log and metrics and ``vm.json``: owner only, as
#: Firecracker's jailer keeps each VM to itself
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (missing parents too) with mode 0700, or make an existing one 0700.

    An existing directory this user does not own is left as it is (its owner decides).

    :raises OSError: it cannot be created.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_mode & 0o7777 != PRIVATE_DIR_MODE and st.st_uid == os.geteuid():
        path.chmod(PRIVATE_DIR_MODE)
    return path


def private_run_dir(run_dir: Path) -> Path:
    """Create a VM's run directory 0700, and the state directory and its ``vms/`` too when it lies in them."""
    state = state_dir()
    if run_dir.absolute().is_relative_to(state.absolute()):
        private_dir(state)
        if run_dir.absolute().is_relative_to((state / "vms").absolute()):
            private_dir(state / "vms")
    return private_dir(run_dir)


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open (creating) a file readable and writable by its owner only (0600, also if it existed); the
    caller closes the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o7777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
