"""``firecracer vm`` and ``firecracer selftest``: Firecracker microVM lifecycle."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.group()
def vm() -> None:
    """Boot, snapshot, restore and drive Firecracker microVMs."""


@vm.command()
def boot() -> None:
    """Boot a microVM."""
    not_yet("vm boot", "issue #3")


COMMANDS = [vm]
