"""``firecracer samples``: the real recordings shipped with the package — list them, unpack one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from firecracer.cli._render import console, print_json, print_table


@click.group()
def samples() -> None:
    """Real JVM restore recordings bundled with firecracer (what 'demo --mode sample' shows)."""


@samples.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Name, origin and size of each bundled recording, and how to unpack one."""
    from firecracer import samples as lib

    rows: list[dict[str, Any]] = []
    for name in lib.names():
        info = lib.info(name)
        first = info.first_request or {}
        rows.append({"name": name, "source": info.source, "host": info.host.get("label"),
                     "created": info.created, "label": info.label,
                     "first_request": first.get("path"), "archive_bytes": lib.path(name).stat().st_size})
    if as_json:
        print_json(rows)
        return
    table = Table(title="bundled recordings")
    for col in ("name", "recorded by", "where", "created", "archive"):
        table.add_column(col, justify="right" if col == "archive" else "left")
    for r in rows:
        table.add_row(r["name"], str(r["source"]), str(r["host"] or "-"), str(r["created"]),
                      f"{r['archive_bytes'] / 1024:.0f} kB")
    print_table(table)
    console.print("unpack one with: firecracer samples extract NAME -o DIR   (then: firecracer analyze "
                  "DIR/NAME, firecracer view DIR/NAME)", highlight=False)


@samples.command()
@click.argument("name")
@click.option("-o", "--output", "out", default=".", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Directory to unpack into (DIR/NAME).")
def extract(name: str, out: Path) -> None:
    """Unpack bundled recording NAME into OUTPUT/NAME (a recording directory)."""
    from firecracer import samples as lib

    d = lib.extract(name, out)
    console.print(f"{name} → {d}  (firecracer analyze {d}; firecracer view {d})", highlight=False)


COMMANDS = [samples]
