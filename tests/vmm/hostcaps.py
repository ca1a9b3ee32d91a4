"""What the Firecracker versions installed here can do on this host (shared by the vmm tests)."""

from __future__ import annotations

from pathlib import Path

from firecracer.fcversion import firecracker_version
from firecracer.vmm.machine import uffd_limit


def _intel_brand_without_frequency() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    model = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("model name")), "")
    return "Intel" in model and "Hz" not in model


def can_boot(fc: Path) -> bool:
    """Firecracker < 1.5 cannot start a vCPU when the host's Intel CPUID brand string has no frequency
    (machine.BRAND_OLD_FC); on other hosts (AMD, or a brand with a frequency) it boots."""
    return firecracker_version(fc).at_least(1, 5) or not _intel_brand_without_frequency()


def uffd_unsupported(fc: Path) -> str | None:
    """Why a Uffd restore with ``fc`` cannot work on this host kernel (None if it can)."""
    return uffd_limit(firecracker_version(fc))
