"""``firecracer analyze``: attribute restored pages to owners; tables and comparisons."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.command()
def analyze() -> None:
    """Tables per process, mapping and NMT category for a recording."""
    not_yet("analyze", "issue #7")


COMMANDS = [analyze]
