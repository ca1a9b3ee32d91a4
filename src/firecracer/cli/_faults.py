"""The page server's per-fault taxonomy (``fault_taxonomy``, ``firecracer.uffd.faultclass``) as a table."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

OUTCOMES = ("installed", "eexist", "eagain", "woken", "peer_gone")


def _p50_bucket(hist: dict[str, int]) -> str:
    """The log2-µs bucket holding the median fault of a class."""
    total = sum(hist.values())
    seen = 0
    for label, n in hist.items():
        seen += n
        if 2 * seen >= total:
            return label
    return "–"


def taxonomy_table(taxonomies: list[tuple[str, dict[str, Any]]]) -> Table | None:
    """One row per (session or restore, page class): faults per outcome and the median's latency bucket;
    None when no entry has a taxonomy (metrics written before it existed)."""
    rows = [(name, c, row) for name, tx in taxonomies if isinstance(tx, dict)
            for c, row in (tx.get("classes") or {}).items()]
    if not rows:
        return None
    t = Table(title="faults by page class and outcome (latency: fault read → install done)",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("", "class", *OUTCOMES, "total", "median µs (log2 bucket)"):
        t.add_column(col.replace("_", " "), justify="left" if col in ("", "class") else "right")
    for name, c, row in rows:
        t.add_row(name, c, *[f"{row.get(o, 0):,}" if row.get(o) else "·" for o in OUTCOMES],
                  f"{row.get('total', 0):,}", _p50_bucket(row.get("latency_us_log2") or {}))
    return t
