"""``firecracer doctor``: what this host can do, and what is missing for a given job."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from firecracer import host
from firecracer.cli._render import console, print_json, print_table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: each check with 'ok' and 'detail'.")
@click.option("--need", type=click.Choice(sorted(host.NEEDS)), help="Exit 1 unless this capability is there.")
@click.option("--firecracker", "firecracker", metavar="PATH", help="Firecracker binary to check.")
def doctor(as_json: bool, need: str | None, firecracker: str | None) -> None:
    """Check KVM (and PVM nesting), userfaultfd, Firecracker, CAP_NET_ADMIN, QEMU, Java and disk."""
    checks = host.run_all(firecracker)
    missing = host.missing_for(need, checks) if need else []
    if as_json:
        data: dict[str, object] = {name: c.as_dict() for name, c in checks.items()}
        if need:
            data["need"] = {"capability": need, "ok": not missing, "missing": missing}
        print_json(data)
    else:
        table = Table(title="firecracer doctor", show_lines=False)
        table.add_column("check")
        table.add_column("ok")
        table.add_column("detail", overflow="fold")
        for name, c in checks.items():
            mark = "[green]yes[/]" if c.ok else "[red]no[/]"
            if name == "pvm_nested":
                mark = "[yellow]yes[/]" if c.ok else "no"
            if name == "huge_pages" and c.ok and not c.info.get("available"):
                mark = "[yellow]yes[/]"  # supported, but nothing reserved yet: the detail says how
            table.add_row(name, mark, c.detail)
        print_table(table)
        if need:
            if missing:
                console.print(f"[red]missing for '{need}':[/] " + ", ".join(
                    f"{m} ({checks[m].detail})" for m in missing))
            else:
                console.print(f"[green]'{need}' is available on this host[/]")
    if missing:
        sys.exit(1)


COMMANDS = [doctor]
