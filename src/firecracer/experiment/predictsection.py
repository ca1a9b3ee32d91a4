"""The study report's predictability section: per variant (one snapshot), the restores' working sets side by
side (``firecracer.analysis.predictability`` computes; this module only draws), and the page server's
per-fault taxonomy per variant × strategy.

Why in the report: it explains the timing table before anyone reads it — a prefetch can only be as good
as one restore's trace predicts the next, and fault-around only as good as faults are sequential.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from firecracer.analysis.predictability import (
    Restore,
    fault_cdf,
    load_restore,
    predictability,
)
from firecracer.errors import FirecracerError
from firecracer.experiment import svgplot
from firecracer.experiment.store import RunRecord

_OUTCOMES = ("installed", "eexist", "eagain", "woken", "peer_gone")
_CLASSES = ("data", "zero", "resident", "removed")


def _request(r: RunRecord) -> str | None:
    """The first request a run answered: its own (``workload.paths``: one per run), else (jvm backend) the
    study's single ``workload.path``; used when its recording does not say."""
    if r.request:
        return r.request
    if r.backend != "jvm":  # the probe and host-replay guests answer no HTTP request: say nothing
        return None
    wl = r.spec.get("workload")
    v = wl.get("path") if isinstance(wl, dict) else None
    return v if isinstance(v, str) and v else None


def _restores(cell: Sequence[RunRecord], results_dir: Path) -> tuple[list[Restore], list[str]]:
    """The ondemand restores of one variant that have a trace (and why others were left out)."""
    out: list[Restore] = []
    skipped: list[str] = []
    for r in sorted(cell, key=lambda r: (r.repetition, r.run_id)):
        if r.strategy != "ondemand" or not r.recording:
            continue
        d = results_dir / r.recording
        if not (d / "trace.npz").is_file():
            skipped.append(f"{r.run_id}: no trace.npz")
            continue
        try:
            rs = load_restore(d)
        except FirecracerError as exc:
            skipped.append(f"{r.run_id}: {exc}")
            continue
        request = rs.request or _request(r)
        # several first requests: say which, or the heatmaps' rows read "r1 r1 r1"
        label = f"{request} r{r.repetition}" if r.request else f"r{r.repetition}"
        out.append(dataclasses.replace(rs, label=label, request=request))
    return out, skipped


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else escape(str(v))


def _med(s: dict[str, Any]) -> str:
    return "–" if not s.get("pairs") else f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f}, {s['pairs']})"


def _hist_bars(title: str, hists: dict[str, dict[str, int]], ylabel: str) -> str:
    buckets: list[str] = []
    for h in hists.values():
        for b in h:
            if b not in buckets:
                buckets.append(b)
    values = {(b, s): float(h.get(b, 0)) for s, h in hists.items() for b in buckets if h.get(b)}
    return svgplot.bar_chart(title, buckets, list(hists), values, ylabel, width=540, height=280)


def _variant(variant: str, restores: list[Restore]) -> str:
    try:
        rep = predictability(restores)
    except FirecracerError as exc:
        return f"<h3>{escape(variant)}</h3><p class=\"fail\">{escape(str(exc))}</p>"
    j, pg, pf = rep["jaccard"], rep["pages"], rep["prefetch"]
    facts = rep["restores"]

    def med(key: str, sub: str) -> float | None:
        vals = sorted(float(f[key][sub]) for f in facts if f[key].get(sub) is not None)
        return vals[len(vals) // 2] if vals else None

    rows = [
        ("restores (first requests)",
         f"{len(facts)} ({escape(', '.join(x or '?' for x in rep['requests']))})"),
        ("Jaccard, same first request: median (min–max, pairs)", _med(j["same_request"])),
        ("Jaccard, different first requests", _med(j["different_request"])),
        ("pages faulted in all / in any restore",
         f"{pg['in_all']:,} / {pg['in_any']:,} ({_f(pg['in_all_of_any'])})"),
        ("prefetch precision, same request (trace of i, restore j)", _med(pf["same_request"]["precision"])),
        ("prefetch recall, same request", _med(pf["same_request"]["recall"])),
        ("prefetch precision / recall, different requests",
         f"{_med(pf['different_request']['precision'])} / {_med(pf['different_request']['recall'])}"),
        ("50 / 90 / 99 % of faults by (ms, median of restores)",
         " / ".join(_f(med("fault_time", f"p{q}_ms"), 1) for q in (50, 90, 99))),
        ("next fault = next page, gpa / file offset (median)",
         f"{_f(med('sequential', 'next_page_gpa'))} / {_f(med('sequential', 'next_page_file'))}"),
        ("runs of consecutive pages in file order: median length, count",
         f"{_f(med('runs', 'p50'), 1)}, {_f(med('runs', 'count'), 0)}"),
        ("touched pages per touched 2 MiB block (median; blocks)",
         f"{_f(med('blocks_2m', 'p50'), 1)} of {facts[0]['blocks_2m']['pages_per_block']}; "
         f"{_f(med('blocks_2m', 'touched'), 0)}"),
    ]
    table = "<table>" + "".join(f'<tr><td class="l">{escape(k)}</td><td class="l">{v}</td></tr>'
                                for k, v in rows) + "</table>"
    labels = [f["label"] for f in facts]
    plots = [
        svgplot.heatmap(f"{variant}: Jaccard", labels, j["matrix"]),
        svgplot.heatmap(f"{variant}: precision (row drives column)", labels, pf["precision"]),
        svgplot.line_plot(f"{variant}: faults over time (CDF)", {r.label: fault_cdf(r) for r in restores},
                          "ms since the hand-off", "fraction of faults"),
        _hist_bars(f"{variant}: run lengths (pages, file order)",
                   {f["label"]: f["runs"]["histogram"] for f in facts}, "runs"),
        _hist_bars(f"{variant}: touched pages per 2 MiB block",
                   {f["label"]: f["blocks_2m"]["histogram"] for f in facts}, "blocks"),
    ]
    notes = "".join(f'<p class="muted">{escape(n)}</p>' for n in rep["notes"])
    return f"<h3>{escape(variant)}</h3>{table}{notes}<div class=\"plots\">{''.join(plots)}</div>"


def _taxonomy(variants: list[str], strategies: list[str],
              by_cell: dict[tuple[str, str], list[RunRecord]]) -> str:
    rows = []
    for v in variants:
        for s in strategies:
            total: dict[str, dict[str, int]] = {}
            for r in by_cell.get((v, s), []):
                tx = r.metrics.get("fault_taxonomy")
                for c, row in ((tx or {}).get("classes") or {}).items():
                    acc = total.setdefault(c, {})
                    for o in (*_OUTCOMES, "total"):
                        acc[o] = acc.get(o, 0) + int(row.get(o, 0))
            for c in _CLASSES:
                if c in total:
                    cells = "".join(f"<td>{total[c].get(o, 0):,}</td>" for o in (*_OUTCOMES, "total"))
                    rows.append(f'<tr><td class="l">{escape(v)}</td><td class="l">{escape(s)}</td>'
                                f'<td class="l">{c}</td>{cells}</tr>')
    if not rows:
        return ("<p>No run's page-server metrics carry a fault taxonomy (File-backend runs, or runs recorded "
                "before it existed).</p>")
    head = "".join(f"<th>{o.replace('_', ' ')}</th>" for o in (*_OUTCOMES, "total"))
    return ('<p class="muted">Every page-server fault of all repetitions, by the page it asked for (data '
            "from the memory file, a hole, already resident, removed by the balloon) and how it ended "
            "(docs/uffd.md).</p>"
            f'<table><tr><th class="l">variant</th><th class="l">strategy</th><th class="l">class</th>{head}'
            f"</tr>{''.join(rows)}</table>")


def section(variants: list[str], strategies: list[str], by_cell: dict[tuple[str, str], list[RunRecord]],
            results_dir: Path) -> str:
    """The HTML of the section (both parts)."""
    parts = ['<p class="muted">Per variant (one snapshot), its ondemand restores: how alike their first '
             "request's working sets are, how their faults unfold, and how well one's trace would prefetch "
             "another's (<code>firecracer analyze --predictability</code> prints the same for any "
             "recordings).</p>"]
    shown = 0
    for v in variants:
        cell = [r for s in strategies for r in by_cell.get((v, s), [])]
        restores, skipped = _restores(cell, results_dir)
        if len(restores) < 2:
            continue
        parts.append(_variant(v, restores))
        if skipped:
            parts.append(f'<p class="muted">left out: {escape("; ".join(skipped))}</p>')
        shown += 1
    if not shown:
        parts.append("<p>No variant has two or more ondemand restores with a trace, so there is nothing to "
                     "compare.</p>")
    parts.append("<h3>Faults by page class and outcome</h3>")
    parts.append(_taxonomy(variants, strategies, by_cell))
    return "\n".join(parts)
