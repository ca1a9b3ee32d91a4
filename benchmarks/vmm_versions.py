#!/usr/bin/env python3
"""Control-plane latencies per Firecracker version on the probe guest, against the newest version.

For every Firecracker given (default: every installed ``firecracker-v*`` that can boot here), repeated
``--repeat`` times with the versions interleaved (so machine drift hits all alike):

* boot: spawn → configure → InstanceStart → the probe's ready line
* snapshot_full / snapshot_diff: ``PUT /snapshot/create`` (Full then Diff after one trace walk)
* load_file / load_uffd: ``PUT /snapshot/load`` (client wall) of the Full snapshot, File backend and
  Uffd backend (``firecracer uffd serve``; Firecracker >= 1.8 only on host kernels >= 6.6)
* first_file / first_uffd: trigger byte → the probe's result line after that restore

Prints medians (ms) and each version's ratio to the newest version measured in the same run.
Usage: ``python benchmarks/vmm_versions.py [--repeat 3] [--pages 4096] [--json] [FIRECRACKER ...]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError
from firecracer.fcversion import Version, firecracker_version
from firecracer.paths import bin_dir
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.machine import MicroVM
from firecracer.vmm.probe import build_probe
from firecracer.vmm.probe.run import boot_probe, trigger

PHASES = ["boot", "snapshot_full", "snapshot_diff", "load_file", "first_file", "load_uffd", "first_uffd"]


def one_round(fc: Path, elf: Path, work: Path) -> dict[str, float]:
    """One boot → snapshot → restore cycle; ms per phase (a phase missing = unsupported here)."""
    out: dict[str, float] = {}
    vm = boot_probe(elf, fc, track_dirty_pages=True)
    try:
        out["boot"] = sum(vm.timings_ms[k] for k in ("spawn", "configure", "ready"))
        full = vm.snapshot(work / "full")
        out["snapshot_full"] = full.timings_ms["create"]
        vm.resume()
        trigger(vm)
        diff = vm.snapshot(work / "diff", SnapshotType.DIFF)
        out["snapshot_diff"] = diff.timings_ms["create"]
    finally:
        vm.kill()
    backends = [MemBackend.FILE]
    if firecracker_version(fc).at_least(1, 8):
        backends.append(MemBackend.UFFD)
    for backend in backends:
        key = backend.value.lower()
        with MicroVM.restore(full, firecracker=fc, backend=backend) as r:
            out[f"load_{key}"] = r.timings_ms["load_snapshot"]
            res = trigger(r)
            if res.errors:
                raise FirecracerError(f"{fc}: probe saw {res.errors} errors after a {key} restore")
            out[f"first_{key}"] = r.timings_ms["result"]
    shutil.rmtree(work / "full")
    shutil.rmtree(work / "diff")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("firecracker", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pages", type=int, default=4096, help="filled and walked pages (4 KiB each)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="one round, 64 pages, the newest binary only (the "
                    "test suite runs this so the script cannot rot); its numbers mean nothing")
    args = ap.parse_args()
    bins = args.firecracker or sorted(bin_dir().glob("firecracker-v*"), key=lambda p: Version.parse(p.name))
    bins = [b for b in bins if firecracker_version(b).at_least(1, 5)]  # < 1.5 cannot boot on PVM hosts
    if args.smoke:
        args.repeat, args.pages, bins = 1, 64, bins[-1:]
    if not bins:
        print("no bootable Firecracker found", file=sys.stderr)
        return 1
    fill = range(4096, 4096 + args.pages)
    elf = build_probe(list(fill), fill)
    samples: dict[str, dict[str, list[float]]] = {str(firecracker_version(b)): {p: [] for p in PHASES}
                                                  for b in bins}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        for _ in range(args.repeat):
            for b in bins:
                for phase, ms in one_round(b, elf, Path(tmp)).items():
                    samples[str(firecracker_version(b))][phase].append(ms)
    med = {v: {p: statistics.median(xs) if xs else None for p, xs in ph.items()}
           for v, ph in samples.items()}
    baseline = str(firecracker_version(bins[-1]))

    def ratio(v: str, p: str) -> float | None:
        m, b = med[v][p], med[baseline][p]
        return m / b if m and b else None

    result: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                          "kernel": platform.release()},
                              "pages": args.pages, "repeat": args.repeat, "baseline": baseline,
                              "median_ms": med,
                              "ratio_to_baseline": {v: {p: ratio(v, p) for p in PHASES} for v in med}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"probe: {args.pages} pages, {args.repeat} rounds, baseline Firecracker {baseline}, "
          f"kernel {platform.release()}")
    print(f"{'phase':<15}" + "".join(f"{v:>22}" for v in med))
    for p in PHASES:
        row = ""
        for v in med:
            m = med[v][p]
            ratio = result["ratio_to_baseline"][v][p]
            row += f"{'-':>22}" if m is None else f"{m:>12.1f} ms ({ratio:4.2f}x)"
        print(f"{p:<15}{row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
