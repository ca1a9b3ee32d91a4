"""``firecracer lab``: an emulated KVM host (QEMU TCG + AMD SVM) where real Firecracker boots Linux guests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click
from rich.table import Table

from firecracer.cli._render import console, err_console, print_json
from firecracer.lab.assets import Progress
from firecracer.lab.machine import LabSpec

_STAGE_LABELS = {
    "kernel_boot": "L1 kernel boot (to init, L1 clock)",
    "modules": "modules (virtio, 9p, overlay, kvm …)",
    "kvm_amd_load": "  of which kvm + kvm_amd",
    "root_mount": "host root over 9p + overlay",
    "runner_start": "runner start (Python over 9p)",
    "command": "the checks in L1 (KVM, userfaultfd, Firecracker)",
}
_HOST_LABELS = {
    "connected": "QEMU start → control port open",
    "running": "QEMU start → command running",
    "exited": "QEMU start → command done",
    "off": "QEMU start → L1 powered off, QEMU reaped",
}


def _progress(quiet: bool) -> Progress | None:
    if quiet:
        return None
    return lambda msg: err_console.print(f"[dim]lab: {msg}[/]", highlight=False)


def _spec(mem: int, cpus: int, timeout: float | None = None, shares: tuple[Path, ...] = ()) -> LabSpec:
    return LabSpec(mem_mib=mem, cpus=cpus, timeout_s=timeout, shares=shares)


mem_option = click.option("--mem", type=click.IntRange(1024), default=8192, show_default=True,
                          metavar="MIB", help="L1's RAM in MiB (QEMU backs it lazily).")
cpus_option = click.option("--cpus", type=click.IntRange(1, 64), default=2, show_default=True,
                           help="L1's virtual CPUs.")


@click.group()
def lab() -> None:
    """An emulated KVM host: run Firecracker with Linux guests where /dev/kvm cannot (PVM, no KVM).

    QEMU's TCG emulates AMD SVM with nested paging; its L1 VM gets /dev/kvm from kvm_amd and shares
    this host's root read-only and your working directory writable. Timings in the lab are TCG
    timings (never compare them with KVM); counts (faults, pages, bytes) are real.
    """


@lab.command()
@click.option("--l1-kernel-deb", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this Debian kernel package for L1 instead of fetching linux-image-amd64.")
@click.option("--quiet", is_flag=True, help="Print only the result.")
def prepare(l1_kernel_deb: Path | None, quiet: bool) -> None:
    """Fetch L1's kernel (Debian's package, unpacked into the cache) and build its initramfs."""
    from firecracer.lab.assets import prepare as prep

    a = prep(l1_kernel_deb, progress=_progress(quiet) or (lambda _m: None))
    console.print(f"L1 kernel {a.kernel.package} {a.kernel.version} ({a.kernel.release}): {a.kernel.vmlinuz}")
    console.print(f"initramfs ({len(a.kernel.load_order)} modules): {a.initramfs}")


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@mem_option
@cpus_option
@click.option("--firecracker", metavar="PATH", help="Firecracker binary to judge inside L1.")
@click.option("--cpu-model", default=None, metavar="MODEL",
              help="QEMU -cpu for L1 (default: EPYC,+svm,+npt; see docs/lab.md).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def check(as_json: bool, mem: int, cpus: int, firecracker: str | None, cpu_model: str | None,
          quiet: bool) -> None:
    """Boot L1, load kvm_amd, report the KVM capabilities Firecracker needs and the stage times."""
    import dataclasses

    from firecracer.lab.check import run_check

    spec = _spec(mem, cpus)
    if cpu_model:
        spec = dataclasses.replace(spec, cpu_model=cpu_model)
    rep = run_check(spec, firecracker, progress=_progress(quiet or as_json))
    if as_json:
        print_json(rep.as_dict())
    else:
        t = Table(title="firecracer lab check", show_header=True)
        t.add_column("stage")
        t.add_column("seconds", justify="right")
        for k, label in _HOST_LABELS.items():
            if k in rep.host_s:
                t.add_row(label, f"{rep.host_s[k]:.1f}")
        for k, label in _STAGE_LABELS.items():
            if k in rep.stages_s:
                t.add_row(label, f"{rep.stages_s[k]:.2f}")
        console.print(t)
        console.print(f"QEMU: {rep.qemu}")
        console.print(f"L1 kernel: {rep.l1_kernel}")
        caps = rep.l1.get("kvm_caps", {})
        console.print(f"L1 KVM: {rep.l1.get('kvm')}; API {caps.get('api_version')}; CPU "
                      f"{'+'.join(caps.get('cpu_virt', [])) or 'no svm/npt'}; nested "
                      f"{caps.get('nested', {})}; capabilities missing: {caps.get('missing') or 'none'}")
        console.print(f"L1 userfaultfd: {rep.l1.get('userfaultfd')}")
        console.print(f"L1 Firecracker: {rep.l1.get('firecracker')}")
        vec = rep.l1.get("vector", {})
        console.print(f"L1 vector emulation: {'correct' if vec.get('ok') else 'WRONG'} ({vec.get('detail')})")
        if rep.ok:
            console.print("[green]the lab works here: Firecracker can boot Linux guests in L1[/]")
        else:
            for p in rep.problems:
                console.print(f"[red]problem:[/] {p}")
    if not rep.ok:
        sys.exit(1)


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@mem_option
@cpus_option
@click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Power L1 off after this long (the command gets SIGTERM first); exit 124.")
@click.option("--share", "shares", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Another directory to share writable at its own path (the working directory always is).")
@click.option("--console", "show_console", is_flag=True, help="Print L1's console log path when done.")
@click.option("--quiet", is_flag=True, help="No progress lines from the lab itself.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(mem: int, cpus: int, timeout: float | None, shares: tuple[Path, ...], show_console: bool,
        quiet: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND in a fresh L1 (with /dev/kvm) and power it off; exits with COMMAND's status.

    The working directory, the environment (FIRECRACKER, PATH, the venv …) and this host's files are
    the same in L1; files written under the working directory (and --share directories) land here,
    writes elsewhere vanish with L1. COMMAND's stdin is empty; --timeout counts from QEMU's start.
    Use '--' before COMMAND: firecracer lab run -- firecracer selftest
    """
    from firecracer.lab import LabMachine

    def write(stream: BinaryIO) -> Callable[[bytes], None]:
        def put(data: bytes) -> None:
            stream.write(data)
            stream.flush()
        return put

    machine = LabMachine(_spec(mem, cpus, timeout, shares), progress=_progress(quiet))
    res = machine.run(list(command), stdout=write(sys.stdout.buffer), stderr=write(sys.stderr.buffer))
    name = Path(command[0]).name
    if res.leftover and not quiet:
        err_console.print(f"[yellow]lab: {len(res.leftover)} process(es) still ran in L1 when {name} exited "
                          f"(L1 is off now): {'; '.join(res.leftover[:5])}[/]", highlight=False)
    if res.timed_out:
        err_console.print(f"lab: {name} did not finish within {timeout:g} s; L1 was powered off",
                          highlight=False)
    elif res.interrupted:
        err_console.print(f"lab: interrupted ({res.interrupted}); {name} was signalled and L1 powered off",
                          highlight=False)
    if show_console:
        err_console.print(f"lab: L1 console log: {res.run_dir / 'console.log'}", highlight=False)
    sys.exit(res.rc if 0 <= res.rc < 256 else 1)


COMMANDS = [lab]
