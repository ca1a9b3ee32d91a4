"""Memory-file offset ↔ guest-physical address, the one place that knows Firecracker's RAM layout.

Firecracker writes guest RAM regions back to back into the snapshot memory file, in guest-physical
order, skipping the holes (``ANCHORS.md`` §1.4, Firecracker ``arch_memory_regions``):

* x86-64: RAM from gpa 0; the 32-bit MMIO hole [3 GiB, 4 GiB) and the 64-bit hole [256 GiB, 512 GiB)
  hold no RAM. So ``file_off == gpa`` below 3 GiB, ``gpa - 1 GiB`` in [4 GiB, 256 GiB) and
  ``gpa - 257 GiB`` from 512 GiB on.
* aarch64: DRAM starts at 2 GiB (``file_off = gpa - 2 GiB``) up to the hole at [256 GiB, 512 GiB),
  then one more region.

Public API (stable; used by ``firecracer.uffd`` to fill ``trace.gpa`` and by the analysis join):

``Layout.for_guest(mem_bytes, arch="x86_64")`` → ``Layout`` with ``regions`` (``Region(gpa, size,
file_off)``), ``file_off_to_gpa(off)`` and ``gpa_to_file_off(gpa)``. Both accept an ``int`` (returns
``int``) or a numpy integer array (returns ``uint64`` array, vectorised with ``searchsorted``) and raise
``AddressError`` when any address lies outside guest RAM (in a hole, or past the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: x86-64: start of the 32-bit MMIO gap (``MMIO32_MEM_START``) and its end (4 GiB).
X86_MMIO32_START = 3 * GiB
X86_MMIO32_END = 4 * GiB
#: Both architectures: the 64-bit hole Firecracker leaves for MMIO (``[256 GiB, 512 GiB)``).
MMIO64_START = 256 * GiB
MMIO64_END = 512 * GiB
#: aarch64: ``DRAM_MEM_START``.
ARM64_DRAM_START = 2 * GiB

ARCHES = ("x86_64", "aarch64")

U64Array = npt.NDArray[np.uint64]


class AddressError(FirecracerError):
    """An address lies outside guest RAM (in an MMIO hole or beyond the last region)."""


@dataclass(frozen=True)
class Region:
    """One guest RAM region: ``size`` bytes at guest-physical ``gpa``, stored at ``file_off`` in the file."""

    gpa: int
    size: int
    file_off: int

    @property
    def gpa_end(self) -> int:
        """Exclusive end in guest-physical space."""
        return self.gpa + self.size


@dataclass(frozen=True)
class Layout:
    """Guest RAM regions in file order; converts between ``file_off`` and ``gpa``."""

    arch: str
    regions: tuple[Region, ...]

    @classmethod
    def for_guest(cls, mem_bytes: int, arch: str = "x86_64") -> Layout:
        """Firecracker's layout for a guest of ``mem_bytes`` of RAM (``mem_size_mib << 20``).

        Raises ``AddressError`` for an unknown arch or a non-positive size.
        """
        if mem_bytes <= 0:
            raise AddressError(f"guest memory size must be positive, got {mem_bytes}")
        if arch in ("x86_64", "amd64", "x86-64"):
            arch = "x86_64"
            pieces = [(0, X86_MMIO32_START), (X86_MMIO32_END, MMIO64_START), (MMIO64_END, None)]
        elif arch in ("aarch64", "arm64"):
            arch = "aarch64"
            pieces = [(ARM64_DRAM_START, MMIO64_START), (MMIO64_END, None)]
        else:
            raise AddressError(f"unknown guest architecture {arch!r} (known: {', '.join(ARCHES)})")
        regions: list[Region] = []
        left = mem_bytes
        off = 0
        for start, end in pieces:
            if left <= 0:
                break
            size = left if end is None else min(left, end - start)
            regions.append(Region(start, size, off))
            off += size
            left -= size
        return cls(arch, tuple(regions))

    @property
    def mem_bytes(self) -> int:
        """Total guest RAM (= memory-file size)."""
        return sum(r.size for r in self.regions)

    def _arrays(self) -> tuple[U64Array, U64Array, U64Array]:
        gpa = np.array([r.gpa for r in self.regions], dtype=np.uint64)
        size = np.array([r.size for r in self.regions], dtype=np.uint64)
        off = np.array([r.file_off for r in self.regions], dtype=np.uint64)
        return gpa, size, off

    @overload
    def file_off_to_gpa(self, file_off: int) -> int: ...
    @overload
    def file_off_to_gpa(self, file_off: npt.NDArray[np.integer]) -> U64Array: ...

    def file_off_to_gpa(self, file_off: int | npt.NDArray[np.integer]) -> int | U64Array:
        """Guest-physical address of memory-file offset(s); ``AddressError`` past the end of RAM."""
        gpa, size, off = self._arrays()
        arr = _as_u64(file_off)
        idx = np.searchsorted(off, arr, side="right").astype(np.int64) - 1
        bad = (idx < 0) | (arr >= off[np.maximum(idx, 0)] + size[np.maximum(idx, 0)])
        if bad.any():
            first = int(arr[bad][0])
            raise AddressError(f"memory-file offset {first:#x} is beyond guest RAM "
                               f"({self.mem_bytes:#x} bytes)")
        res = gpa[idx] + (arr - off[idx])
        return int(res[0]) if isinstance(file_off, int | np.integer) else res

    @overload
    def gpa_to_file_off(self, gpa: int) -> int: ...
    @overload
    def gpa_to_file_off(self, gpa: npt.NDArray[np.integer]) -> U64Array: ...

    def gpa_to_file_off(self, gpa: int | npt.NDArray[np.integer]) -> int | U64Array:
        """Memory-file offset of guest-physical address(es); ``AddressError`` in a hole or past RAM."""
        start, size, off = self._arrays()
        arr = _as_u64(gpa)
        idx = np.searchsorted(start, arr, side="right").astype(np.int64) - 1
        safe = np.maximum(idx, 0)
        bad = (idx < 0) | (arr >= start[safe] + size[safe])
        if bad.any():
            first = int(arr[bad][0])
            raise AddressError(f"guest-physical address {first:#x} is not guest RAM "
                               f"({self.describe()})")
        res = off[idx] + (arr - start[idx])
        return int(res[0]) if isinstance(gpa, int | np.integer) else res

    def describe(self) -> str:
        """One line: the RAM regions in gpa space, e.g. ``x86_64 RAM [0x0, 0xc0000000) [0x100000000, …)``."""
        parts = " ".join(f"[{r.gpa:#x}, {r.gpa_end:#x})" for r in self.regions)
        return f"{self.arch} RAM {parts}"


def _as_u64(value: int | npt.NDArray[np.integer]) -> U64Array:
    if isinstance(value, int | np.integer):
        if int(value) < 0:
            raise AddressError(f"negative address {int(value)}")
        return np.array([int(value)], dtype=np.uint64)
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise AddressError(f"addresses must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise AddressError(f"negative address {int(arr.min())}")
    return arr.astype(np.uint64, copy=False)


def file_off_to_gpa(file_off: int, mem_bytes: int, arch: str = "x86_64") -> int:
    """Convenience for one address: ``Layout.for_guest(mem_bytes, arch).file_off_to_gpa(file_off)``."""
    return Layout.for_guest(mem_bytes, arch).file_off_to_gpa(file_off)


def gpa_to_file_off(gpa: int, mem_bytes: int, arch: str = "x86_64") -> int:
    """Convenience for one address: ``Layout.for_guest(mem_bytes, arch).gpa_to_file_off(gpa)``."""
    return Layout.for_guest(mem_bytes, arch).gpa_to_file_off(gpa)
