"""Regenerate tests/fixtures/probe_ondemand/ and probe_around16/: real uffd restores of the probe guest.

    PYTHONPATH=src python tests/analysis/make_probe_fixture.py [--fixtures tests/fixtures]

Needs /dev/kvm and Firecracker >= 1.8. One snapshot, restored twice: ``ondemand`` and ``fault-around:16``.

Boots the probe guest (128 MiB) under Firecracker ≥ 1.8 with 400 pages filled in runs of 1–3 over
32–96 MiB, snapshots it (zero pages punched), restores it through our page server (``ondemand``) with a
trace, triggers one walk over the filled pages plus 32 never-filled ones, and writes a recording
per strategy:

* ``trace.npz``: the real trace of that restore;
* ``memmap.npz``: the probe's own layout (it runs identity-mapped, so gva = gpa): section ``= 1 probe``
  with the ELF image and one mapping per filled run, section ``= 0 kernel`` with the boot structures
  Firecracker writes (zero page, boot page tables, command line). Pages in no section stay unattributed.
* ``recording.json`` with the versions and the probe's facts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

PAGE = 4096
FILL_BASE = 8192                      # page number of 32 MiB
MEM_MIB = 128
#: Firecracker x86-64 boot structures (src/vmm/src/arch/x86_64/layout.rs)
STRATEGIES = (("ondemand", "probe_ondemand"), ("fault-around:16", "probe_around16"))
BOOT = [("boot params (zero page)", 0x7000, 0x8000), ("boot page tables", 0x9000, 0xC000),
        ("kernel command line", 0x20000, 0x21000)]


def main() -> int:
    from firecracer.analysis.memmap import FORMAT, Memmap, save_memmap
    from firecracer.fcversion import firecracker_version
    from firecracer.vmm.binary import installed_binaries
    from firecracer.vmm.config import MemBackend
    from firecracer.vmm.machine import MicroVM
    from firecracer.vmm.probe import build_probe, probe_info
    from firecracer.vmm.probe.run import boot_probe, trigger

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).parents[1] / "fixtures")
    a = ap.parse_args()
    fcs = [p for p in installed_binaries().values() if firecracker_version(p).at_least(1, 8)]
    if not fcs:
        print("make_probe_fixture: no Firecracker >= 1.8 installed", file=sys.stderr)
        return 1
    fc = fcs[-1]
    rng = np.random.default_rng(2026)
    starts = np.sort(rng.choice(np.arange(FILL_BASE, FILL_BASE + 16384, 4), 200, replace=False))
    fill = sorted({int(s) + k for s in starts for k in range(int(rng.integers(1, 4)))})
    holes = list(range(FILL_BASE + 16384, FILL_BASE + 16384 + 64, 2))
    walk = [*fill, *holes]
    rng.shuffle(walk)
    elf = build_probe(walk, fill, writes=[i % 5 == 0 for i in range(len(walk))], samples=2)
    info = probe_info(elf)
    with tempfile.TemporaryDirectory(prefix="fcr-probe-fixture-") as tmp:
        vm = boot_probe(elf, fc, mem_size_mib=MEM_MIB)
        try:
            vm.snapshot(Path(tmp) / "snap", punch_holes=True)
        finally:
            vm.kill()
        results = {}
        for strategy, name in STRATEGIES:
            trace = Path(tmp) / f"{name}.npz"
            vm = MicroVM.restore(Path(tmp) / "snap", firecracker=fc, backend=MemBackend.UFFD,
                                 strategy=strategy, trace=trace, metrics=Path(tmp) / f"{name}.json",
                                 name=f"fixture-{name.replace('_', '-')}")
            try:
                res = trigger(vm, b"t", timeout=120)
            finally:
                vm.kill()
            if res.errors:
                print(f"make_probe_fixture: the probe reported {res.errors} errors", file=sys.stderr)
                return 1
            out = a.fixtures / name
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trace, out / "trace.npz")
            results[name] = (strategy, res)
    # the probe's layout as a memmap
    runs: list[tuple[int, int]] = []
    for p in fill:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    img = (info.image_start // PAGE * PAGE, -(-info.image_end // PAGE) * PAGE)
    maps = [(0, "probe image", *img)] + [(0, "fill", s * PAGE, e * PAGE) for s, e in runs]
    maps += [(1, name, s, e) for name, s, e in BOOT]
    pm, po, pv = [], [], []
    for mi, (owner, _n, s, e) in enumerate(maps):
        for addr in range(s, e, PAGE):
            pm.append(mi)
            po.append(owner)
            pv.append(addr)
    n = len(pv)
    mm = Memmap(owner_pid=np.array([1, 0], dtype=np.int64),
                map_owner=np.array([m[0] for m in maps], dtype=np.int32),
                map_start=np.array([m[2] for m in maps], dtype=np.uint64),
                map_end=np.array([m[3] for m in maps], dtype=np.uint64),
                map_offset=np.zeros(len(maps), dtype=np.uint64),
                map_perms=np.array([5] + [3] * len(runs) + [1] * len(BOOT), dtype=np.uint8),
                page_map=np.array(pm, dtype=np.int32), page_owner=np.array(po, dtype=np.int32),
                page_vaddr=np.array(pv, dtype=np.uint64), page_paddr=np.array(pv, dtype=np.uint64),
                page_pm=np.ones(n, dtype=np.uint8), page_kflags=np.zeros(n, dtype=np.uint64),
                page_kcount=np.ones(n, dtype=np.uint32),
                meta={"format": FORMAT, "version": 1, "page_size": PAGE, "owner_exe": ["probe", "kernel"],
                      "map_name": [m[1] for m in maps], "phys_mem_bytes": MEM_MIB << 20,
                      "source": "probe-layout"})
    for name, (strategy, res) in results.items():
        out = a.fixtures / name
        save_memmap(mm, out / "memmap.npz")
        rec = {"format": "firecracer-recording", "version": 1, "source": "firecracker", "label": name,
               "vmm": {"firecracker": str(firecracker_version(fc))},
               "guest": {"mem_size_mib": MEM_MIB, "kernel": "probe"}, "strategy": strategy,
               "probe": {"fill_pages": len(fill), "walk_pages": len(walk),
                         "result": {"pages": res.pages, "errors": res.errors}},
               "regenerate": "PYTHONPATH=src python tests/analysis/make_probe_fixture.py"}
        (out / "recording.json").write_text(json.dumps(rec, indent=2) + "\n")
        print(f"wrote {out}: {len(walk)} walked pages, trace and memmap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
