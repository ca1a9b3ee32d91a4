"""/proc readers: maps lines (names with spaces, deleted files), pagemap scanning, kpage windows."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from firecracer.guest import procfs

from .conftest import need_root


def test_maps_line_keeps_spaces_and_perms() -> None:
    m = procfs.parse_maps_line(
        b"7f00aa000000-7f00aa002000 r-xs 00001000 fe:00 1234                     /tmp/a b/c d.so (deleted)\n")
    assert (m.start, m.end, m.offset, m.inode) == (0x7F00AA000000, 0x7F00AA002000, 0x1000, 1234)
    assert m.perms == 1 | 4 | 8
    assert m.name == "/tmp/a b/c d.so (deleted)"
    assert m.seed_name == "(deleted)"


def test_anonymous_line_has_empty_name() -> None:
    m = procfs.parse_maps_line(b"7fa5918a0000-7fa591964000 rw-p 00000000 00:00 0 \n")
    assert m.name == "" and m.seed_name == "" and m.perms == 3


def test_bad_maps_line_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unparsable maps line"):
        procfs.parse_maps_line(b"hello")


def test_own_mapping_of_a_file_with_spaces(tmp_path: Path) -> None:
    d = tmp_path / "dir with space"
    d.mkdir()
    f = d / "file name.bin"
    f.write_bytes(b"x" * 8192)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 8192, prot=mmap.PROT_READ) as mem:
        assert mem[0:1] == b"x"
        names = [m.name for m in procfs.read_maps(os.getpid())]
    assert str(f) in names


def test_present_pages_of_own_anonymous_memory() -> None:
    need_root()
    size = 64 * 4096
    mem = mmap.mmap(-1, size)
    try:
        for i in range(0, size, 2 * 4096):  # touch every other page
            mem[i] = 1
        maps = procfs.read_maps(os.getpid())
        import ctypes

        addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        m = next(m for m in maps if m.start <= addr < m.end)
        fd = os.open(f"/proc/{os.getpid()}/pagemap", os.O_RDONLY)
        try:
            got = [v for v, _ in procfs.present_pages(fd, addr, addr + size)]
            words = [w for _, w in procfs.present_pages(fd, addr, addr + size)]
        finally:
            os.close(fd)
        assert got == [addr + i for i in range(0, size, 2 * 4096)]
        assert all(w & procfs.PM_PFN_MASK for w in words)
        assert all(procfs.pm_bits(w) & 1 for w in words)  # private anon: exclusive
        assert m.perms & 2
    finally:
        mem.close()


def test_kpage_windows_and_scan_agree() -> None:
    need_root()
    with procfs.KPageFiles() as kp:
        n = kp.max_pfn()
        assert n > 1000
        assert os.pread(os.open("/proc/kpageflags", os.O_RDONLY), 8, (n - 1) * 8)
        buddy = 1 << procfs.KPF["BUDDY"]
        hits = []
        for pfn, fl, cn in kp.scan(buddy, limit_pfn=min(n, 1 << 18)):
            assert fl & buddy
            assert kp.lookup(pfn) == (fl, cn)
            hits.append(pfn)
            if len(hits) > 2000:
                break
        assert hits == sorted(hits)


def test_kernel_segments_from_iomem(tmp_path: Path) -> None:
    text = ("00000000-00000fff : Reserved\n00100000-bffdffff : System RAM\n"
            "  01000000-0220bb07 : Kernel code\n  02400000-02e09fff : Kernel rodata\n"
            "  03000000-0327c13f : Kernel data\n  03b34000-03c57fff : Kernel bss\n"
            "fee00000-fee00fff : Local APIC\n")
    p = tmp_path / "iomem"
    p.write_text(text)
    segs = procfs.kernel_segments(str(p))
    assert [(s.name, s.start, s.end) for s in segs] == [
        ("Kernel code", 0x1000000, 0x220BB07), ("Kernel rodata", 0x2400000, 0x2E09FFF),
        ("Kernel data", 0x3000000, 0x327C13F), ("Kernel bss", 0x3B34000, 0x3C57FFF)]
