"""``firecracer selftest``: the probe guest through boot, snapshot and every restore path."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from firecracer.cli._render import console, human_ms, print_json, print_table
from firecracer.vmm.selftest import run_selftest


@click.command()
@click.option("--firecracker", type=click.Path(dir_okay=False),
              help="Firecracker binary (default: $FIRECRACKER, the cache, PATH).")
@click.option("--page-server", help="Page-server command for the Uffd restore, with {socket}, {mem} (and "
              "{mem_id}) placeholders (default: 'firecracer uffd serve {socket} {mem}').")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def selftest(firecracker: str | None, page_server: str | None, as_json: bool) -> None:
    """Boot the probe guest, snapshot Full and Diff, restore with File and Uffd, verify every page.

    Exit status 0 only if every check passed or is unsupported here for a stated reason.
    """
    import shlex

    from firecracer.cli.vm import term_runs_cleanup

    term_runs_cleanup()
    report = run_selftest(firecracker, page_server=shlex.split(page_server) if page_server else None)
    if as_json:
        print_json(report.to_json())
    else:
        t = Table("check", "result", "ms", "note", title=f"Firecracker {report.firecracker_version} "
                  f"({report.firecracker})")
        for c in report.checks:
            result = "[green]ok[/green]" if c.ok else ("[yellow]unsupported[/yellow]" if c.unsupported
                                                      else "[red]FAILED[/red]")
            t.add_row(c.name, result, "" if c.ms is None else human_ms(c.ms), c.unsupported or c.detail or "")
        print_table(t)
        console.print("[green]selftest passed[/green]" if report.ok else "[red]selftest failed[/red]")
        if report.kept:
            console.print(f"kept for post-mortem (logs; 'firecracer vm prune' removes them): "
                          f"{', '.join(report.kept)}", highlight=False)
    sys.exit(0 if report.ok else 1)


COMMANDS = [selftest]
