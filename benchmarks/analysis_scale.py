"""Analysis at scale: a synthetic 16 GiB guest (4 Mi pages), 200 k mappings, a 1 M-fault trace.

Usage: ``python benchmarks/analysis_scale.py [--pages 4194304] [--mappings 200000] [--faults 1000000]
[--keep DIR] [--json]``

The parent process generates the inputs (seed ``= / v / p`` text, ``memmap.npz``, ``trace.npz``, an NMT
report; not timed); a fresh child process then parses and joins them and reports the seconds of each
step and its own peak RSS, so the numbers are those of the analysis alone. Target: the native path
(load memmap.npz + trace + NMT, attribute, all tables) under 10 s and 4 GiB here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PAGE = 4096


def generate(out: Path, pages: int, mappings: int, faults: int, seed: int = 1) -> dict[str, Any]:
    """Write memmap.txt (seed), memmap.npz, trace.npz and nmt.txt into ``out``; returns sizes."""
    from firecracer.analysis.memmap import FORMAT, Memmap, save_memmap
    from firecracer.formats import RecordingFacts
    from firecracer.uffd.trace import make_trace, save_trace

    rng = np.random.default_rng(seed)
    nproc = 200
    jvm = 1000
    # physical pages: 72 % mapped by processes (8 % of those shared by a second process), 2 % kernel,
    # 8 % page cache, the rest free
    perm = rng.permutation(pages).astype(np.uint64)
    n_proc_pages = int(pages * 0.72)
    n_kernel = int(pages * 0.02)
    n_cache = int(pages * 0.08)
    proc_phys = perm[:n_proc_pages]
    kern_phys = np.sort(perm[n_proc_pages:n_proc_pages + n_kernel])
    cache_phys = np.sort(perm[n_proc_pages + n_kernel:n_proc_pages + n_kernel + n_cache])
    free_phys = np.sort(perm[n_proc_pages + n_kernel + n_cache:])
    shared = rng.choice(proc_phys, size=int(n_proc_pages * 0.08), replace=False)
    rows_phys = np.concatenate([proc_phys, shared])
    nrows = rows_phys.size
    # mappings: nproc processes × (mappings / nproc) each; pages spread over them, 64-page VA slots
    per = mappings // nproc
    nmap = per * nproc
    map_of_row = np.sort(rng.integers(0, nmap, size=nrows))
    starts_in_map = np.searchsorted(map_of_row, np.arange(nmap + 1))
    counts = np.diff(starts_in_map)
    slot = 1 << 30                                  # VA bytes per mapping slot (room for the largest)
    map_owner = (np.arange(nmap) // per).astype(np.int32)
    map_start = (np.uint64(0x7F0000000000) + (np.arange(nmap, dtype=np.uint64) % np.uint64(per))
                 * np.uint64(slot))
    map_start[0] = np.uint64(0xF0000000)            # owner 0 is the JVM: its first mapping is the heap
    map_len = np.maximum(counts, 1).astype(np.uint64) * np.uint64(PAGE) * np.uint64(2)
    map_end = map_start + map_len
    within = np.arange(nrows) - starts_in_map[map_of_row]
    vaddr = map_start[map_of_row] + within.astype(np.uint64) * np.uint64(2 * PAGE)
    # kernel (owner nproc, 4 segments), page cache (nproc+1), free (nproc+2)
    k_map = np.arange(4) + nmap
    kseg = np.array_split(kern_phys, 4)
    owner_pid = np.concatenate([[jvm], np.arange(2, nproc + 1) * 10, [0, -1, -2]]).astype(np.int64)
    ko, co, fo = nproc, nproc + 1, nproc + 2
    page_owner = np.concatenate([map_owner[map_of_row], np.full(n_kernel, ko), np.full(n_cache, co),
                                 np.full(free_phys.size, fo)]).astype(np.int32)
    page_map = np.concatenate([map_of_row, np.repeat(k_map, [len(s) for s in kseg]),
                               np.full(n_cache, nmap + 4), np.full(free_phys.size, -1)]).astype(np.int32)
    page_map[len(map_of_row) + n_kernel:len(map_of_row) + n_kernel + n_cache] = -1
    paddr = np.concatenate([rows_phys, kern_phys, cache_phys, free_phys]) * np.uint64(PAGE)
    page_vaddr = np.concatenate([vaddr, paddr[nrows:]])
    kstart = np.array([int(s[0]) * PAGE if len(s) else 0 for s in kseg], dtype=np.uint64)
    kend = np.array([int(s[-1]) * PAGE + PAGE if len(s) else 0 for s in kseg], dtype=np.uint64)
    # kernel segments are ranges; make them cover their pages
    all_map_owner = np.concatenate([map_owner, np.full(4, ko), [co]]).astype(np.int32)
    all_start = np.concatenate([map_start, kstart, [0]]).astype(np.uint64)
    all_end = np.concatenate([map_end, kend, [pages * PAGE]]).astype(np.uint64)
    names = [f"/usr/lib/lib{i % 5000}.so" if i % 3 else "" for i in range(nmap)]
    names += ["Kernel code", "Kernel rodata", "Kernel data", "Kernel bss", "/proc/kpageflags"]
    n_all = page_owner.size
    mm = Memmap(owner_pid=owner_pid, map_owner=all_map_owner, map_start=all_start, map_end=all_end,
                map_offset=np.zeros(all_start.size, dtype=np.uint64),
                map_perms=np.full(all_start.size, 3, dtype=np.uint8),
                page_map=page_map, page_owner=page_owner, page_vaddr=page_vaddr, page_paddr=paddr,
                page_pm=np.ones(n_all, dtype=np.uint8), page_kflags=np.zeros(n_all, dtype=np.uint64),
                page_kcount=np.ones(n_all, dtype=np.uint32),
                meta={"format": FORMAT, "version": 1, "page_size": PAGE,
                      "owner_exe": ["/usr/bin/java"] + [f"/usr/bin/p{i}" for i in range(2, nproc + 1)]
                      + ["kernel", "pagecache", "free"], "map_name": names, "source": "synthetic"})
    save_memmap(mm, out / "memmap.npz")
    from firecracer.guest.seedfmt import write_seed_text

    write_seed_text(mm, out / "memmap.txt", full_names=True, include_free=True)
    # trace: faults in short physical runs (2–3 pages, as REAP saw), over all of RAM, shuffled
    nrun = faults // 2
    run_start = rng.integers(0, pages - 4, size=nrun).astype(np.uint64)
    run_len = rng.integers(1, 4, size=nrun)
    g = (np.repeat(run_start, run_len) + (np.arange(run_len.sum()) -
         np.repeat(np.cumsum(run_len) - run_len, run_len)).astype(np.uint64))[:faults] * np.uint64(PAGE)
    n = g.size
    tr = make_trace({"t_ns": np.arange(n, dtype=np.uint64) * 50_000, "hva": g + np.uint64(1 << 44),
                     "file_off": g, "gpa": g, "flags": np.full(n, 2), "action": np.zeros(n),
                     "fault": np.arange(n), "service_ns": np.full(n, 50_000)},
                    {"page_size": PAGE, "strategy": "synthetic"})
    save_trace(tr, out / "trace.npz")
    # NMT: heap over the JVM's first mapping, then 500 more regions over its other mappings
    lines = [f"{jvm}:", "", "Native Memory Tracking:", "", "Virtual memory map:", ""]
    cats = ["Java Heap", "Metaspace", "Code", "Thread Stack", "GC", "Class", "Internal"]
    for i in range(min(per, 501)):
        s, e = int(map_start[i]), int(map_end[i])
        lines.append(f"[0x{s:016x} - 0x{e:016x}] reserved and committed {(e - s) >> 10}KB for "
                     f"{cats[0] if i == 0 else cats[1 + i % 6]} from")
        lines.append("    [0x00007f33f8b1a27c] ReservedSpace::reserve()+0xac")
        lines.append("")
    lines.append("Details:")
    (out / "nmt.txt").write_text("\n".join(lines) + "\n")
    RecordingFacts(source="synthetic").write(out / "recording.json")
    return {"pages": pages, "page_rows": int(n_all), "mappings": int(all_start.size), "faults": int(n),
            "memmap_txt_mb": round((out / "memmap.txt").stat().st_size / 2**20, 1)}


def measure(d: Path) -> dict[str, Any]:
    """Parse and join what ``generate`` wrote; seconds per step and peak RSS of this process."""
    from firecracer.analysis import attribute, tables
    from firecracer.analysis.memmap import load_memmap
    from firecracer.analysis.nmt import parse_nmt
    from firecracer.analysis.recording import Recording, load_trace
    from firecracer.analysis.seedmemmap import parse_seed_memmap
    from firecracer.analysis.tables import totals

    sec: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(name: str, fn: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        sec[name] = round(time.perf_counter() - t, 3)
        cpu[name] = round(time.process_time() - c, 3)
        return res

    mm = step("load_memmap_npz", lambda: load_memmap(d / "memmap.npz"))
    tr = step("load_trace_npz", lambda: load_trace(d / "trace.npz"))
    nmt = step("parse_nmt", lambda: parse_nmt(d / "nmt.txt"))
    rec = Recording(d, {}, mm, tr, nmt)
    att = step("attribute", lambda: attribute(rec))
    tot = step("tables", lambda: (tables(att), totals(att))[1])
    native = round(sum(sec.values()), 3)
    native_cpu = round(sum(cpu.values()), 3)
    rss_native = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    att = rec = mm = None  # let the seed parse below reuse the memory
    seed_mm = step("parse_seed_memmap_txt", lambda: parse_seed_memmap(d / "memmap.txt"))
    assert seed_mm.n_pages == tot["page_rows"]
    return {"seconds": sec, "cpu_seconds": cpu, "native_total_s": native, "native_total_cpu_s": native_cpu,
            "peak_rss_gib_native": round(rss_native, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "restored_pages": tot["restored_pages"], "attributed_pct": tot["attributed_pct"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=4 << 20)
    ap.add_argument("--mappings", type=int, default=200_000)
    ap.add_argument("--faults", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="generate into / reuse this directory")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="a few seconds on tiny inputs (the test suite runs "
                    "this so the script cannot rot); its numbers mean nothing")
    a = ap.parse_args()
    if a.smoke:
        a.pages, a.mappings, a.faults = 16384, 500, 2000
    if a.measure:
        sys.stdout.write(json.dumps(measure(a.measure)) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="fcr-scale-") as tmp:
        d = a.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        sizes = generate(d, a.pages, a.mappings, a.faults) if not (d / "memmap.npz").exists() else {}
        gen_s = round(time.perf_counter() - t, 1)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
        res = subprocess.run([sys.executable, __file__, "--measure", str(d)], capture_output=True, text=True,
                             env=env, timeout=1800, check=True)
        result = {"inputs": sizes, "generate_s": gen_s, **json.loads(res.stdout),
                  "cpus": os.cpu_count(), "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    if a.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    print(f"inputs: {sizes} (generated in {gen_s} s)")
    print(f"  {'step':24s} {'wall s':>8s} {'cpu s':>8s}")
    for k, v in result["seconds"].items():
        print(f"  {k:24s} {v:8.3f} {result['cpu_seconds'][k]:8.3f}")
    print(f"native path (npz + trace + NMT, join, tables): {result['native_total_s']} s wall, "
          f"{result['native_total_cpu_s']} s CPU, peak RSS {result['peak_rss_gib_native']} GiB "
          f"(target < 10 s, < 4 GiB)")
    print(f"with the seed text parse too: peak RSS {result['peak_rss_gib']} GiB")
    print(f"machine: {result['cpus']} CPUs, 1-minute load average after the run "
          f"{result['loadavg_1m_after']} (other work on the machine inflates the seconds)")


if __name__ == "__main__":
    main()
