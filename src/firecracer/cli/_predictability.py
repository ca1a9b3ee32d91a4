"""Terminal rendering of ``firecracer analyze --predictability`` (the numbers: analysis.predictability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from firecracer.cli._render import console, print_json, print_table


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _pair(s: dict[str, Any]) -> str:
    if not s.get("pairs"):
        return "– (no pairs)"
    return f"median {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}; {s['pairs']} pairs)"


def show(paths: tuple[Path, ...], as_json: bool) -> None:
    """Compute and print the predictability report of the restores at ``paths``."""
    from firecracer.analysis.predictability import predictability_of

    rep, _ = predictability_of(paths)
    if as_json:
        print_json(rep)
        return
    snap = rep["snapshot"]
    console.print(f"[bold]Predictability[/bold] of {len(rep['restores'])} restores of snapshot "
                  f"{snap['id'] or '(no id recorded)'} ({snap['mem_bytes'] or 0:,} bytes, "
                  f"{snap['page_size']}-byte pages); first requests: "
                  f"{', '.join(r or '(not recorded)' for r in rep['requests'])}")
    t = Table(title="Per restore", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("restore", "request", "strategy", "faults", "pages", "50 % faults ms", "90 %", "99 %",
              "next=next gpa", "next=next file", "runs", "run p50", "2 MiB blocks", "pages/block p50"):
        t.add_column(c, justify="left" if c in ("restore", "request", "strategy") else "right",
                     overflow="fold")
    for r in rep["restores"]:
        ft, sq = r["fault_time"], r["sequential"]
        t.add_row(r["label"], r["request"] or "–", r["strategy"] + ("" if r["complete"] else " (partial)"),
                  _f(r["faults"]), _f(r["pages"]), _f(ft.get("p50_ms"), 1), _f(ft.get("p90_ms"), 1),
                  _f(ft.get("p99_ms"), 1), _f(sq["next_page_gpa"]), _f(sq["next_page_file"]),
                  _f(r["runs"]["count"]), _f(r["runs"].get("p50"), 0), _f(r["blocks_2m"]["touched"]),
                  _f(r["blocks_2m"].get("p50"), 0))
    print_table(t)
    j, pg, pf = rep["jaccard"], rep["pages"], rep["prefetch"]
    if rep["requests_known"]:
        console.print(f"Jaccard of the page sets: same first request {_pair(j['same_request'])}; "
                      f"different first requests {_pair(j['different_request'])}")
    else:
        console.print(f"Jaccard of the page sets (first requests not recorded, all pairs): {_pair(j['all'])}")
    console.print(f"Pages faulted in all restores: {pg['in_all']:,} of {pg['in_any']:,} in any "
                  f"({_f(pg['in_all_of_any'])})")
    for group in ("same_request", "different_request"):
        g = pf[group]
        if g["precision"].get("pairs"):
            console.print(f"Prefetch with another restore's trace ({group.replace('_', ' ')}): precision "
                          f"{_pair(g['precision'])}; recall {_pair(g['recall'])}")
    m = Table(title="Pairwise Jaccard (upper) and precision when the row's trace drives the column (lower)",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    labels = rep["labels"]
    m.add_column("")
    for lab in labels:
        m.add_column(lab, justify="right", overflow="fold")
    for i, lab in enumerate(labels):
        m.add_row(lab, *[_f(j["matrix"][i][k]) if k > i else "·" if k == i else _f(pf["precision"][i][k])
                         for k in range(len(labels))])
    print_table(m)
    from firecracer.cli._faults import taxonomy_table

    tx = taxonomy_table([(r["label"], r.get("fault_taxonomy") or {}) for r in rep["restores"]])
    if tx is not None:
        print_table(tx)
    for note in rep["notes"]:
        console.print(f"[dim]note: {note}[/dim]")
