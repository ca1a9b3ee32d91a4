"""Address conversions at every boundary of Firecracker's layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firecracer.ramlayout import AddressError, GiB, Layout, Region, file_off_to_gpa, gpa_to_file_off

PAGE = 4096


def test_small_x86_guest_is_identity() -> None:
    lay = Layout.for_guest(1 * GiB)
    assert lay.regions == (Region(0, GiB, 0),)
    assert lay.file_off_to_gpa(0) == 0
    assert lay.file_off_to_gpa(GiB - PAGE) == GiB - PAGE
    with pytest.raises(AddressError, match="beyond guest RAM"):
        lay.file_off_to_gpa(GiB)
    with pytest.raises(AddressError, match="not guest RAM"):
        lay.gpa_to_file_off(GiB)


def test_x86_mmio32_hole_boundaries() -> None:
    lay = Layout.for_guest(8 * GiB)
    assert lay.regions == (Region(0, 3 * GiB, 0), Region(4 * GiB, 5 * GiB, 3 * GiB))
    assert lay.file_off_to_gpa(3 * GiB - PAGE) == 3 * GiB - PAGE
    assert lay.file_off_to_gpa(3 * GiB) == 4 * GiB           # first page after the hole
    assert lay.gpa_to_file_off(4 * GiB) == 3 * GiB
    assert lay.gpa_to_file_off(3 * GiB - 1) == 3 * GiB - 1
    for gpa in (3 * GiB, 4 * GiB - PAGE, 4 * GiB - 1):
        with pytest.raises(AddressError):
            lay.gpa_to_file_off(gpa)
    assert lay.file_off_to_gpa(8 * GiB - PAGE) == 9 * GiB - PAGE
    with pytest.raises(AddressError):
        lay.file_off_to_gpa(8 * GiB)


def test_exactly_3gib_has_one_region() -> None:
    lay = Layout.for_guest(3 * GiB)
    assert lay.regions == (Region(0, 3 * GiB, 0),)
    with pytest.raises(AddressError):
        lay.gpa_to_file_off(4 * GiB)


def test_x86_mmio64_hole_boundaries() -> None:
    lay = Layout.for_guest(300 * GiB)
    assert lay.regions == (Region(0, 3 * GiB, 0), Region(4 * GiB, 252 * GiB, 3 * GiB),
                           Region(512 * GiB, 45 * GiB, 255 * GiB))
    assert lay.gpa_to_file_off(256 * GiB - PAGE) == 255 * GiB - PAGE   # gpa - 1 GiB
    assert lay.gpa_to_file_off(512 * GiB) == 255 * GiB                  # gpa - 257 GiB
    assert lay.file_off_to_gpa(255 * GiB) == 512 * GiB
    for gpa in (256 * GiB, 300 * GiB, 512 * GiB - 1):
        with pytest.raises(AddressError):
            lay.gpa_to_file_off(gpa)


def test_aarch64_dram_start() -> None:
    lay = Layout.for_guest(1 * GiB, "aarch64")
    assert lay.regions == (Region(2 * GiB, GiB, 0),)
    assert lay.gpa_to_file_off(2 * GiB) == 0
    assert lay.file_off_to_gpa(GiB - PAGE) == 3 * GiB - PAGE
    with pytest.raises(AddressError):
        lay.gpa_to_file_off(2 * GiB - PAGE)
    big = Layout.for_guest(260 * GiB, "arm64")
    assert big.regions[1] == Region(512 * GiB, 6 * GiB, 254 * GiB)
    assert big.file_off_to_gpa(254 * GiB) == 512 * GiB


def test_vectorised_matches_scalar() -> None:
    lay = Layout.for_guest(8 * GiB)
    offs = np.array([0, 3 * GiB - PAGE, 3 * GiB, 8 * GiB - PAGE], dtype=np.uint64)
    gpas = lay.file_off_to_gpa(offs)
    assert gpas.dtype == np.uint64
    assert gpas.tolist() == [lay.file_off_to_gpa(int(o)) for o in offs]
    assert lay.gpa_to_file_off(gpas).tolist() == offs.tolist()
    with pytest.raises(AddressError):
        lay.gpa_to_file_off(np.array([0, 3 * GiB], dtype=np.uint64))
    with pytest.raises(AddressError):
        lay.gpa_to_file_off(np.array([-1], dtype=np.int64))


def test_bad_arguments() -> None:
    with pytest.raises(AddressError, match="unknown guest architecture"):
        Layout.for_guest(GiB, "riscv64")
    with pytest.raises(AddressError):
        Layout.for_guest(0)
    assert file_off_to_gpa(3 * GiB, 4 * GiB) == 4 * GiB
    assert gpa_to_file_off(4 * GiB, 4 * GiB) == 3 * GiB


@given(st.integers(1, 1 << 20), st.sampled_from(["x86_64", "aarch64"]), st.data())
def test_roundtrip(mem_pages: int, arch: str, data: st.DataObject) -> None:
    lay = Layout.for_guest(mem_pages * (1 << 20), arch)   # up to 1 TiB in MiB steps
    off = data.draw(st.integers(0, lay.mem_bytes - 1))
    assert lay.gpa_to_file_off(lay.file_off_to_gpa(off)) == off
