"""``firecracer worker``: join this machine to a Ray cluster, offering what it can run (a ``ray start``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import click

from firecracer.cli._render import console
from firecracer.errors import FirecracerError


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--address", metavar="HEAD:PORT", help="The head's address (its 'ray start --head' port).")
@click.option("--head", is_flag=True, help="Start the cluster's head here (it runs variants too).")
@click.option("--port", type=click.IntRange(1, 65535), default=6379, show_default=True,
              help="With --head: the port workers join.")
@click.option("--slots", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Variants this machine runs at once (more than 1 disturbs their timings).")
@click.option("--firecracker", "firecracker", metavar="PATH", help="Firecracker binary to check.")
@click.option("--dry-run", is_flag=True, help="Print the 'ray start' command and exit.")
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED, metavar="[RAY_START_ARGS]...")
def worker(address: str | None, head: bool, port: int, slots: int, firecracker: str | None, dry_run: bool,
           ray_args: tuple[str, ...]) -> None:
    """Run 'ray start' with the resources this machine offers to 'experiment run --cluster'.

    The resources come from the checks of 'firecracer doctor': firecracker_probe (the probe guest runs),
    firecracker_kvm (Linux guests boot: the jvm backend), firecracker_lab (the lab runs) and firecracer,
    each worth --slots. Other arguments go to 'ray start' as they are (e.g. --num-cpus 2
    --object-store-memory 500000000 --node-ip-address IP). Stop it with 'ray stop' on this machine.
    """
    from firecracer.experiment.cluster import host_resources

    if head == bool(address):
        raise click.UsageError("give --address HEAD:PORT (join a cluster) or --head (start one), not both")
    ray = shutil.which("ray")
    if ray is None and not dry_run:
        raise FirecracerError("'ray' is not installed here: pip install 'firecracer[cluster]'")
    res = host_resources(slots, firecracker)
    cmd = [ray or "ray", "start", "--resources", json.dumps(res, sort_keys=True)]
    cmd += ["--head", f"--port={port}"] if head else [f"--address={address}"]
    cmd += list(ray_args)
    console.print("offering " + ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())), highlight=False)
    if dry_run:
        console.print(" ".join(cmd), highlight=False, soft_wrap=True)
        return
    rc = subprocess.call(cmd)
    if rc:
        sys.exit(rc)


COMMANDS = [worker]
