"""The study report: one self-contained HTML file (inline CSS and SVG, no script, no network).

Sections: what ran (spec, versions, hosts), a summary table per variant × strategy, time to first
response per run (strip plot), the phase breakdown (medians, SnapStart-style), faults and MiB served,
restored MiB per NMT category (when recordings carry NMT attribution), working-set similarity
(pairwise Jaccard of the pages faulted in, across repetitions), the working set's predictability and the
page server's fault taxonomy (``predictsection``), failed runs with their reasons, and
every run with links to its recording and viewer page.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from html import escape
from pathlib import Path

import numpy as np

from firecracer.errors import FirecracerError
from firecracer.experiment import predictsection, svgplot
from firecracer.experiment.plan import plan_runs
from firecracer.experiment.spec import PROCESS_KINDS, parse_spec
from firecracer.experiment.store import ResultStore, RunRecord, StudyInfo, now_iso
from firecracer.experiment.workingset import jaccard
from firecracer.viz.html import save_html

#: timings drawn as stacked phases (in this order); the rest of first_response is "until response".
PHASES = ("load_snapshot", "resume", "install")

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right} th{background:#f5f5f5}
td.l,th.l{text-align:left;white-space:nowrap}
.warn{background:#fff4d6;border:1px solid #e6c35c;padding:8px 12px;border-radius:4px}
.fail{color:#b00020} .ok{color:#1b7a35} .muted{color:#777;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:14px} pre{background:#f7f7f7;padding:8px;font-size:11px;overflow:auto}
details{margin:6px 0}
"""


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _num(v: float, digits: int = 1) -> str:
    if v != v:  # NaN
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _order(runs: list[RunRecord]) -> tuple[list[str], list[str]]:
    variants: list[str] = []
    strategies: list[str] = []
    for r in sorted(runs, key=lambda r: r.idx):
        if r.variant not in variants:
            variants.append(r.variant)
        if r.cell not in strategies:
            strategies.append(r.cell)
    return variants, strategies


def _link(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(target, out_dir)).as_posix()


def build_report(results_dir: Path | str, out_path: Path | str | None = None) -> str:
    """Render the report of a results directory; links are relative to ``out_path``'s directory."""
    results_dir = Path(results_dir)
    out_dir = Path(out_path).resolve().parent if out_path else results_dir.resolve()
    with ResultStore.open(results_dir) as store:
        info = store.study()
        runs = store.runs()
    if info is None:
        raise FirecracerError(f"{results_dir}: the results database holds no study yet")
    return _render(info, runs, results_dir.resolve(), out_dir)


def write_report(results_dir: Path | str, out_path: Path | str) -> Path:
    out = Path(out_path)
    return save_html(build_report(results_dir, out), out)


def _render(info: StudyInfo, runs: list[RunRecord], results_dir: Path, out_dir: Path) -> str:
    variants, strategies = _order(runs)
    ok = [r for r in runs if r.ok]
    failed = [r for r in runs if not r.ok]
    backends = sorted({r.backend for r in runs})
    hosts = sorted({r.host for r in runs})
    by_cell: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in ok:
        by_cell[(r.variant, r.cell)].append(r)

    parts: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info.name)} — firecracer study</title><style>{_CSS}</style></head><body>",
        f"<h1>Study <code>{escape(info.name)}</code></h1>",
        f'<p class="muted">spec digest {escape(info.digest)} · started {escape(info.created)} · report '
        f'{escape(now_iso())} · backend {escape(", ".join(backends) or "–")} · host(s) '
        f'{escape(", ".join(hosts) or "–")}</p>',
    ]
    envs = sorted({str(r.versions.get("host", {}).get("environment", "")) for r in runs} - {""})
    if any(e.startswith("lab") for e in envs):
        parts.append('<p class="warn"><b>Ran in the lab</b> (QEMU TCG emulating AMD SVM, real Firecracker '
                     "inside): timings are TCG timings, <b>not comparable to KVM</b>; counts (faults, pages, "
                     "bytes, working sets) are real.</p>")
    if "host-replay" in backends:
        parts.append('<p class="warn"><b>host-replay backend:</b> no virtual machine ran. Each working set '
                     "was replayed against a memory file on the host to exercise the study machinery. "
                     "These numbers are host file-read times, <b>not</b> Firecracker, probe-guest or JVM "
                     "results.</p>")
    planned = _planned(info)
    parts.append(f"<p>{len(runs)} of {planned if planned else '?'} planned runs recorded: "
                 f'<span class="ok">{len(ok)} ok</span>, <span class="fail">{len(failed)} failed</span>.</p>')
    parts.append(_versions_block(runs))

    # Summary table.
    parts.append("<h2>Summary per variant and strategy</h2>")
    parts.append(_summary_table(variants, strategies, by_cell, runs))

    # Plots.
    parts.append("<h2>Time to first response</h2>")
    fr = {(v, s): [r.timings["first_response"] for r in by_cell[(v, s)] if "first_response" in r.timings]
          for v in variants for s in strategies}
    if any(fr.values()):
        parts.append('<p class="muted">Each dot is one run (from the start of the restore to the complete '
                     "first response); bar = median, line = min–max.</p>")
        parts.append(svgplot.strip_plot("First response after restore (ms)", variants, strategies, fr, "ms"))
    else:
        parts.append("<p>No successful run has a first-response time.</p>")

    parts.append("<h2>Where the time goes (medians)</h2>")
    parts.append(_phase_plot(variants, strategies, by_cell))

    parts.append("<h2>Page faults and data served</h2>")
    parts.append('<div class="plots">')
    faults = {(v, s): _median([float(r.metrics["faults"]) for r in by_cell[(v, s)] if "faults" in r.metrics])
              for v in variants for s in strategies if by_cell[(v, s)]}
    faults = {k: x for k, x in faults.items() if x == x}
    parts.append(svgplot.bar_chart("Page faults (median per run)", variants, strategies, faults, "faults",
                                   width=540) if faults else "<p>No fault counts recorded.</p>")
    mb = {(v, s): _median([r.metrics["bytes"] / 2**20 for r in by_cell[(v, s)] if "bytes" in r.metrics])
          for v in variants for s in strategies if by_cell[(v, s)]}
    mb = {k: x for k, x in mb.items() if x == x}
    parts.append(svgplot.bar_chart("MiB served by the page server (median)", variants, strategies, mb, "MiB",
                                   width=540) if mb else "<p>No byte counts recorded.</p>")
    parts.append("</div>")
    if "file" in strategies:
        parts.append('<p class="muted">The File backend has no page server: its fault count is what the '
                     "backend could observe (see each run's <code>fault_source</code>), and it serves no "
                     "bytes through a page server.</p>")

    parts.append("<h2>Restored MiB per NMT category</h2>")
    parts.append(_nmt_plot(variants, strategies, by_cell))

    if any(s in PROCESS_KINDS for s in strategies):
        parts.append("<h2>VM restore vs process restore (CRaC)</h2>")
        parts.append(_kinds_table(variants, strategies, by_cell))

    parts.append("<h2>Working-set similarity across repetitions</h2>")
    parts.append(_jaccard_section(variants, strategies, by_cell))

    parts.append("<h2>Predictability of the working set</h2>")
    parts.append(predictsection.section(variants, strategies, by_cell, results_dir))

    parts.append("<h2>Failed runs</h2>")
    if failed:
        rows = "".join(f'<tr><td class="l">{escape(r.run_id)}</td><td class="l">{escape(r.phase or "")}</td>'
                       f'<td class="l fail">{escape(r.reason or "")}</td><td>{_num(r.wall_s, 2)}</td></tr>'
                       for r in failed)
        parts.append('<table><tr><th class="l">run</th><th class="l">phase</th><th class="l">reason</th>'
                     f"<th>wall s</th></tr>{rows}</table>")
    else:
        parts.append("<p>None.</p>")

    parts.append("<h2>All runs</h2>")
    parts.append(_runs_table(runs, results_dir, out_dir))
    parts.append(f"<h2>Spec</h2><details><summary>{escape(info.spec_path or 'spec')}</summary>"
                 f"<pre>{escape(info.spec_text)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _planned(info: StudyInfo) -> int:
    try:
        spec = parse_spec(info.spec_text, info.spec_path or "<spec>")
    except FirecracerError:
        return 0

    return len(plan_runs(spec))


def _versions_block(runs: list[RunRecord]) -> str:
    seen: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for k, v in r.versions.items():
            seen[k].add(json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v))
    if not seen:
        return ""
    rows = "".join(f'<tr><td class="l">{escape(k)}</td>'
                   f'<td class="l">{escape(" | ".join(sorted(v)))}</td></tr>'
                   for k, v in sorted(seen.items()))
    return f"<details><summary>Versions</summary><table>{rows}</table></details>"


def _summary_table(variants: list[str], strategies: list[str],
                   by_cell: dict[tuple[str, str], list[RunRecord]], runs: list[RunRecord]) -> str:
    head = ('<table><tr><th class="l">variant</th><th class="l">strategy</th><th>ok</th><th>failed</th>'
            "<th>first response p50 ms</th><th>p90 ms</th><th>load_snapshot p50 ms</th>"
            "<th>FC metric p50 ms</th>"
            "<th>vs ondemand</th><th>faults p50</th><th>MiB served p50</th><th>Jaccard p50</th></tr>")
    rows = []
    for v in variants:
        for s in strategies:
            request = s.partition(" ")[2]  # the cell's first request (several: workload.paths)
            base = _median([r.timings["first_response"] for r in by_cell[(v, f"ondemand {request}".strip())]
                            if "first_response" in r.timings])
            cell = by_cell[(v, s)]
            nfail = sum(1 for r in runs if not r.ok and r.variant == v and r.cell == s)
            fr = [r.timings["first_response"] for r in cell if "first_response" in r.timings]
            ls = [r.timings["load_snapshot"] for r in cell if "load_snapshot" in r.timings]
            fcm = [r.metrics["fc_load_snapshot_us"] / 1e3 for r in cell if "fc_load_snapshot_us" in r.metrics]
            fa = [float(r.metrics["faults"]) for r in cell if "faults" in r.metrics]
            mb = [r.metrics["bytes"] / 2**20 for r in cell if "bytes" in r.metrics]
            jac = _pairwise(cell)
            jv = [x for row in jac[1] for x in row] if jac else []
            n = len(jac[0]) if jac else 0
            off = [jac[1][i][j] for i in range(n) for j in range(n) if i < j] if jac else []
            rows.append(f'<tr><td class="l">{escape(v)}</td><td class="l">{escape(s)}</td>'
                        f"<td>{len(cell)}</td>"
                        f'<td class="{"fail" if nfail else ""}">{nfail}</td><td>{_num(_median(fr))}</td>'
                        f"<td>{_num(_pct(fr, 90))}</td><td>{_num(_median(ls), 2)}</td>"
                        f"<td>{_num(_median(fcm), 2)}</td>"
                        f"<td>{'baseline' if s == 'ondemand' else _speedup(base, _median(fr))}</td>"
                        f"<td>{_num(_median(fa), 0)}</td><td>{_num(_median(mb), 2)}</td>"
                        f"<td>{_num(_median(off), 3) if jv else '–'}</td></tr>")
    return head + "".join(rows) + "</table>"


def _kinds_table(variants: list[str], strategies: list[str],
                 by_cell: dict[tuple[str, str], list[RunRecord]]) -> str:
    """Per variant × restore kind (medians): what the first request needed, per NMT category, what lies on
    storage, and the time to the first response from the restore command and from the VM's start."""
    cats: list[str] = []
    for rs in by_cell.values():
        for r in rs:
            for c, b in (r.categories or {}).items():
                if b and c not in cats:
                    cats.append(c)
    head = ('<table><tr><th class="l">variant</th><th class="l">restore</th><th>pages loaded</th><th>MiB</th>'
            + "".join(f"<th>{escape(c)} MiB</th>" for c in cats)
            + "<th>on storage MiB</th><th>first response ms (from restore)</th>"
              "<th>from VM start ms</th><th>boot share</th></tr>")
    rows = []
    for v in variants:
        for s in strategies:
            cell = by_cell[(v, s)]
            if not cell:
                continue
            pages = _median([float(r.metrics["pages"]) for r in cell if "pages" in r.metrics])
            mib = _median([r.metrics["bytes"] / 2**20 for r in cell if "bytes" in r.metrics])
            per = [_median([float((r.categories or {}).get(c, 0)) / 2**20 for r in cell if r.categories])
                   for c in cats]
            stored = _median([float(r.metrics.get("checkpoint_bytes") or r.metrics.get("snapshot_bytes") or 0)
                              / 2**20 for r in cell if r.metrics.get("checkpoint_bytes")
                              or r.metrics.get("snapshot_bytes")])
            fr = _median([r.timings["first_response"] for r in cell if "first_response" in r.timings])
            fv = _median([r.timings["first_response_from_vm_start"] for r in cell
                          if "first_response_from_vm_start" in r.timings])
            boot = _median([float(r.metrics["boot_share_of_first_response"]) for r in cell
                            if "boot_share_of_first_response" in r.metrics])
            rows.append(f'<tr><td class="l">{escape(v)}</td><td class="l">{escape(s)}</td>'
                        f"<td>{_num(pages, 0)}</td><td>{_num(mib, 1)}</td>"
                        + "".join(f"<td>{_num(x, 1)}</td>" for x in per)
                        + f"<td>{_num(stored, 0)}</td><td>{_num(fr)}</td><td>{_num(fv)}</td>"
                          f"<td>{_num(boot * 100, 0) + ' %' if boot == boot else '–'}</td></tr>")
    note = ('<p class="muted">VM kinds load pages of the snapshot\'s memory file through the page server '
            "(<code>ondemand</code>, <code>prefetch</code>); process kinds restore the JVM alone from CRIU's "
            "images in a fresh boot: <code>criu</code> reads every page before the JVM runs, "
            "<code>criu-lazy</code> loads them on demand (CRIU's lazy-pages daemon; pages until the first "
            "response). Private file pages a process restore maps from the image's files again are not in "
            "CRIU's images and not counted. <i>From VM start</i> includes a process restore's boot.</p>")
    return note + head + "".join(rows) + "</table>"


def _speedup(base: float, x: float) -> str:
    """``2.7× faster`` / ``1.3× slower`` than ondemand's median (– without both)."""
    if base != base or x != x or x <= 0 or base <= 0:
        return "–"
    r = base / x
    return f"{r:.2f}× faster" if r >= 1 else f"{1 / r:.2f}× slower"


def _phase_plot(variants: list[str], strategies: list[str],
                by_cell: dict[tuple[str, str], list[RunRecord]]) -> str:
    bars: list[str] = []
    values: dict[tuple[str, str], float] = {}
    present = [p for p in PHASES if any(p in r.timings for rs in by_cell.values() for r in rs)]
    parts = [*present, "until first response"]
    for v in variants:
        for s in strategies:
            cell = by_cell[(v, s)]
            if not cell or not any("first_response" in r.timings for r in cell):
                continue
            label = f"{v} · {s}"
            bars.append(label)
            used = 0.0
            for p in present:
                m = _median([r.timings[p] for r in cell if p in r.timings])
                if m == m:
                    values[(label, p)] = m
                    used += m
            total = _median([r.timings["first_response"] for r in cell if "first_response" in r.timings])
            values[(label, "until first response")] = max(total - used, 0.0)
    if not bars:
        return "<p>No timings recorded.</p>"
    note = ('<p class="muted">Medians per cell. <code>load_snapshot</code>: Firecracker\'s restore API call; '
            "<code>resume</code>: resuming the vCPUs; <code>install</code>: a page server installing the "
            "working set (prefetch) or all memory (eager) before the guest runs; the rest is the guest "
            "running until its first response is complete (demand faults included).</p>")
    return note + svgplot.stacked_bars("First response, split into phases (ms, medians)", bars, parts, values,
                                       "ms")


def _nmt_plot(variants: list[str], strategies: list[str],
              by_cell: dict[tuple[str, str], list[RunRecord]]) -> str:
    cats: list[str] = []
    for rs in by_cell.values():
        for r in rs:
            for c in r.categories or {}:
                if c not in cats:
                    cats.append(c)
    if not cats:
        return ("<p>No run in this study has NMT attribution (the probe guest runs no JVM; JVM studies "
                "record memmap + NMT before the snapshot and attribute every restored page to its NMT "
                "category).</p>")
    bars: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for v in variants:
        for s in strategies:
            cell = [r for r in by_cell[(v, s)] if r.categories]
            if not cell:
                continue
            label = f"{v} · {s}"
            bars.append(label)
            for c in cats:
                values[(label, c)] = _median([float((r.categories or {}).get(c, 0)) / 2**20 for r in cell])
    return svgplot.stacked_bars("Restored MiB per NMT category (median per cell)", bars, cats, values, "MiB")


def _pairwise(cell: list[RunRecord]) -> tuple[list[str], list[list[float]]] | None:
    with_pages = sorted((r for r in cell if r.pages is not None and len(r.pages)), key=lambda r: r.repetition)
    if len(with_pages) < 2:
        return None
    labels = [f"r{r.repetition}" for r in with_pages]
    m = [[1.0 if i == j else 0.0 for j in range(len(with_pages))] for i in range(len(with_pages))]
    for i, j in itertools.combinations(range(len(with_pages)), 2):
        a, b = with_pages[i].pages, with_pages[j].pages
        assert a is not None and b is not None
        m[i][j] = m[j][i] = jaccard(a, b)
    return labels, m


def _jaccard_section(variants: list[str], strategies: list[str],
                     by_cell: dict[tuple[str, str], list[RunRecord]]) -> str:
    plots = []
    for v in variants:
        for s in strategies:
            pw = _pairwise(by_cell[(v, s)])
            if pw is None:
                continue
            plots.append(svgplot.heatmap(f"{v} · {s}", pw[0], pw[1]))
    if not plots:
        return ("<p>No cell has two or more repetitions with a fault trace, so there is nothing to compare "
                "(the File backend records no trace).</p>")
    return ('<p class="muted">Jaccard similarity |A∩B| / |A∪B| of the sets of pages faulted in (the faulting '
            "page of each page-server event) between repetitions. 1.0 = the same working set. For prefetch "
            "these are the misses left after the prefetched working set.</p>"
            f'<div class="plots">{"".join(plots)}</div>')


def _runs_table(runs: list[RunRecord], results_dir: Path, out_dir: Path) -> str:
    rows = []
    for r in runs:
        links = []
        if r.recording:
            rec = results_dir / r.recording
            links.append(f'<a href="{escape(_link(rec, out_dir))}/">recording</a>')
            viewer = rec / "report.html"
            if viewer.exists():
                links.append(f'<a href="{escape(_link(viewer, out_dir))}">viewer</a>')
        status = f'<span class="{"ok" if r.ok else "fail"}">{escape(r.status)}</span>'
        rows.append(f'<tr><td class="l">{escape(r.run_id)}</td><td class="l">{status}</td>'
                    f"<td>{_num(r.timings.get('first_response', float('nan')))}</td>"
                    f"<td>{_num(r.timings.get('load_snapshot', float('nan')), 2)}</td>"
                    f"<td>{_num(float(r.metrics.get('faults', float('nan'))), 0)}</td>"
                    f"<td>{_num(r.metrics.get('bytes', float('nan')) / 2**20, 2)}</td>"
                    f'<td class="l">{escape(r.host)}</td><td class="l">{escape(r.started)}</td>'
                    f'<td class="l">{" · ".join(links)}</td></tr>')
    return ('<table><tr><th class="l">run</th><th class="l">status</th><th>first response ms</th>'
            "<th>load_snapshot ms</th><th>faults</th><th>MiB served</th><th class=\"l\">host</th>"
            f'<th class="l">started</th><th class="l">links</th></tr>{"".join(rows)}</table>')
