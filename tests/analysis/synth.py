"""Small random recordings for oracle tests (the benchmark has its own, vectorised, at scale)."""

from __future__ import annotations

import numpy as np

from firecracer.analysis.memmap import FORMAT, Memmap
from firecracer.analysis.nmt import parse_nmt_text
from firecracer.analysis.recording import Recording
from firecracer.uffd.trace import make_trace

JVM = 214
PAGE = 4096


def synth_recording(seed: int, *, n_phys: int = 300, nmt: bool = True) -> Recording:
    """Processes (incl. the JVM) sharing a small physical pool, kernel, page cache, free; NMT; a trace."""
    rng = np.random.default_rng(seed)
    owners = [(1, "/bin/bash"), (JVM, "/usr/bin/java"), (300, "/usr/bin/other"), (0, "kernel"),
              (-1, "pagecache"), (-2, "free")]
    pool = np.sort(rng.choice(1 << 16, size=n_phys, replace=False)).astype(np.uint64) * np.uint64(PAGE)
    map_owner, map_start, map_end, names = [], [], [], []
    pm, po, pv, pp = [], [], [], []
    for oi, (pid, _exe) in enumerate(owners):
        if pid <= 0:
            if pid == 0:
                map_owner.append(oi)
                map_start.append(0x1000000)
                map_end.append(0x1000000 + 64 * PAGE)
                names.append("Kernel code")
            take = rng.choice(pool, size=20, replace=False)
            for a in sorted(take.tolist()):
                pm.append(len(map_owner) - 1 if pid == 0 else -1)
                po.append(oi)
                pv.append(a)
                pp.append(a)
            continue
        for k in range(3):
            s = 0xF0000000 + k * 0x100000 if pid == JVM else 0x7F0000000000 + (pid << 24) + (k << 20)
            map_owner.append(oi)
            map_start.append(s)
            map_end.append(s + 64 * PAGE)
            names.append("" if k else f"/lib/{pid}.so")
            vs = np.sort(rng.choice(64, size=int(rng.integers(5, 40)), replace=False))
            for v in vs.tolist():
                pm.append(len(map_owner) - 1)
                po.append(oi)
                pv.append(s + v * PAGE)
                pp.append(int(rng.choice(pool)))
    mm = Memmap(
        owner_pid=np.array([o[0] for o in owners], dtype=np.int64),
        map_owner=np.array(map_owner, dtype=np.int32), map_start=np.array(map_start, dtype=np.uint64),
        map_end=np.array(map_end, dtype=np.uint64), map_offset=np.zeros(len(map_owner), dtype=np.uint64),
        map_perms=np.zeros(len(map_owner), dtype=np.uint8),
        page_map=np.array(pm, dtype=np.int32), page_owner=np.array(po, dtype=np.int32),
        page_vaddr=np.array(pv, dtype=np.uint64), page_paddr=np.array(pp, dtype=np.uint64),
        page_pm=rng.integers(0, 4, len(pp)).astype(np.uint8),
        page_kflags=(rng.integers(0, 2, len(pp)).astype(np.uint64) << np.uint64(22)),
        page_kcount=np.ones(len(pp), dtype=np.uint32),
        meta={"format": FORMAT, "version": 1, "page_size": PAGE, "owner_exe": [o[1] for o in owners],
              "map_name": names, "source": "synthetic"})
    nrep = None
    if nmt:
        nrep = parse_nmt_text(
            f"{JVM}:\n\nNative Memory Tracking:\n\nVirtual memory map:\n\n"
            "[0x00000000f0000000 - 0x00000000f0040000] reserved and committed 256KB for Java Heap from\n"
            "    [0x00007f33f8b1a27c] ReservedSpace::reserve()+0xac\n\n"
            "[0x00000000f0100000 - 0x00000000f0140000] reserved 256KB for Metaspace from\n"
            "    [0x00007f33f8b1a27c] ReservedSpace::reserve()+0xac\n\n"
            "\t[0x00000000f0100000 - 0x00000000f0110000] committed 64KB from\n"
            "            [0x00007f33f8b1a27c] x()+0x1\n\n"
            "[0x00000000f0200000 - 0x00000000f0220000] reserved 128KB for Code\n\nDetails:\n")
    # trace: restored pages from the pool plus some outside the memmap, with repeats
    far = rng.choice(1000, size=15, replace=False).astype(np.uint64)
    outside = (np.uint64(1 << 16) + far) * np.uint64(PAGE)
    g = np.concatenate([rng.choice(pool, size=n_phys // 3), outside])
    rng.shuffle(g)
    n = len(g)
    action = rng.choice([0, 1, 2, 3], size=n).astype(np.uint8)
    tr = make_trace({"t_ns": np.arange(n) * 1000, "hva": g + np.uint64(1 << 40), "file_off": g, "gpa": g,
                     "flags": np.where(action < 2, 2, 0), "action": action,
                     "fault": np.arange(n), "service_ns": np.full(n, 50000)},
                    {"page_size": PAGE, "strategy": "synthetic"})
    meta = {"format": "firecracer-recording", "version": 1, "source": "synthetic", "label": f"synth{seed}"}
    if not nmt:
        meta["jvm"] = {"pid": JVM}
    return Recording(None, meta, mm, tr, nrep)
