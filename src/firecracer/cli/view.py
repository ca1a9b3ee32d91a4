"""``firecracer view``: the self-contained HTML viewer."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.command()
def view() -> None:
    """Write (or serve) the interactive physical-memory viewer for a recording."""
    not_yet("view", "issue #8")


COMMANDS = [view]
