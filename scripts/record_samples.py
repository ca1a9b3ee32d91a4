#!/usr/bin/env python3
"""Re-record the bundled samples (src/firecracer/samples/*.tar.xz) with real Firecracker.

Runs ``firecracer demo --mode jvm`` (or ``jvm-lab`` where this host's KVM cannot boot Linux guests): the
image's PetClinic booted with the default JVM options and with THP + AppCDS, warmed up, collected,
snapshotted and restored through the uffd page server. The two ondemand restores become the samples
``petclinic-default`` and ``petclinic-thp-appcds`` (snapshots left out), labelled with where they ran.

    python3 scripts/record_samples.py [--firecracker PATH] [--work DIR] [--dest src/firecracer/samples]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

NAMES = {"default": "petclinic-default", "thp-appcds": "petclinic-thp-appcds"}
LABELS = {"default": "PetClinic, default JVM options", "thp-appcds": "PetClinic, THP + AppCDS"}


def main() -> int:
    from firecracer import samples

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--firecracker", help="Firecracker binary (default: discovery)")
    ap.add_argument("--work", type=Path, default=Path("samples-work"), help="where the demo runs")
    ap.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "firecracer"
                    / "samples")
    ap.add_argument("--mode", choices=["jvm", "jvm-lab"], help="default: what 'demo' picks")
    args = ap.parse_args()

    cmd = [sys.executable, "-m", "firecracer", "demo", "--json", "--no-browser", "-o", str(args.work)]
    if args.firecracker:
        cmd += ["--firecracker", args.firecracker]
    if args.mode:
        cmd += ["--mode", args.mode]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if res.returncode != 0:
        print(f"record_samples: the demo failed (exit {res.returncode})", file=sys.stderr)
        return 1
    demo = json.loads(res.stdout)
    if demo["mode"] not in ("jvm", "jvm-lab"):
        print(f"record_samples: the demo ran in {demo['mode']} mode; samples need real JVM restores",
              file=sys.stderr)
        return 1
    for rec in map(Path, demo["recordings"]):
        variant, _, strategy = rec.name.partition(".")  # run ids are VARIANT.STRATEGY.rN
        if variant not in NAMES or not strategy.startswith("ondemand"):
            continue
        tmp = args.work / "pack" / NAMES[variant]
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(rec, tmp, ignore=shutil.ignore_patterns("report.html"))
        meta = json.loads((tmp / "recording.json").read_text())
        where = "in the lab (QEMU TCG, emulated SVM)" if demo["host"].startswith("lab") else "on KVM"
        meta["label"] = f"{LABELS[variant]} (real Firecracker uffd restore {where})"
        meta["first_request"] = {"path": "/owners/1"}
        (tmp / "recording.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        out = samples.pack(tmp, NAMES[variant], args.dest)
        print(f"{NAMES[variant]}: {rec} → {out} ({out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
