"""The seed's ``= / v / p`` memmap text (virt2phys output, read by the original UffdVisualizer): one writer.

Byte-compatible with ``tools/virt2phys.c`` (SEED.md §4) for the same pages, including its quirks:
every number is printed with ``%#018lx``, so a zero prints as 18 zeros without ``0x``; process
mapping names are cut to the text after the last space (``full_names=True`` keeps them whole; the
UffdVisualizer reads the rest of the line either way); kernel ``v`` lines end at the inclusive iomem end;
a page-cache section without a mapping of its own (what the guest collector makes) gets a ``v`` line
spanning ``_SC_PHYS_PAGES * PAGE_SIZE`` (``meta.phys_mem_bytes``). The free-page section has no seed
equivalent and is left out unless ``include_free``.

Standard library only (it runs in the guest); it writes the guest collector's ``Memmap`` and, through
``tolist()``, the numpy ``Memmap`` of ``firecracer.analysis`` (whose ``seedmemmap`` reads this text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from firecracer.formats import PID_FREE, PID_KERNEL, PID_PAGECACHE


class SeedSource(Protocol):
    """The columns a seed export reads (``memmap.npz``'s names; docs/formats.md)."""

    owner_exe: list[str]
    map_name: list[str]
    meta: dict[str, Any]

    @property
    def owner_pid(self) -> Any: ...
    @property
    def map_owner(self) -> Any: ...
    @property
    def map_start(self) -> Any: ...
    @property
    def map_end(self) -> Any: ...
    @property
    def page_map(self) -> Any: ...
    @property
    def page_owner(self) -> Any: ...
    @property
    def page_vaddr(self) -> Any: ...
    @property
    def page_paddr(self) -> Any: ...
    @property
    def page_pm(self) -> Any: ...
    @property
    def page_kflags(self) -> Any: ...


def _ints(col: Any) -> Sequence[int]:
    """Python ints for a column: an ``array.array`` indexes to ints already, numpy's via ``tolist``."""
    return col if not hasattr(col, "dtype") else col.tolist()  # type: ignore[no-any-return]


def hex18(value: int) -> str:
    """C's ``printf("%#018lx", value)``: ``0x`` + 16 digits, but 18 zeros (no ``0x``) for zero."""
    return f"0x{value:016x}" if value else "0" * 18


def write_seed(mm: SeedSource, out: TextIO, *, full_names: bool = False, include_free: bool = False) -> int:
    """Write ``mm`` in the seed's text format to ``out``; returns the number of ``p`` lines written.

    Sections in owner order, mappings in order, pages under their mapping in row order, then the
    section's pages without a mapping.
    """
    page_map, page_owner = _ints(mm.page_map), _ints(mm.page_owner)
    by_map: dict[int, list[int]] = {}
    by_owner_unmapped: dict[int, list[int]] = {}
    for k, m in enumerate(page_map):
        if m >= 0:
            by_map.setdefault(m, []).append(k)
        else:
            by_owner_unmapped.setdefault(page_owner[k], []).append(k)
    maps_of: dict[int, list[int]] = {}
    for j, o in enumerate(_ints(mm.map_owner)):
        maps_of.setdefault(o, []).append(j)
    vaddr, paddr, pm, kflags = _ints(mm.page_vaddr), _ints(mm.page_paddr), _ints(mm.page_pm), \
        _ints(mm.page_kflags)
    map_start, map_end = _ints(mm.map_start), _ints(mm.map_end)
    written = 0
    w = out.write
    for o, pid in enumerate(_ints(mm.owner_pid)):
        if pid == PID_FREE and not include_free:
            continue
        w(f"= {pid} {mm.owner_exe[o]}\n")
        if pid > 0:
            for j in maps_of.get(o, []):
                name = mm.map_name[j]
                if not full_names and name:
                    name = name.rsplit(" ", 1)[-1]
                w(f"v {hex18(map_start[j])} {hex18(map_end[j])} {name}\n")
                for k in by_map.get(j, []):
                    p = pm[k]
                    w(f"p {hex18(vaddr[k])} {hex18(paddr[k])} {p & 1} {(p >> 1) & 1}\n")
                    written += 1
            for k in by_owner_unmapped.get(o, []):
                p = pm[k]
                w(f"p {hex18(vaddr[k])} {hex18(paddr[k])} {p & 1} {(p >> 1) & 1}\n")
                written += 1
            continue
        if not maps_of.get(o) and pid != PID_KERNEL:
            label = "/proc/kpageflags" if pid == PID_PAGECACHE else "free"
            w(f"v {hex18(0)} {hex18(int(mm.meta.get('phys_mem_bytes', 0)))} {label}\n")
        for j in maps_of.get(o, []):
            end = map_end[j] - (1 if pid == PID_KERNEL else 0)    # /proc/iomem ends are inclusive
            w(f"v {hex18(map_start[j])} {hex18(end)} {mm.map_name[j]}\n")
            for k in by_map.get(j, []):        # kernel/page cache/free: vaddr is the gpa
                w(f"p {hex18(vaddr[k])} {hex18(kflags[k])}\n")
                written += 1
        for k in by_owner_unmapped.get(o, []):
            w(f"p {hex18(paddr[k])} {hex18(kflags[k])}\n")
            written += 1
    return written


def write_seed_text(mm: SeedSource, path: str | Path, *, full_names: bool = False,
                    include_free: bool = False) -> int:
    """``write_seed`` into file ``path`` (atomically: a temporary file renamed); the ``p`` lines."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
        n = write_seed(mm, fh, full_names=full_names, include_free=include_free)
    tmp.replace(p)
    return n
