"""``firecracer image``: build the guest kernel and root file system, check them under QEMU TCG."""

from __future__ import annotations

import click

from firecracer.cli._render import not_yet


@click.group()
def image() -> None:
    """Build and check guest images (kernel, rootfs with JDK and the demo service)."""


@image.command()
def kernel() -> None:
    """Build an uncompressed x86-64 vmlinux from Debian's linux-source."""
    not_yet("image kernel", "issue #5")


COMMANDS = [image]
