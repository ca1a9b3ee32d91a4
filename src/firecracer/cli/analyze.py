"""``firecracer analyze``: attribute restored pages to owners; tables and comparisons."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table as RichTable

from firecracer.cli._render import console, human_ms, print_json, print_table

LONG_TABLES = ("mappings", "nmt_regions", "processes")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--seed", is_flag=True,
              help="FILES are the seed's MEMMAP UFFDLOG [NMT] (mem_mapping.sh output, uffd_handler log, "
                   "jcmd VM.native_memory detail) instead of one recording directory.")
@click.option("--compare", "compare_with", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A second recording: per-category deltas and Jaccard similarity of restored pages.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (totals, tables).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the tables as CSV sections ('# name' lines).")
@click.option("--table", "only", multiple=True, help="Show only these tables (repeatable).")
@click.option("--top", default=15, show_default=True,
              help="Rows of the long tables shown on the terminal (JSON/CSV always have all rows).")
@click.option("--predictability", is_flag=True,
              help="FILES are restores of one snapshot (recording directories or trace.npz): how alike "
                   "their working sets are, in which order they fault, and how well one's trace prefetches "
                   "another's (docs/analysis.md).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --seed: also write the assembled recording as a native directory.")
def analyze(files: tuple[Path, ...], seed: bool, compare_with: Path | None, as_json: bool, as_csv: bool,
            only: tuple[str, ...], top: int, save_dir: Path | None, predictability: bool) -> None:
    """Tables per process, mapping and NMT category for a RECORDING directory.

    \b
    firecracer analyze RECORDING [--compare RECORDING_B] [--json|--csv]
    firecracer analyze --seed MEMMAP UFFDLOG [NMT] [--save DIR]
    firecracer analyze --predictability RECORDING|TRACE... [--json]
    """
    if predictability:
        if seed or compare_with or as_csv or only or save_dir:
            raise click.UsageError("--predictability takes only RECORDING|TRACE... and --json")
        from firecracer.cli._predictability import show

        show(files, as_json)
        return
    from firecracer.analysis import assemble_from_seed, attribute, compare, load_recording, tables
    from firecracer.analysis.recording import save_recording
    from firecracer.analysis.tables import totals

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    if seed:
        if len(files) not in (2, 3):
            raise click.UsageError("--seed takes MEMMAP UFFDLOG [NMT]")
        rec = assemble_from_seed(files[0], files[1], files[2] if len(files) == 3 else None)
        if save_dir is not None:
            save_recording(rec, save_dir)
    else:
        if len(files) != 1:
            raise click.UsageError("give one RECORDING directory (or --seed MEMMAP UFFDLOG [NMT])")
        if save_dir is not None:
            raise click.UsageError("--save is for --seed imports")
        rec = load_recording(files[0])
    att = attribute(rec)
    tabs = tables(att)
    if only:
        unknown = set(only) - set(tabs)
        if unknown:
            raise click.UsageError(f"unknown table(s) {sorted(unknown)}; known: {', '.join(tabs)}")
        tabs = {k: v for k, v in tabs.items() if k in only}
    cmp = compare(att, attribute(load_recording(compare_with))) if compare_with is not None else {}
    tot = totals(att)

    if as_json:
        out: dict[str, Any] = {"recording": rec.label, "path": str(rec.path) if rec.path else None,
                               "source": rec.meta.get("source"), "totals": tot,
                               "tables": {k: t.to_dicts() for k, t in tabs.items()}}
        if cmp:
            out["compare"] = {"b": str(compare_with), **{k: t.to_dicts() for k, t in cmp.items()}}
        if rec.trace is not None and rec.trace.meta.get("fault_taxonomy"):
            out["fault_taxonomy"] = rec.trace.meta["fault_taxonomy"]
        print_json(out)
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        buf.write("# totals\n")
        w.writerow(list(tot))
        w.writerow(["" if v is None else v for v in tot.values()])
        for name, t in {**tabs, **{f"compare_{k}": v for k, v in cmp.items()}}.items():
            buf.write(f"\n# {name}\n")
            w.writerow(t.columns)
            w.writerows([["" if v is None else v for v in r] for r in t.rows])
        sys.stdout.write(buf.getvalue())
        return
    _render_totals(rec.label, tot)
    if rec.trace is not None:
        from firecracer.cli._faults import taxonomy_table

        tx = taxonomy_table([("restore", rec.trace.meta.get("fault_taxonomy") or {})])
        if tx is not None:
            print_table(tx)
    for name, t in {**tabs, **{f"compare_{k}": v for k, v in cmp.items()}}.items():
        _render_table(name, t, top)


def _render_totals(label: str, tot: dict[str, Any]) -> None:
    space = ("pages of the JVM's CRIU images (a process restore, in virtual-address order)"
             if tot.get("address_space") == "criu-image" else "physical pages")
    console.print(f"[bold]{label}[/bold]: {tot['physical_pages']:,} {space} in "
                  f"{tot['processes']} sections, {tot['mappings']:,} mappings; "
                  f"{tot['uffd_events']:,} uffd events ({tot['pages_loaded']:,} loaded, "
                  f"{tot['pages_zeroed']:,} zeroed); {tot['nmt_regions']} NMT regions; "
                  + (f"restored {tot['restored_kb']:,} kB, {tot['attributed_pct']}% of it attributed"
                     if tot["uffd_events"] else "no restore trace"))


def _render_table(name: str, t: Any, top: int) -> None:
    if not t.rows:
        return
    rows = t.rows
    note = ""
    if name in LONG_TABLES and len(rows) > top and "restored_kb" in t.columns:
        k = t.columns.index("restored_kb")
        r = t.columns.index("rss_kb")
        rows = sorted(rows, key=lambda x: (-(x[k] or 0), -(x[r] or 0)))[:top]
        note = f" (top {top} of {len(t.rows)} by restored kB; --json for all)"
    rt = RichTable(title=f"{t.title}{note}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    kb_series = name.startswith("restore_timeline")  # its group columns hold cumulative kB
    cells = [[_cell(c if k == 0 or not kb_series else f"{c}_kb", v) for k, (c, v) in
              enumerate(zip(t.columns, row, strict=True))] for row in rows]
    for k, c in enumerate(t.columns):
        numeric = any(isinstance(x[k], int | float) for x in rows)
        # headers wrap at the spaces _header puts in; long names fold at 48 columns; numbers are never cut
        rt.add_column(_header(c), justify="right" if numeric else "left", overflow="fold",
                      max_width=None if numeric else 48)
    for r in cells:
        rt.add_row(*r)
    print_table(rt)


def _header(col: str) -> str:
    """Column name for the terminal: words that can wrap (``restored_pct_of_rss`` → ``restored % of rss``)."""
    if col == "kb":
        return "kB"
    return (col.replace("_pct_of_", " % of ").replace("_pct", " %").replace("_kb", " kB")
            .replace("_", " "))


def _cell(col: str, v: Any) -> str:
    if v is None:
        return ""
    grouped = col.endswith(("kb", "pages", "_a", "_b", "_delta"))
    if isinstance(v, int) and not isinstance(v, bool) and grouped:
        return f"{v:,}"
    if isinstance(v, float) and col.endswith("_ms"):
        return human_ms(v)  # --json and --csv keep the full value
    return str(v)


COMMANDS = [analyze]
