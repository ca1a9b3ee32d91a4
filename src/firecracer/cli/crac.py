"""``firecracer crac``: checkpoint and restore the JVM *process* inside a running guest.

CRIU runs in the guest (docs/crac.md); these commands drive the guest agent over vsock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from firecracer.cli._render import console, print_json
from firecracer.errors import FirecracerError
from firecracer.formats import ADDRESS_SPACE_PROCESS, RecordingFacts


@click.group()
def crac() -> None:
    """The JVM checkpointed and restored as a process with CRIU, inside our guest (CRaC's engine).

    \b
    firecracer crac scratch scratch.ext4                       # a drive for the images (sparse ext4)
    firecracer vm boot --name a --kernel … --rootfs … --mem 1024 --drive scratch.ext4 \\
        --boot-args "console=ttyS0 reboot=k panic=1 FC_CRAC=on"
    firecracer crac checkpoint a --save ckpt/                  # hooks, GC, criu dump; the JVM ends
    firecracer vm boot --name b … --drive scratch.ext4:ro --boot-args "… FC_CRAC=on FC_JAVA=off"
    firecracer crac restore b --lazy --from ckpt/ -o rec/      # then: firecracer analyze rec/
    """


def _agent_address(name: str, port: int) -> str:
    from firecracer.vmm.machine import MicroVM

    vm = MicroVM.attach(name)
    vm.require_running()
    if vm.config is not None and vm.config.vsock_cid is None:
        raise FirecracerError(f"{name}: has no vsock device (the guest agent listens on vsock)")
    return f"vsock:{vm.vsock_path}:{port}"


def _call(name: str, port: int, cmd: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    from firecracer.agentclient.client import AgentClient

    with AgentClient.connect(_agent_address(name, port), timeout=30.0) as a:
        return a.call(cmd, args, timeout=timeout)


@crac.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--size-mib", default=4096, show_default=True, type=click.IntRange(64, 1 << 20),
              help="Apparent size; the file is sparse, so only what CRIU writes takes space.")
def scratch(path: str, size_mib: int) -> None:
    """Make a scratch drive (ext4, no mount needed) for checkpoint images."""
    from firecracer.experiment.backends.process import make_scratch

    make_scratch(Path(path), size_mib)
    console.print(f"wrote {path} ({size_mib} MiB, sparse ext4): attach it with 'vm boot --drive {path}'")


@crac.command()
@click.argument("vm_name")
@click.option("--port", default=52, show_default=True, help="The guest agent's vsock port.")
@click.option("--json", "as_json", is_flag=True)
def check(vm_name: str, port: int, as_json: bool) -> None:
    """Run criu check in the guest: does its kernel have what CRIU needs."""
    rep = _call(vm_name, port, "criu-check", {}, 300)
    if as_json:
        print_json(rep)
    else:
        console.print(f"{rep.get('version', 'criu')}: " + ("[green]Looks good.[/green]" if rep["ok"] else
                                                            "[red]not usable[/red]"))
        if not rep["ok"]:
            console.print(rep.get("output", ""), highlight=False, markup=False)
    if not rep["ok"]:
        raise SystemExit(1)


@crac.command()
@click.argument("vm_name")
@click.option("--name", "ckpt", default="jvm", show_default=True,
              help="Checkpoint name on the scratch drive.")
@click.option("--pid", type=int, help="The process (default: the guest's only JVM).")
@click.option("--save", "save", type=click.Path(file_okay=False),
              help="Keep what a restore's recording needs here: the JVM's maps, the dumped page ranges, "
                   "its NMT report.")
@click.option("--port", default=52, show_default=True, help="The guest agent's vsock port.")
@click.option("--timeout", default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def checkpoint(vm_name: str, ckpt: str, pid: int | None, save: str | None, port: int, timeout: float,
               as_json: bool) -> None:
    """Checkpoint the JVM: its before-checkpoint hooks, a GC, criu dump onto the scratch drive.

    On success the JVM has ended (the VM stays up); on failure it goes on running and the error quotes
    CRIU's reason.
    """
    args: dict[str, Any] = {"name": ckpt}
    if pid is not None:
        args["pid"] = pid
    nmt = None
    if save:
        from firecracer.agentclient.client import AgentClient

        with AgentClient.connect(_agent_address(vm_name, port), timeout=30.0) as a:
            nmt = a.nmt(pid)[1]
    rep = _call(vm_name, port, "checkpoint", args, timeout)
    if save:
        d = Path(save)
        d.mkdir(parents=True, exist_ok=True)
        (d / "crac").mkdir(exist_ok=True)
        (d / "crac" / "maps.txt").write_text(str(rep.get("maps", "")))
        (d / "crac" / "dumped.json").write_text(json.dumps(rep.get("dumped", {})))
        keep = ("pid", "seconds", "bytes", "pages", "files", "prepare_seconds")
        (d / "crac" / "checkpoint.json").write_text(json.dumps({k: rep.get(k) for k in keep}, indent=1))
        if nmt is not None:
            (d / "nmt.txt").write_text(nmt)
    rep.pop("maps", None)
    rep.pop("dumped", None)
    if as_json:
        print_json(rep)
        return
    console.print(f"checkpoint {ckpt!r} of pid {rep['pid']}: {rep['bytes'] / 2**20:,.1f} MiB of images, "
                  f"{rep['pages']:,} pages, criu dump {rep['seconds']:.2f} s (hooks + GC "
                  f"{rep.get('prepare_seconds', 0):.2f} s)" + (f"; kept in {save}" if save else ""),
                  highlight=False)


@crac.command()
@click.argument("vm_name")
@click.option("--name", "ckpt", default="jvm", show_default=True,
              help="Checkpoint name on the scratch drive.")
@click.option("--lazy", is_flag=True, help="Pages on demand through CRIU's lazy-pages daemon.")
@click.option("--request", "path", default="/", show_default=True,
              help="The first request (from inside the guest, timed from the restore command).")
@click.option("--app-port", default=8080, show_default=True)
@click.option("--from", "from_dir", type=click.Path(file_okay=False, exists=True),
              help="What 'crac checkpoint --save' kept: with -o, the restore's recording is written.")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False),
              help="Write the restore as a recording (image space: analyze, view, --compare).")
@click.option("--port", default=52, show_default=True, help="The guest agent's vsock port.")
@click.option("--timeout", default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def restore(vm_name: str, ckpt: str, lazy: bool, path: str, app_port: int, from_dir: str | None,
            out: str | None, port: int, timeout: float, as_json: bool) -> None:
    """Restore a checkpoint in this guest (booted FC_JAVA=off): criu restore, hooks, first request."""
    if out and not from_dir:
        raise click.UsageError("-o needs --from (the directory 'crac checkpoint --save' wrote)")
    rep = _call(vm_name, port, "restore", {"name": ckpt, "lazy": lazy, "request": {
        "port": app_port, "path": path, "timeout": timeout}}, timeout + 60)
    if out and from_dir:
        from firecracer.experiment.backends.process import write_recording

        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        kind = "criu-lazy" if lazy else "criu"
        metrics = write_recording(Path(from_dir), d, rep, kind)
        RecordingFacts(source="criu", address_space=ADDRESS_SPACE_PROCESS, strategy=kind, metrics=metrics,
                       timings_ms={"restore": rep["seconds"] * 1e3,
                                   "first_response": rep.get("first_response_seconds", 0) * 1e3},
                       ).write(d / "recording.json")
    faults = rep.pop("faults", None)
    if as_json:
        print_json({**rep, "faults": len(faults["addr"]) if faults else None})
        return
    fr = rep.get("first_request") or {}
    how = "lazy" if lazy else "eager"
    first_ms = rep.get("first_response_seconds", 0) * 1e3
    console.print(f"restored {ckpt!r} (pid {rep['pid']}, {how}) in {rep['seconds']:.2f} s; GET {path} → "
                  f"{fr.get('status')} {first_ms:,.0f} ms after the restore command"
                  + (f"; {len(faults['addr']):,} faults until the response" if faults else "")
                  + (f"; recording in {out}" if out else ""), highlight=False)


COMMANDS = [crac]
