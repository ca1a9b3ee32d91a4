"""Export a memmap as the seed's ``= / v / p`` text (virt2phys output, read by the original UffdVisualizer).

Byte-compatible with ``tools/virt2phys.c`` (SEED.md §4) for the same pages, including its quirks:
every number is printed with ``%#018lx``, so a zero prints as 18 zeros without ``0x``; process
mapping names are cut to the text after the last space (``full_names=True`` keeps them whole; the
UffdVisualizer reads the rest of the line either way); kernel ``v`` lines end at the inclusive iomem end;
the page-cache ``v`` line spans ``_SC_PHYS_PAGES * PAGE_SIZE`` (``meta.phys_mem_bytes``). The free-page
section has no seed equivalent and is left out unless ``include_free``.
"""

from __future__ import annotations

from typing import TextIO

from firecracer.guest.memmap import PID_FREE, PID_KERNEL, PID_PAGECACHE, Memmap


def hex18(value: int) -> str:
    """C's ``printf("%#018lx", value)``: ``0x`` + 16 digits, but 18 zeros (no ``0x``) for zero."""
    return f"0x{value:016x}" if value else "0" * 18


def write_seed(mm: Memmap, out: TextIO, *, full_names: bool = False, include_free: bool = False) -> int:
    """Write ``mm`` in the seed's text format to ``out``; returns the number of ``p`` lines written."""
    by_map: dict[int, list[int]] = {}
    by_owner_unmapped: dict[int, list[int]] = {}
    for k, m in enumerate(mm.page_map):
        if m >= 0:
            by_map.setdefault(m, []).append(k)
        else:
            by_owner_unmapped.setdefault(mm.page_owner[k], []).append(k)
    maps_of: dict[int, list[int]] = {}
    for j, o in enumerate(mm.map_owner):
        maps_of.setdefault(o, []).append(j)
    vaddr, paddr, pm, kflags = mm.page_vaddr, mm.page_paddr, mm.page_pm, mm.page_kflags
    written = 0
    w = out.write
    for o, pid in enumerate(mm.owner_pid):
        if pid == PID_FREE and not include_free:
            continue
        w(f"= {pid} {mm.owner_exe[o]}\n")
        if pid > 0:
            for j in maps_of.get(o, []):
                name = mm.map_name[j]
                if not full_names and name:
                    name = name.rsplit(" ", 1)[-1]
                w(f"v {hex18(mm.map_start[j])} {hex18(mm.map_end[j])} {name}\n")
                for k in by_map.get(j, []):
                    p = pm[k]
                    w(f"p {hex18(vaddr[k])} {hex18(paddr[k])} {p & 1} {(p >> 1) & 1}\n")
                    written += 1
        elif pid == PID_KERNEL:
            for j in maps_of.get(o, []):
                w(f"v {hex18(mm.map_start[j])} {hex18(mm.map_end[j] - 1)} {mm.map_name[j]}\n")
                for k in by_map.get(j, []):
                    w(f"p {hex18(vaddr[k])} {hex18(kflags[k])}\n")
                    written += 1
        else:
            label = "/proc/kpageflags" if pid == PID_PAGECACHE else "free"
            w(f"v {hex18(0)} {hex18(int(mm.meta.get('phys_mem_bytes', 0)))} {label}\n")
            for k in by_owner_unmapped.get(o, []):
                w(f"p {hex18(paddr[k])} {hex18(kflags[k])}\n")
                written += 1
    return written
