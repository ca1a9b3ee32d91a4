"""The seed text export: C printf compatibility (%#018lx zero quirk) and the exact line layout."""

from __future__ import annotations

import array
import ctypes
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firecracer.guest import memmap, seedfmt

_libc = ctypes.CDLL(None)


def c_printf(fmt: bytes, value: int) -> str:
    buf = ctypes.create_string_buffer(64)
    _libc.snprintf(buf, 64, fmt, ctypes.c_ulong(value))
    return buf.value.decode()


@given(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 4096, 2**63]))
def test_hex18_is_c_percent_hash_018lx(value: int) -> None:
    assert seedfmt.hex18(value) == c_printf(b"%#018lx", value)


def test_zero_prints_as_eighteen_zeros() -> None:
    assert seedfmt.hex18(0) == "000000000000000000"


def synthetic() -> memmap.Memmap:
    mm = memmap.Memmap(meta={"phys_mem_bytes": 0x3D47D000})
    o = mm.add_owner(214, "/opt/jdk/bin/java")
    m0 = mm.add_mapping(o, 0xF0A00000, 0xF2270000, 0, 3, "")
    mm.add_page(m0, o, 0xF0A00000, 0x063D4000, 1, 0x800, 1)
    m1 = mm.add_mapping(o, 0x555555554000, 0x555555583000, 0, 5, "/tmp/my dir/lib x.so")
    mm.add_page(m1, o, 0x555555554000, 0x1FF7000, 2, 0x868, 2)
    k = mm.add_owner(0, "kernel")
    km = mm.add_mapping(k, 0x1000000, 0x1A00588, 0, 0, "Kernel code")
    mm.add_page(km, k, 0x1000000, 0x1000000, 0, 0x100000000, 1)
    mm.add_page(km, k, 0x1001000, 0x1001000, 0, 0, 1)
    pc = mm.add_owner(-1, "pagecache")
    mm.add_page(-1, pc, 0x1A01000, 0x1A01000, 0, 0x400000868, 1)
    fr = mm.add_owner(-2, "free")
    mm.add_page(-1, fr, 0x2000000, 0x2000000, 0, 0x400, 0)
    return mm


EXPECTED = """\
= 214 /opt/jdk/bin/java
v 0x00000000f0a00000 0x00000000f2270000 {ANON}
p 0x00000000f0a00000 0x00000000063d4000 1 0
v 0x0000555555554000 0x0000555555583000 x.so
p 0x0000555555554000 0x0000000001ff7000 0 1
= 0 kernel
v 0x0000000001000000 0x0000000001a00587 Kernel code
p 0x0000000001000000 0x0000000100000000
p 0x0000000001001000 000000000000000000
= -1 pagecache
v 000000000000000000 0x000000003d47d000 /proc/kpageflags
p 0x0000000001a01000 0x0000000400000868
""".format(ANON="")


def test_seed_layout_matches_virt2phys() -> None:
    out = io.StringIO()
    n = seedfmt.write_seed(synthetic(), out)
    assert out.getvalue() == EXPECTED
    assert n == 5


def test_full_names_and_free_section_are_opt_in() -> None:
    out = io.StringIO()
    seedfmt.write_seed(synthetic(), out, full_names=True, include_free=True)
    text = out.getvalue()
    assert "v 0x0000555555554000 0x0000555555583000 /tmp/my dir/lib x.so\n" in text
    assert text.endswith("= -2 free\nv 000000000000000000 0x000000003d47d000 free\n"
                         "p 0x0000000002000000 0x0000000000000400\n")


def test_restrict_keeps_only_chosen_owners_with_consistent_indices() -> None:
    mm = synthetic()
    small = memmap.restrict(mm, {0, 214})
    assert list(small.owner_pid) == [214, 0]
    assert small.owner_exe == ["/opt/jdk/bin/java", "kernel"]
    assert list(small.map_owner) == [0, 0, 1] and small.map_name[2] == "Kernel code"
    assert list(small.page_owner) == [0, 0, 1, 1] and list(small.page_map) == [0, 1, 2, 2]
    assert list(small.page_paddr) == [0x063D4000, 0x1FF7000, 0x1000000, 0x1001000]
    assert small.meta["restricted_to"] == [0, 214]


def test_from_columns_refuses_other_archives() -> None:
    with pytest.raises(ValueError, match="not a firecracer-memmap"):
        memmap.Memmap.from_columns({"owner_pid": array.array("q")}, {"format": "firecracer-memmap"})
    mm = synthetic()
    cols = {c: getattr(mm, c) for c in memmap.Memmap.COLUMNS}
    back = memmap.Memmap.from_columns(cols, mm.full_meta())
    assert back.owner_exe == mm.owner_exe and back.map_name == mm.map_name and back.n_pages == 6
