"""Give every guest page an owner: kernel allocations that no process, page cache or free list names.

Host side (numpy): :func:`complete_memmap` runs after ``collect`` has the guest's memmap, reading the
guest's kpageflags through the agent's ``exec``; the agent itself stays standard-library only.

The guest collector names process pages, the kernel image's iomem segments, page-cache pages and the
*head* pages of free buddy blocks. A restored kernel also touches slab objects, page tables, kernel
stacks, vmalloc areas and reserved pages — allocated, but owned by none of those sections — and the
*tail* pages of free buddy blocks carry no flag at all (``PG_buddy`` marks only a block's first page).
This module reads the guest's whole ``/proc/kpageflags`` and ``/proc/kpagecount`` through the agent
and adds the remaining PFNs to the memmap's kernel section, one mapping per class named after the
kpageflags that put the page there, so the attribution stays explicit about how it was made.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.memmap import Memmap, load_memmap, save_memmap
from firecracer.errors import FirecracerError
from firecracer.formats import PID_KERNEL

KPF_SLAB, KPF_BUDDY, KPF_NOPAGE, KPF_OFFLINE, KPF_PGTABLE, KPF_RESERVED = 7, 10, 20, 23, 26, 32

#: class name → test on (flags, count); first match wins; the last class takes what is left.
CLASSES = ("kernel: slab", "kernel: page tables", "kernel: reserved", "kernel: offline",
           "kernel: other allocated (mapcount 0, flags set: vmalloc, stacks, drivers, …)",
           "no kpageflags (free-block tail page or raw kernel allocation)")

_READER = ("import sys,zlib,base64\n"
           "n=int(sys.argv[1])\n"
           "out=[]\n"
           "for p in ('/proc/kpageflags','/proc/kpagecount'):\n"
           "    with open(p,'rb') as f: out.append(base64.b64encode(zlib.compress(f.read(n*8),6)).decode())\n"
           "sys.stdout.write(' '.join(out))\n")


def read_guest_kpages(agent: Any, max_pfn: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The guest's kpageflags and kpagecount for PFNs ``[0, max_pfn)``, through the agent's ``exec``."""
    res = agent.exec(["python3", "-c", _READER, str(max_pfn)], timeout_s=120, max_output=64 << 20)
    if res.rc != 0:
        raise FirecracerError(f"guest kpageflags read failed (rc {res.rc}): {res.stderr.strip()[:200]}")
    try:
        flags_b, count_b = (zlib.decompress(base64.b64decode(x)) for x in res.stdout.split())
    except (ValueError, zlib.error) as exc:
        raise FirecracerError(f"guest kpageflags read returned garbage: {exc}") from exc
    return np.frombuffer(flags_b, dtype=np.uint64).copy(), np.frombuffer(count_b, dtype=np.uint64).copy()


def classify(flags: npt.NDArray[np.uint64], counts: npt.NDArray[np.uint64]) -> npt.NDArray[np.int8]:
    """Per PFN: index into ``CLASSES``, or -1 for pages that need no kernel attribution (free heads,
    holes). Only meaningful for PFNs that no other memmap section owns."""
    def bit(b: int) -> npt.NDArray[np.bool_]:
        on: npt.NDArray[np.bool_] = (flags >> np.uint64(b)) & np.uint64(1) == 1
        return on

    cls = np.full(flags.shape[0], -1, dtype=np.int8)
    undecided = ~(bit(KPF_NOPAGE) | bit(KPF_BUDDY))
    for i, test in enumerate((bit(KPF_SLAB), bit(KPF_PGTABLE), bit(KPF_RESERVED), bit(KPF_OFFLINE),
                              flags != 0)):
        hit = undecided & test
        cls[hit] = i
        undecided &= ~hit
    cls[undecided] = len(CLASSES) - 1
    return cls


def add_kernel_allocations(mm: Memmap, flags: npt.NDArray[np.uint64],
                           counts: npt.NDArray[np.uint64]) -> tuple[Memmap, dict[str, int]]:
    """``mm`` plus one kernel mapping per class for every PFN no section owns; returns pages per class."""
    ps = mm.page_size
    n = min(flags.shape[0], counts.shape[0])
    owned = np.zeros(n, dtype=bool)
    pfns = (mm.page_paddr // np.uint64(ps)).astype(np.int64)
    owned[pfns[pfns < n]] = True
    cls = classify(flags[:n], counts[:n])
    cls[owned] = -1
    owner_exe = mm.owner_exe
    kernel = [i for i, pid in enumerate(mm.owner_pid.tolist()) if pid == PID_KERNEL]
    owner_pid = mm.owner_pid
    if kernel:
        k = kernel[0]
    else:
        k = len(owner_pid)
        owner_pid = np.append(owner_pid, np.int64(PID_KERNEL))
        owner_exe = [*owner_exe, "kernel"]
    map_name = mm.map_name
    new: dict[str, list[int]] = {name: [] for name in
                                 ("map_owner", "map_start", "map_end", "map_offset", "map_perms")}
    rows: list[tuple[int, npt.NDArray[np.int64]]] = []
    per_class: dict[str, int] = {}
    for ci, name in enumerate(CLASSES):
        sel = np.flatnonzero(cls == ci)
        per_class[name] = int(sel.shape[0])
        if not sel.shape[0]:
            continue
        mi = len(map_name)
        map_name = [*map_name, name]
        new["map_owner"].append(k)
        new["map_start"].append(int(sel[0]) * ps)
        new["map_end"].append((int(sel[-1]) + 1) * ps)
        new["map_offset"].append(0)
        new["map_perms"].append(0)
        rows.append((mi, sel))
    if rows:
        idx = np.concatenate([s for _, s in rows])
        pmap = np.concatenate([np.full(s.shape[0], mi, dtype=np.int32) for mi, s in rows])
        paddr = idx.astype(np.uint64) * np.uint64(ps)
    else:
        idx = np.zeros(0, dtype=np.int64)
        pmap = np.zeros(0, dtype=np.int32)
        paddr = np.zeros(0, dtype=np.uint64)
    meta = dict(mm.meta)
    meta.update(owner_exe=owner_exe, map_name=map_name, kernel_by_kpageflags=per_class)
    out = Memmap(
        owner_pid=owner_pid,
        map_owner=np.concatenate([mm.map_owner, np.array(new["map_owner"], dtype=np.int32)]),
        map_start=np.concatenate([mm.map_start, np.array(new["map_start"], dtype=np.uint64)]),
        map_end=np.concatenate([mm.map_end, np.array(new["map_end"], dtype=np.uint64)]),
        map_offset=np.concatenate([mm.map_offset, np.array(new["map_offset"], dtype=np.uint64)]),
        map_perms=np.concatenate([mm.map_perms, np.array(new["map_perms"], dtype=np.uint8)]),
        page_map=np.concatenate([mm.page_map, pmap]),
        page_owner=np.concatenate([mm.page_owner, np.full(idx.shape[0], k, dtype=np.int32)]),
        page_vaddr=np.concatenate([mm.page_vaddr, paddr]),
        page_paddr=np.concatenate([mm.page_paddr, paddr]),
        page_pm=np.concatenate([mm.page_pm, np.zeros(idx.shape[0], dtype=np.uint8)]),
        page_kflags=np.concatenate([mm.page_kflags, flags[idx]]),
        page_kcount=np.concatenate([mm.page_kcount, counts[idx].astype(np.uint32)]),
        meta=meta,
    )
    return out, per_class


def complete_memmap(agent: Any, path: Any) -> dict[str, int]:
    """Add the kernel allocations to the memmap at ``path`` (in place); pages per class."""
    p = Path(path)
    mm = load_memmap(p)
    max_pfn = int(mm.meta.get("max_pfn") or int(mm.meta.get("phys_mem_bytes", 0)) // mm.page_size)
    if max_pfn <= 0:
        raise FirecracerError(f"{p}: the memmap does not say how much memory the guest has (max_pfn)")
    flags, counts = read_guest_kpages(agent, max_pfn)
    full, per_class = add_kernel_allocations(mm, flags, counts)
    save_memmap(full, p)
    return per_class
