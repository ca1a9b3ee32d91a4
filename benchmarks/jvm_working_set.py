#!/usr/bin/env python3
"""The JVM's restore working set with 4 KiB and 2 MiB guest pages: counts, not times.

The image's JVM (PetClinic) is booted twice — guest memory in 4 KiB pages and in 2 MiB hugetlbfs pages —
snapshotted, and restored N times each with ``ondemand`` and ``prefetch`` (from the first ondemand
restore's trace) through the uffd page server; the first request ``GET /owners/1`` is answered each time.
Printed per variant × strategy: faults, pages and MiB installed, prefetch misses; the Jaccard similarity
of the first request's working set across the ondemand restores (guest-physical pages, all and per NMT
category); and per NMT category how much the 2 MiB restore installs beyond what the 4 KiB one touched.

Needs a KVM that boots Linux guests, or the lab (used automatically on other hosts: the study then runs
in one L1, where 2 MiB pages are reserved for it). Lab timings are TCG timings, so none are reported;
the counts are real.

    python3 benchmarks/jvm_working_set.py [--repetitions 5] [-o results-jvm-ws] [--json]
    python3 benchmarks/jvm_working_set.py --report-only -o results-jvm-ws      # tables of a finished run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

SPEC = """\
[study]
name = "jvm-working-set"
description = "PetClinic's first request after a uffd restore: 4 KiB vs 2 MiB guest pages"
backend = "jvm"
repetitions = {reps}
strategies = ["ondemand", "prefetch"]
timeout_s = 900

[guest]
mem_size_mib = 1024
vcpus = 2
kernel = "{kernel}"
rootfs = "{rootfs}"

[workload]
port = 8080
path = "/owners/1"
warmup_requests = 50
ready_timeout_s = 1200

[[variant]]
name = "4k"
description = "guest memory in 4 KiB pages (default)"

[[variant]]
name = "2m"
description = "guest memory in 2 MiB hugetlbfs pages"
huge_pages = "2M"
"""

CATEGORIES = ("Java Heap", "Class", "Metaspace", "Shared class space", "Code", "Thread", "Thread Stack",
              "GC", "Internal", "Symbol", "Other")


def _run_study(results: Path, reps: int, firecracker: str | None) -> None:
    from firecracer import hugepages
    from firecracer.experiment.runner import run_study
    from firecracer.experiment.spec import load_spec
    from firecracer.image.kernel import latest_kernel
    from firecracer.image.rootfs import latest_rootfs

    kernel, rootfs = latest_kernel(), latest_rootfs()
    if kernel is None or rootfs is None:
        sys.exit("jvm_working_set: no built image ('firecracer image kernel' and 'firecracer image rootfs')")
    results.mkdir(parents=True, exist_ok=True)
    spec_path = results / "jvm-working-set.toml"
    spec_path.write_text(SPEC.format(reps=reps, kernel=kernel, rootfs=rootfs))
    spec = load_spec(spec_path)
    if firecracker:
        import dataclasses

        spec = dataclasses.replace(spec, firecracker=firecracker)
    need = hugepages.pages_for(spec.guest.mem_size_mib) + 8
    with hugepages.Reservation(need):  # put back on every exit path
        def progress(e: Any) -> None:
            if e.kind in ("variant", "run"):
                what = e.variant if e.kind == "variant" else e.run.run_id
                print(f"jvm_working_set: {e.kind} {what}", file=sys.stderr, flush=True)
            elif e.kind == "done" and e.record is not None and not e.record.ok:
                print(f"jvm_working_set: {e.record.run_id} FAILED: {e.record.reason}", file=sys.stderr)
        run_study(spec, results, on_event=progress)


def _smoke(reps: int) -> int:
    """The spec this benchmark writes is valid and plans variants × strategies × repetitions runs."""
    import tempfile

    from firecracer.experiment.plan import plan_runs
    from firecracer.experiment.spec import load_spec

    with tempfile.TemporaryDirectory(prefix="fcr-jvm-ws-smoke-") as tmp:
        d = Path(tmp)
        (d / "vmlinux").write_bytes(b"")
        (d / "rootfs.ext4").write_bytes(b"")
        spec_path = d / "jvm-working-set.toml"
        spec_path.write_text(SPEC.format(reps=reps, kernel=d / "vmlinux", rootfs=d / "rootfs.ext4"))
        spec = load_spec(spec_path)
        runs = plan_runs(spec)
    print(f"jvm_working_set --smoke: spec valid, {len(spec.variants)} variants x {len(spec.strategies)} "
          f"strategies x {reps} repetitions = {len(runs)} runs (not run: they need a Linux-booting KVM or "
          "the lab)")
    return 0


def _jaccard_mean(atts: list[Any], group: str) -> float | None:
    from firecracer.analysis.compare import jaccard_matrix

    m = jaccard_matrix(atts, group)
    vals = [m[i][j] for i in range(len(m)) for j in range(i + 1, len(m)) if m[i][j] is not None]
    return round(statistics.fmean(vals), 3) if vals else None


def tables(results: Path) -> dict[str, Any]:
    """Everything the module doc promises, from a finished study's results directory."""
    import numpy as np

    from firecracer.analysis import attribute
    from firecracer.analysis.recording import Recording, load_recording, load_trace
    from firecracer.analysis.tables import tables as analysis_tables
    from firecracer.experiment.store import ResultStore
    from firecracer.uffd.trace import FLAG_FAULTING, Action

    with ResultStore.open(results) as store:
        runs = [r for r in store.runs() if r.ok]
    from firecracer.analysis.predictability import load_restore, predictability

    out: dict[str, Any] = {"runs": len(runs), "cells": {}, "jaccard": {}, "categories": {},
                           "predictability": {}}
    atts: dict[str, list[Any]] = {}
    restores: dict[str, list[Any]] = {}
    for r in sorted(runs, key=lambda r: r.run_id):
        rundir = results / "runs" / r.run_id
        tr = load_trace(rundir / "trace.npz")
        ps = tr.page_size
        faults = int(((tr.flags & FLAG_FAULTING) != 0).sum())
        prefetched = int((tr.action == Action.PREFETCH).sum())
        cell = out["cells"].setdefault(f"{r.variant}/{r.strategy}", [])
        cell.append({"faults": faults, "pages": len(tr), "page_size": ps,
                     "mib": round(len(tr) * ps / 2**20, 1), "prefetched": prefetched})
        if r.strategy == "ondemand":
            owners = load_recording(rundir)
            att = attribute(Recording(rundir, owners.meta, owners.memmap, tr, owners.nmt))
            atts.setdefault(r.variant, []).append(att)
            restores.setdefault(r.variant, []).append(load_restore(rundir))
    for variant, lst in atts.items():
        # the whole working set: the predictability report's numbers (one place for them); per NMT
        # category: attribution's page groups
        pred = predictability(restores[variant]) if len(restores[variant]) > 1 else None
        out["predictability"][variant] = None if pred is None else {
            "jaccard": pred["jaccard"]["all"], "pages": pred["pages"],
            "precision": pred["prefetch"]["same_request"]["precision"],
            "recall": pred["prefetch"]["same_request"]["recall"]}
        out["jaccard"][variant] = {"all": None if pred is None else pred["jaccard"]["all"]["mean"],
                                   **{c: _jaccard_mean(lst, f"nmt:{c}") for c in CATEGORIES}}
        kb: dict[str, list[int]] = {}
        for att in lst:
            for row in analysis_tables(att)["nmt_categories"].to_dicts():
                kb.setdefault(str(row["category"]), []).append(int(row["restored_kb"]))
        out["categories"][variant] = {c: int(statistics.median(v)) for c, v in kb.items()}
    for key, cell in out["cells"].items():
        out["cells"][key] = {
            "restores": len(cell), "page_size": cell[0]["page_size"],
            "faults_median": int(statistics.median(c["faults"] for c in cell)),
            "faults_range": [min(c["faults"] for c in cell), max(c["faults"] for c in cell)],
            "pages_median": int(statistics.median(c["pages"] for c in cell)),
            "mib_median": float(np.median([c["mib"] for c in cell])),
            "prefetched_median": int(statistics.median(c["prefetched"] for c in cell))}
    return out


def render(t: dict[str, Any]) -> str:
    lines = ["| variant / strategy | restores | faults that installed (median, range) | pages installed | "
             "MiB installed | "
             "prefetched pages | misses (faults) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, c in t["cells"].items():
        pf = key.endswith("prefetch")
        lines.append(f"| {key} | {c['restores']} | {c['faults_median']:,} ({c['faults_range'][0]:,}–"
                     f"{c['faults_range'][1]:,}) | {c['pages_median']:,} × {c['page_size'] // 1024} KiB | "
                     f"{c['mib_median']:.1f} | {c['prefetched_median'] if pf else '–'} | "
                     f"{c['faults_median'] if pf else '–'} |")
    lines += ["", "Jaccard similarity of the first request's guest-physical working set across ondemand "
              "restores (mean of pairs):", "", "| variant | all | " + " | ".join(CATEGORIES) + " |",
              "| --- | ---: |" + " ---: |" * len(CATEGORIES)]
    for v, j in t["jaccard"].items():
        cells = [("–" if j.get(c) is None else f"{j[c]:.3f}") for c in ("all", *CATEGORIES)]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    for v, p in (t.get("predictability") or {}).items():
        if p:
            lines.append(f"\n{v}: pages faulted in all restores {p['pages']['in_all']:,} of "
                         f"{p['pages']['in_any']:,} in any; one restore's trace driving another: precision "
                         f"{p['precision']['median']:.3f}, recall {p['recall']['median']:.3f} (medians; "
                         "firecracer analyze --predictability for the rest)")
    k4, k2 = t["categories"].get("4k", {}), t["categories"].get("2m", {})
    if k4 and k2:
        lines += ["", "Restored kB per NMT category (median of the ondemand restores), and what 2 MiB pages "
                  "drag in beyond the 4 KiB working set:", "",
                  "| NMT category | 4 KiB pages | 2 MiB pages | 2 MiB ÷ 4 KiB |",
                  "| --- | ---: | ---: | ---: |"]
        for c in sorted(set(k4) | set(k2), key=lambda c: -k2.get(c, 0)):
            a, b = k4.get(c, 0), k2.get(c, 0)
            if a or b:
                lines.append(f"| {c} | {a:,} | {b:,} | {b / a:.1f}× |" if a else f"| {c} | 0 | {b:,} | – |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path, default=Path("results-jvm-ws"))
    ap.add_argument("--firecracker")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # the run inside the lab
    ap.add_argument("--smoke", action="store_true", help="seconds: validate the study spec and plan its runs "
                    "without running them (the study needs a Linux-booting KVM or the lab: minutes); the "
                    "test suite runs this so the script cannot rot")
    args = ap.parse_args()
    if args.smoke:
        return _smoke(args.repetitions)
    results = args.output.resolve()
    if not args.report_only:
        from firecracer.placement import why_lab

        why = why_lab()
        if why:
            from firecracer.lab.machine import LabMachine, LabSpec

            print(f"jvm_working_set: {why}: running in the lab (QEMU TCG; counts are real)", file=sys.stderr)
            results.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, str(Path(__file__).resolve()), "--repetitions", str(args.repetitions),
                    "-o", str(results), "--no-report"]
            if args.firecracker:
                argv += ["--firecracker", str(Path(args.firecracker).resolve())]

            def err(b: bytes) -> None:
                sys.stderr.buffer.write(b)
                sys.stderr.buffer.flush()
            res = LabMachine(LabSpec(shares=(results,))).run(argv, stdout=err, stderr=err)
            if res.rc != 0:
                print(f"jvm_working_set: the run in the lab failed (exit {res.rc})", file=sys.stderr)
                return 1
        else:
            _run_study(results, args.repetitions, args.firecracker)
            if args.no_report:
                return 0
    t = tables(results)
    print(json.dumps(t, indent=1) if args.json else render(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
