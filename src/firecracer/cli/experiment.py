"""``firecracer experiment``: whole studies from a spec."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.group()
def experiment() -> None:
    """Run a matrix of variants × restore strategies and report on it."""


@experiment.command()
def run() -> None:
    """Run a study spec."""
    not_yet("experiment run", "issue #9")


COMMANDS = [experiment]
