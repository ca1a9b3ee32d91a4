"""Shared rendering helpers for the CLI (the library never prints)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Piped or redirected output (logs, CI, a README) gets wide tables instead of rich's 80-column default;
# $COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping) so other tools can read it."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def human_ms(ms: float) -> str:
    """Milliseconds rounded for people: ``1,014``, ``84``, ``8.4``, ``0.42`` (``--json`` keeps all)."""
    a = abs(ms)
    if a == 0:
        return "0"
    if a >= 10:
        return f"{ms:,.0f}"
    if a >= 1:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def timings_text(timings_ms: Mapping[str, Any]) -> str:
    """``{'spawn': 6.887, 'start': 10.57}`` → ``spawn=6.9 ms  start=11 ms`` (non-numbers as they are)."""
    return "  ".join(f"{k}={human_ms(float(v))} ms" if isinstance(v, int | float) and not isinstance(v, bool)
                     else f"{k}={v}" for k, v in timings_ms.items())


def human_bytes(n: float) -> str:
    """Bytes in the one spelling the CLI uses: ``512 B``, ``12.0 kB``, ``33.5 MiB``, ``1.00 GiB``.

    kB is 1024 bytes, as in the kernel's ``/proc`` files and the analysis tables (``rss kB``).
    """
    if n < 1024:
        return f"{n:.0f} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} kB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


def print_table(table: Table, out: Console | None = None) -> None:
    """Print a table whole, never cutting a header or a number (``class:pr…``).

    Rich squeezes columns below their content when the terminal is narrow. Here every column gets at
    least its narrowest rendering: headers wrap at spaces, right-justified (number) cells never wrap
    (``32.0 kB`` stays on one line), other cells wrap at spaces and fold at the column's ``max_width``.
    The space above that goes to the columns that would otherwise wrap most. A table whose narrowest
    rendering is wider than the terminal is printed wider (the terminal wraps it).
    """
    out = out or console
    wide = out.options.update(max_width=1 << 16)
    lo: list[int] = []
    hi: list[int] = []
    for col in table.columns:
        head = Measurement.get(out, wide, col.header)
        cells = [Measurement.get(out, wide, r) for r in col.cells]
        whole = col.justify == "right"
        mn = max([head.minimum, *((m.maximum if whole else m.minimum) for m in cells)])
        mx = max([head.maximum, *(m.maximum for m in cells)])
        if col.max_width is not None:
            mn, mx = min(mn, col.max_width), min(mx, col.max_width)
        lo.append(mn)
        hi.append(max(mn, mx))
    widths = list(hi)
    for col, w in zip(table.columns, widths, strict=True):
        col.width = w
    excess = Measurement.get(out, wide, table).maximum - out.width
    while excess > 0:  # take one column at a time from the one with the most room above its minimum
        k = max(range(len(widths)), key=lambda i: widths[i] - lo[i], default=-1)
        if k < 0 or widths[k] <= lo[k]:
            break
        widths[k] -= 1
        table.columns[k].width = widths[k]
        excess -= 1
    need = Measurement.get(out, wide, table).maximum
    if need <= out.width:
        out.print(table)
        return
    old = out.width
    out.width = need
    try:
        out.print(table)
    finally:
        out.width = old


def not_yet(what: str, issue: str) -> None:
    """Raise the error for a command whose implementation lands later."""
    from firecracer.errors import NotImplementedYet

    raise NotImplementedYet(f"'{what}' is not implemented yet ({issue}); nothing was done")
