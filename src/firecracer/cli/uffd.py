"""``firecracer uffd``: the userfaultfd page server and its traces."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.group()
def uffd() -> None:
    """Serve a restoring microVM's page faults and record them."""


@uffd.command()
def serve() -> None:
    """Serve page faults from a snapshot memory file."""
    not_yet("uffd serve", "issue #4")


COMMANDS = [uffd]
