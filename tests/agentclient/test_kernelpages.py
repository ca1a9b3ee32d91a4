"""Kernel allocations that no collector section names get an explicit, flag-named kernel mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from firecracer.agentclient.kernelpages import (
    CLASSES,
    KPF_BUDDY,
    KPF_NOPAGE,
    KPF_PGTABLE,
    KPF_RESERVED,
    KPF_SLAB,
    add_kernel_allocations,
)
from firecracer.analysis.memmap import PID_KERNEL, Memmap, load_memmap, save_memmap


def _process_memmap() -> Memmap:
    """One process owning PFNs 0 and 1."""
    return Memmap(
        owner_pid=np.array([42], dtype=np.int64), map_owner=np.array([0], dtype=np.int32),
        map_start=np.array([0x1000], dtype=np.uint64), map_end=np.array([0x3000], dtype=np.uint64),
        map_offset=np.zeros(1, dtype=np.uint64), map_perms=np.array([3], dtype=np.uint8),
        page_map=np.zeros(2, dtype=np.int32), page_owner=np.zeros(2, dtype=np.int32),
        page_vaddr=np.array([0x1000, 0x2000], dtype=np.uint64),
        page_paddr=np.array([0x0, 0x1000], dtype=np.uint64),
        page_pm=np.ones(2, dtype=np.uint8), page_kflags=np.zeros(2, dtype=np.uint64),
        page_kcount=np.ones(2, dtype=np.uint32),
        meta={"format": "firecracer-memmap", "version": 1, "page_size": 4096, "owner_exe": ["/bin/x"],
              "map_name": [""]},
    )


def test_unowned_pages_are_classified_by_kpageflags(tmp_path: Path) -> None:
    f = [1 << KPF_SLAB, 1 << KPF_SLAB, 1 << KPF_SLAB, 1 << KPF_BUDDY, 1 << KPF_PGTABLE, 0,
         1 << KPF_NOPAGE, 1 << KPF_RESERVED, 1 << 5]
    flags = np.array(f, dtype=np.uint64)
    counts = np.zeros(len(f), dtype=np.uint64)
    mm, per_class = add_kernel_allocations(_process_memmap(), flags, counts)
    got = {int(p) // 4096: mm.map_name[int(m)] for p, m, o in
           zip(mm.page_paddr, mm.page_map, mm.page_owner, strict=True) if mm.owner_pid[o] == PID_KERNEL}
    assert got == {2: CLASSES[0], 4: CLASSES[1], 5: CLASSES[5], 7: CLASSES[2], 8: CLASSES[4]}
    assert per_class[CLASSES[0]] == 1 and sum(per_class.values()) == 5
    save_memmap(mm, tmp_path / "memmap.npz")
    back = load_memmap(tmp_path / "memmap.npz")
    assert back.n_pages == 7 and back.meta["kernel_by_kpageflags"] == per_class
