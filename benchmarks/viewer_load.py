"""How long the viewer takes to open a 16 GiB guest (4 Mi pages) in headless Chromium, and to react.

Builds a synthetic recording (``firecracer.viz.synthetic``: kernel, page cache, shell, a JVM with NMT,
free pages, a trace over a few percent of the owned pages), writes the report, then opens it in a
fresh headless Chromium (DevTools pipe) several times and reports the median of:

* ``ready_ms``: navigation start → the page has decoded its data, drawn the physical view and the tree
  (selection, animation, zoom work from here);
* ``details_ms``: navigation start → the hover details (second blob) are decoded too;
* ``select_ms``: selecting the JVM's Java Heap NMT category (highlight + full repaint);
* ``ff_ms``: fast-forwarding the whole restore animation; ``hover_ms``: one page's tooltip text.

Baseline in the same run: the same measurements on a 1 GiB guest (256 Ki pages); the ratio shows how
the cost grows with memory size. ``--json`` prints machine-readable results.

    python benchmarks/viewer_load.py [--gib 16] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from firecracer.analysis import load_recording
from firecracer.viz.browser import Browser, find_chromium
from firecracer.viz.html import write_report
from firecracer.viz.synthetic import make_recording

MEASURE = """(() => {
  FC.setPos(0);  // the page opens with the whole restore drawn: measure the fast-forward from the start
  const t0 = performance.now(); FC.select('nmtcat|Java Heap'); const t1 = performance.now();
  FC.setPos(1e12); const t2 = performance.now();
  const p = FC.panels[0]; const s = p.rec.a.phys_pfn[Math.floor(p.rec.nPhys / 2)];
  const t3 = performance.now(); const txt = p.rec.describe(s); const t4 = performance.now();
  return {select_ms: t1 - t0, ff_ms: t2 - t1, hover_ms: t4 - t3, events: FC.counter(0), tip_chars: txt.length,
          selected_pages: FC.selected.pages[0]};
})()"""


def measure(html: Path, runs: int) -> dict[str, Any]:
    rows: list[dict[str, float]] = []
    phases: list[dict[str, float]] = []
    for _ in range(runs):
        with Browser(width=1400, height=900, timeout=180) as b:
            b.open(html.as_uri(), timeout=180)
            b.wait_for("window.FC && (FC.ready || FC.error)", timeout=180)
            err = b.evaluate("FC.error")
            if err:
                raise SystemExit(f"page failed: {err}")
            r = b.evaluate("({ready_ms: FC.readyAt, script_ms: FC.loadMs})")
            r["details_ms"] = b.wait_for("FC.detailReady && FC.detailAt", timeout=180)
            r.update(b.evaluate(MEASURE))
            phases.append(b.evaluate("FC.phases"))
            rows.append(r)
    med: dict[str, Any] = {k: round(statistics.median(float(r[k]) for r in rows), 1) for k in rows[0]}
    med["phases"] = {k: round(statistics.median(float(p[k]) for p in phases)) for k in phases[0]}
    return med


def build(tmp: Path, mib: int, chunk: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rec_dir = make_recording(tmp / f"rec{mib}-{chunk}", mib << 20, seed=3, chunk=chunk)
    t1 = time.perf_counter()
    html = write_report([load_recording(rec_dir)], tmp / f"report{mib}-{chunk}.html")
    t2 = time.perf_counter()
    rec = load_recording(rec_dir)
    return {"html": html, "pages": (mib << 20) // 4096, "page_rows": rec.memmap.n_pages,
            "trace_rows": len(rec.trace or []), "html_mb": round(html.stat().st_size / 1e6, 1),
            "synth_s": round(t1 - t0, 2), "write_report_s": round(t2 - t1, 2)}


def CASES(a: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(name, MiB, physical run length): typical 64 KiB runs, and every page scattered (worst case).
    ``--smoke``: a 64 MiB baseline and a 3.25 GiB target (RAM above the 3 GiB MMIO hole), not scattered."""
    if a.smoke:
        return [("baseline", 64, 16), ("target", 3328, 16)]
    return [("baseline", a.base_gib << 10, 16), ("target", a.gib << 10, 16), ("scattered", a.gib << 10, 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=16)
    ap.add_argument("--base-gib", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="seconds: small guests, one run (the test suite "
                    "runs this so the script cannot rot); its numbers mean nothing")
    a = ap.parse_args()
    if a.smoke:
        a.runs = 1
    if find_chromium() is None:
        print("no chromium: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fcr-viewer-bench-") as td:
        out: dict[str, Any] = {"machine": f"{platform.node()} {os.cpu_count()} cpus {platform.machine()}",
                               "python": platform.python_version(),
                               "loadavg_before": [round(x, 1) for x in os.getloadavg()]}
        for name, mib, chunk in CASES(a):
            info = build(Path(td), mib, chunk)
            html = info.pop("html")
            info.update(measure(html, a.runs))
            out[name] = {"gib": round(mib / 1024, 2), "chunk_pages": chunk, **info}
            del html
        out["ratio_ready"] = round(out["target"]["ready_ms"] / out["baseline"]["ready_ms"], 2)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for name, _, _ in CASES(a):
            r = out[name]
            print(f"{name:9} {r['gib']:>5} GiB run {r['chunk_pages']:>2} {r['pages']:>9,} pages "
                  f"{r['page_rows']:>9,} rows {r['trace_rows']:>7,} events  html {r['html_mb']:>6} MB "
                  f"(write {r['write_report_s']} s)  ready {r['ready_ms']:>7.0f} ms  "
                  f"details {r['details_ms']:>7.0f} ms  "
                  f"select {r['select_ms']:>5.0f} ms  ff {r['ff_ms']:>5.0f} ms  hover {r['hover_ms']:.2f} ms")
            print(f"{'':9} page phases (ms): {r['phases']}")
        print(f"ready ratio target/baseline: {out['ratio_ready']}  ({out['machine']}, load average before "
              f"{out['loadavg_before']}, after {[round(x, 1) for x in os.getloadavg()]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
