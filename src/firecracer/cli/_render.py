"""Shared rendering helpers for the CLI (the library never prints)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

# Piped or redirected output (logs, CI, a README) gets wide tables instead of rich's 80-column default;
# $COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping) so other tools can read it."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def not_yet(what: str, issue: str) -> None:
    """Raise the error for a command whose implementation lands later."""
    from firecracer.errors import NotImplementedYet

    raise NotImplementedYet(f"'{what}' is not implemented yet ({issue}); nothing was done")
