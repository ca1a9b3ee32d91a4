"""``firecracer collect``: guest (or local) memory owners and NMT into a recording directory."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.command()
def collect() -> None:
    """Collect memmap + NMT + smaps from a VM or this host."""
    not_yet("collect", "issue #6")


COMMANDS = [collect]
