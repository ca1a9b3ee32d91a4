"""``firecracer install-firecracker``: put an official release into the tool's cache."""

from __future__ import annotations

import click

from firecracer.cli._render import console
from firecracer.vmm.binary import install_firecracker


@click.command("install-firecracker")
@click.argument("source", metavar="FILE_OR_URL")
@click.option("--no-default", is_flag=True, help="Do not make it the default 'firecracker' in the cache.")
def install(source: str, no_default: bool) -> None:
    """Install a release tarball (firecracker-vX.Y.Z-x86_64.tgz) or a bare binary."""
    rec = install_firecracker(source, make_default=not no_default)
    console.print(f"installed Firecracker v{rec['version']} at {rec['path']} (sha256 {rec['sha256'][:16]}…)")


COMMANDS = [install]
