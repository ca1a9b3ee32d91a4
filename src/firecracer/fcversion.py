"""Firecracker release numbers, and asking a binary for its own.

A leaf: the page server records the version of the Firecracker it served, ``vmm`` chooses API fields and
handshake generations by it, ``host``/``doctor`` report it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from firecracer.errors import FirecracerError

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?")


@dataclass(frozen=True, order=True)
class Version:
    """A Firecracker release number; ordering ignores the pre-release suffix."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``"Firecracker v1.14.2"``, ``"1.7.0"`` or ``"v1.17.0-dev"``."""
        m = _VERSION_RE.search(text)
        if not m:
            raise FirecracerError(f"cannot read a Firecracker version from {text.strip()[:80]!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return (self.major, self.minor, self.patch) >= (major, minor, patch)

    @property
    def api_generation(self) -> str:
        """The API family that decides which request fields and handshake keys exist.

        ``1.4`` covers v1.4–v1.6 (3-field uffd handshake, ``enable_diff_snapshots``), ``1.7`` covers
        v1.7–v1.11 (``page_size_kib``), ``1.12`` covers v1.12 and later (``page_size``, ``track_dirty_pages``
        on load from v1.13, ``network_overrides``).
        """
        if self.at_least(1, 12):
            return "1.12"
        if self.at_least(1, 7):
            return "1.7"
        return "1.4"


def firecracker_version(binary: str | Path, timeout: float = 10.0) -> Version:
    """Run ``firecracker --version``; raise ``FirecracerError`` naming the binary if that fails."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirecracerError(f"{binary}: cannot run '--version': {exc}") from exc
    first = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode != 0 or not first or "irecracker" not in first[0]:
        raise FirecracerError(f"{binary}: not a Firecracker binary ('--version' said {first[:1]!r})")
    return Version.parse(first[0])
