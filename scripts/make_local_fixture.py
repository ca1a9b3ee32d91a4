#!/usr/bin/env python3
"""Regenerate tests/fixtures/local_jvm/: a real recording of a small local JVM (run as root).

Starts the FcrIdle workload with -XX:NativeMemoryTracking=detail, collects this host with the same code
`firecracer collect --local` uses, and keeps memmap.npz small: if the whole-host memmap would exceed
1.5 MB compressed, only the JVM's section and the kernel segments are kept. Also writes nmt.txt,
smaps/PID.txt and recording.json.

    sudo PYTHONPATH=src python3 scripts/make_local_fixture.py [--out tests/fixtures/local_jvm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from firecracer.guest import memmap, recording, workload  # noqa: E402

LIMIT = 1_500_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "local_jvm")
    ns = ap.parse_args()
    if os.geteuid() != 0:
        print("make_local_fixture: needs root (pagemap PFNs, kpageflags)", file=sys.stderr)
        return 1
    why = workload.java_available()
    if why:
        print(f"make_local_fixture: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fcr-fixture-") as tmp:
        jvm = workload.start_jvm(Path(tmp))
        try:
            stage = Path(tmp) / "rec"
            summary = recording.collect_local(stage, jvm_pid=jvm.pid)
            size = (stage / "memmap.npz").stat().st_size
            if size > LIMIT:
                note = f"whole host was {size} bytes; kept pid {jvm.pid} and the kernel"
                summary = recording.collect_local(stage, pids=[jvm.pid], jvm_pid=jvm.pid,
                                                  sections=("processes", "kernel"),
                                                  restrict_output_to={jvm.pid, memmap.PID_KERNEL})
                fixture = {"note": note, "workload": "FcrIdle (firecracer.guest.workload)",
                           "argv": jvm.argv}
                recording.merge_recording_json(stage, {"fixture": fixture})
        finally:
            jvm.stop()
        if ns.out.exists():
            shutil.rmtree(ns.out)
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(stage, ns.out)
    total = sum(p.stat().st_size for p in ns.out.rglob("*") if p.is_file())
    print(f"wrote {ns.out} ({summary.pages} pages, {total} bytes): {', '.join(summary.files)}")
    for p in summary.problems:
        print(f"note: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
