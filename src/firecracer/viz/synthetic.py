"""A synthetic recording (memmap, trace, NMT) of any size, for viewer tests, benchmarks and demos.

Real recordings are small on this host (a 1 GiB guest); the viewer must also stay interactive for a
16 GiB guest (4 Mi pages), so this builds one with the same shape as a real JVM guest: a kernel image at
16 MiB, a page cache, a shell and a JVM sharing ``libc``, a Java heap scattered in 64 KiB chunks over
physical memory, metaspace, class space, code cache, thread stacks, free pages, and a restore trace that
touches a few percent of it in an order like a first request (kernel, then JVM and libraries).

Everything is vectorised; 4 Mi pages take a few seconds. Nothing here is used on real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from firecracer.analysis.memmap import Memmap, save_memmap
from firecracer.formats import RecordingFacts
from firecracer.ramlayout import Layout
from firecracer.uffd.trace import make_trace, save_trace

PS = 4096
KERNEL_BASE = 16 << 20
CHUNK = 16                       # pages per physical allocation chunk (64 KiB)
JVM_PID = 4242
BASH_PID = 1

U64 = npt.NDArray[np.uint64]


@dataclass
class _Map:
    owner: int
    start: int
    end: int
    name: str
    perms: int
    present: int               # how many of its pages are present
    nmt: str | None = None     # NMT category of the reservation covering it (JVM only)


def _nmt_text(pid: int, regions: list[tuple[int, int, str, list[tuple[int, int]]]]) -> str:
    """``jcmd PID VM.native_memory detail`` shaped text for the given reserved/committed regions."""
    out = [f"{pid}:", "", "Native Memory Tracking:", "",
           "(Omitting categories weighting less than 1KB)", ""]
    tot_r = sum(e - s for s, e, _, _ in regions)
    tot_c = sum(ce - cs for _, _, _, com in regions for cs, ce in com)
    out += [f"Total: reserved={tot_r // 1024}KB, committed={tot_c // 1024}KB", ""]
    cats: dict[str, list[int]] = {}
    for s, e, cat, com in regions:
        acc = cats.setdefault(cat, [0, 0])
        acc[0] += e - s
        acc[1] += sum(ce - cs for cs, ce in com)
    for cat, (r, c) in cats.items():
        out += [f"-{cat:>26} (reserved={r // 1024}KB, committed={c // 1024}KB)",
                f"{'':28}(mmap: reserved={r // 1024}KB, committed={c // 1024}KB) ", ""]
    out += ["Virtual memory map:", ""]
    for s, e, cat, com in regions:
        out.append(f"[0x{s:016x} - 0x{e:016x}] reserved {(e - s) // 1024}KB for {cat} from")
        out.append("    [0x00007f33f8b1a27c] ReservedSpace::reserve(unsigned long, unsigned long)+0xac")
        out.append("")
        for cs, ce in com:
            out.append(f"\t[0x{cs:016x} - 0x{ce:016x}] committed {(ce - cs) // 1024}KB from")
            out.append("            [0x00007f33f8332e26] os::commit_memory(char*, unsigned long, bool)+0x66")
            out.append("")
    out += ["Details:", ""]
    return "\n".join(out) + "\n"


def make_recording(out: str | Path, mem_bytes: int = 256 << 20, seed: int = 1,
                   restored_fraction: float = 0.03, chunk: int = CHUNK) -> Path:
    """Write a synthetic recording directory (``recording.json``, memmap, trace, nmt) and return it.

    ``mem_bytes`` is the guest RAM (a multiple of 64 MiB, at least 64 MiB); about 55 % of its pages are
    owned (heap about a third), 20 % are free, and ``restored_fraction`` of the owned pages are restored.
    Physical pages are handed out in shuffled runs of ``chunk`` pages (1 = every page anywhere: the
    worst case for compression and locality).
    """
    if mem_bytes < (64 << 20) or mem_bytes % (64 << 20):
        raise ValueError("mem_bytes must be a multiple of 64 MiB, at least 64 MiB")
    rng = np.random.default_rng(seed)
    n = mem_bytes // PS
    k_pages = max(256, n // 256)                      # kernel image: 4 segments
    kernel_first = KERNEL_BASE // PS
    # physical pool: every pfn outside [0, 1 MiB) and the kernel image, in shuffled 64 KiB chunks
    pool_mask = np.ones(n, dtype=bool)
    pool_mask[:256] = False
    pool_mask[kernel_first:kernel_first + k_pages] = False
    chunks = np.arange(n // chunk)
    rng.shuffle(chunks)
    pool = (chunks[:, None] * chunk + np.arange(chunk)[None, :]).reshape(-1)
    # as Firecracker lays guest RAM out: memory-file offsets above 3 GiB are guest-physical 4 GiB and up
    layout = Layout.for_guest(mem_bytes)
    pool = layout.file_off_to_gpa(pool[pool_mask[pool]].astype(np.uint64) * np.uint64(PS))
    taken = 0

    def take(count: int) -> U64:
        nonlocal taken
        got: U64 = pool[taken:taken + count]
        taken += count
        return got

    owners = [(0, "kernel"), (-1, "pagecache"), (BASH_PID, "/usr/bin/bash"),
              (JVM_PID, "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"), (-2, "free")]
    heap_pages = n // 3
    heap_start = 0x8_0000_0000 - ((heap_pages * PS * 2 + (1 << 30) - 1) >> 30 << 30)
    heap_end = heap_start + ((heap_pages * PS * 2 + (1 << 30) - 1) >> 30 << 30)
    meta_pages, class_pages, code_pages = n // 64, n // 128, n // 48
    lib = 0x7F33_F800_0000
    maps = [
        _Map(2, 0x5555_5555_4000, 0x5555_5558_3000, "/usr/bin/bash", 1 | 4, 40),
        _Map(2, 0x5555_5558_3000, 0x5555_5560_0000, "[heap]", 1 | 2, 60),
        _Map(2, 0x7FFF_F7DC_0000, 0x7FFF_F7F5_5000, "/usr/lib/x86_64-linux-gnu/libc.so.6", 1 | 4, 200),
        _Map(2, 0x7FFF_FFFD_E000, 0x7FFF_FFFF_F000, "[stack]", 1 | 2, 8),
        _Map(3, heap_start, heap_end, "", 1 | 2, heap_pages, "Java Heap"),
        _Map(3, 0x8_0000_0000, 0x8_0000_0000 + (class_pages * 2 * PS), "", 1 | 2, class_pages, "Class"),
        _Map(3, 0x7F33_7F00_0000, 0x7F33_7F00_0000 + meta_pages * 2 * PS, "", 1 | 2, meta_pages,
             "Metaspace"),
        _Map(3, 0x7F20_0000_0000, 0x7F20_0000_0000 + code_pages * 3 * PS, "", 1 | 2 | 4, code_pages, "Code"),
        _Map(3, 0x7F33_E900_0000, 0x7F33_E900_0000 + 64 * 1024 * 20, "", 1 | 2, 20 * 16, "Thread Stack"),
        _Map(3, lib, lib + 0x1200000, "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so", 1 | 4, 2500),
        _Map(3, 0x7FFF_F7DC_0000, 0x7FFF_F7F5_5000, "/usr/lib/x86_64-linux-gnu/libc.so.6", 1 | 4, 300),
    ]
    kseg = [("Kernel code", 0.4), ("Kernel rodata", 0.25), ("Kernel data", 0.15), ("Kernel bss", 0.2)]
    map_owner: list[int] = []
    map_start: list[int] = []
    map_end: list[int] = []
    map_name: list[str] = []
    map_perms: list[int] = []
    rows_owner: list[npt.NDArray[np.int32]] = []
    rows_map: list[npt.NDArray[np.int32]] = []
    rows_v: list[U64] = []
    rows_p: list[U64] = []
    rows_pm: list[npt.NDArray[np.uint8]] = []

    def add_rows(owner: int, mi: int, v: U64, p: U64, pm: int) -> None:
        rows_owner.append(np.full(len(v), owner, dtype=np.int32))
        rows_map.append(np.full(len(v), mi, dtype=np.int32))
        rows_v.append(v.astype(np.uint64))
        rows_p.append(p.astype(np.uint64))
        rows_pm.append(np.full(len(v), pm, dtype=np.uint8))

    # kernel: its iomem segments, every page present, vaddr = paddr
    pos = KERNEL_BASE
    for name, frac in kseg:
        cnt = max(1, int(k_pages * frac))
        map_owner.append(0)
        map_start.append(pos)
        map_end.append(pos + cnt * PS)
        map_name.append(name)
        map_perms.append(1)
        va = (pos + np.arange(cnt, dtype=np.uint64) * PS).astype(np.uint64)
        add_rows(0, len(map_owner) - 1, va, va, 0)
        pos += cnt * PS
    # processes; libc shares its physical pages between bash, the JVM and the page cache
    libc_phys: U64 | None = None
    file_phys: list[U64] = []
    nmt_regions: list[tuple[int, int, str, list[tuple[int, int]]]] = []
    for m in maps:
        mi = len(map_owner)
        map_owner.append(m.owner)
        map_start.append(m.start)
        map_end.append(m.end)
        map_name.append(m.name)
        map_perms.append(m.perms)
        npages = (m.end - m.start) // PS
        cnt = min(m.present, npages)
        idx = np.sort(rng.choice(npages, size=cnt, replace=False)) if cnt < npages else np.arange(npages)
        if m.nmt == "Java Heap":
            idx = np.arange(cnt)           # the heap is committed from its start
        va = (m.start + idx.astype(np.uint64) * PS).astype(np.uint64)
        if m.name.endswith("libc.so.6"):
            if libc_phys is None:
                libc_phys = take(300)
            pa = libc_phys[idx % len(libc_phys)]
        else:
            pa = take(cnt)
        pm = 2 if m.name.startswith("/") else 1
        if m.name.startswith("/"):
            file_phys.append(pa)
        add_rows(m.owner, mi, va, pa, pm)
        if m.nmt is not None:
            if m.nmt == "Java Heap":
                com = [(m.start, m.start + ((cnt * PS + (1 << 20) - 1) >> 20 << 20))]
            elif m.nmt in ("Metaspace", "Class"):
                com = [(m.start + i * (1 << 20), m.start + i * (1 << 20) + (512 << 10))
                       for i in range((m.end - m.start) >> 20)]
            else:
                com = [(m.start, min(m.end, m.start + ((cnt * PS + (1 << 16) - 1) >> 16 << 16)))]
            nmt_regions.append((m.start, m.end, m.nmt, com))
    # page cache: the file pages above plus other cached files; then free pages
    cache = np.concatenate([np.unique(np.concatenate(file_phys)), take(n // 20)])
    add_rows(1, -1, cache, cache, 0)
    free = take(n // 5)
    add_rows(4, -1, free, free, 0)

    page_owner = np.concatenate(rows_owner)
    page_paddr = np.concatenate(rows_p)
    kflags = np.zeros(len(page_paddr), dtype=np.uint64)
    kflags[page_owner == 0] = np.uint64(1 << 32)                         # RESERVED
    kflags[page_owner == 1] = np.uint64((1 << 34) | 0x868)              # MAPPEDTODISK|LRU|…
    kflags[page_owner == 3] = np.uint64((1 << 12) | (1 << 5) | (1 << 4))  # ANON|LRU|DIRTY
    kflags[page_owner == 4] = np.uint64(1 << 10)                         # BUDDY
    mm = Memmap(
        owner_pid=np.array([o[0] for o in owners], dtype=np.int64),
        map_owner=np.array(map_owner, dtype=np.int32), map_start=np.array(map_start, dtype=np.uint64),
        map_end=np.array(map_end, dtype=np.uint64), map_offset=np.zeros(len(map_owner), dtype=np.uint64),
        map_perms=np.array(map_perms, dtype=np.uint8),
        page_map=np.concatenate(rows_map), page_owner=page_owner, page_vaddr=np.concatenate(rows_v),
        page_paddr=page_paddr, page_pm=np.concatenate(rows_pm), page_kflags=kflags,
        page_kcount=np.ones(len(page_paddr), dtype=np.uint32),
        meta={"format": "firecracer-memmap", "version": 1, "page_size": PS,
              "owner_exe": [o[1] for o in owners], "map_name": map_name, "phys_mem_bytes": mem_bytes,
              "kernel": "6.1.0-synthetic", "source": "synthetic", "collected": "2026-11-28T00:00:00+00:00"})

    # trace: kernel pages first, then a mix of JVM, library and other pages; a few not in the memmap
    owned = np.unique(page_paddr[page_owner != 4])
    kern = np.unique(page_paddr[page_owner == 0])
    nrest = max(16, int(len(owned) * restored_fraction))
    pick = rng.choice(owned, size=nrest, replace=False)
    stray = take(max(1, nrest // 100))                  # restored, but no owner recorded
    order = np.concatenate([kern[: len(kern) // 8], pick[~np.isin(pick, kern)], stray])
    t_ns = np.cumsum(rng.exponential(40_000, size=len(order))).astype(np.uint64)
    action = np.zeros(len(order), dtype=np.uint8)
    action[rng.random(len(order)) < 0.01] = 1
    flags = (rng.random(len(order)) < 0.3).astype(np.uint8) | np.uint8(2)
    file_off = layout.gpa_to_file_off(order)
    trace = make_trace({"t_ns": t_ns, "hva": file_off + np.uint64(0x7F00_0000_0000), "file_off": file_off,
                        "gpa": order, "flags": flags, "action": action,
                        "fault": np.arange(len(order), dtype=np.int32),
                        "service_ns": np.full(len(order), 45_000, dtype=np.uint32)},
                       {"strategy": "ondemand", "vmm": "firecracker", "firecracker_version": "1.14.2",
                        "faults": len(order), "events": {"pagefault": len(order)},
                        "regions": [{"base_host_virt_addr": 0x7F00_0000_0000, "size": mem_bytes,
                                     "offset": 0, "page_size": PS}]})
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    save_memmap(mm, d / "memmap.npz")
    save_trace(trace, d / "trace.npz")
    (d / "nmt.txt").write_text(_nmt_text(JVM_PID, sorted(nmt_regions)), encoding="utf-8")
    RecordingFacts(source="synthetic", created="2026-11-28T00:00:00Z",
                   label=f"synthetic {mem_bytes >> 20} MiB", guest={"mem_size_mib": mem_bytes >> 20},
                   jvm={"pid": JVM_PID}, strategy="ondemand").write(d / "recording.json")
    return d
