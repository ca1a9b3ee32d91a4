"""``firecracer image``: build the guest kernel and root file system, check them under QEMU TCG."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.markup import escape

from firecracer.cli._render import console, err_console, human_ms, print_json


class _CliReporter:
    """Phases as kept lines; build-log lines in a transient status line with elapsed time."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.monotonic()
        self.quiet = quiet
        self.status = err_console.status("", spinner="dots")
        self.lines = 0

    def __enter__(self) -> _CliReporter:
        if not self.quiet:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def step(self, message: str) -> None:
        if not self.quiet:
            err_console.print(f"[dim]{time.monotonic() - self.t0:6.0f}s[/] {escape(message)}",
                              soft_wrap=True)

    def line(self, text: str) -> None:
        self.lines += 1
        if not self.quiet:
            self.status.update(f"[dim]{time.monotonic() - self.t0:.0f}s · {self.lines} log lines ·[/] "
                               f"{escape(text.strip()[:100])}")


@click.group()
def image() -> None:
    """Build and check guest images (kernel, rootfs with JDK, agent and the workload: Spring PetClinic)."""
    from firecracer.cli.vm import term_runs_cleanup

    term_runs_cleanup()  # SIGTERM unwinds: QEMU, build steps and trees are cleaned up as on Ctrl-C


@image.command()
@click.option("--source", default="debian", show_default=True, metavar="debian|DIR|TARBALL",
              help="Kernel source: Debian's linux-source-6.1, an unpacked tree, or a tarball.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also copy the vmlinux here (the cache keeps its own copy).")
@click.option("-j", "--jobs", type=int, help="Parallel make jobs (default: CPUs + 1).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this kernel.")
@click.option("--quiet", is_flag=True, help="No progress output; print only the result.")
def kernel(source: str, output: Path | None, jobs: int | None, force: bool, quiet: bool) -> None:
    """Build an uncompressed x86-64 vmlinux (the project's config fragment on allnoconfig)."""
    from firecracer.image.kernel import build_kernel

    with _CliReporter(quiet) as rep:
        res = build_kernel(source, output, jobs, rep, force)
    how = "cached" if res.cached else f"built in {res.seconds:.0f} s"
    console.print(f"kernel {res.release} ({how}): {res.vmlinux}" + (f" → {output}" if output else ""),
                  soft_wrap=True)


@image.command()
@click.option("--jdk", default="debian", show_default=True, metavar="debian|DIR|TARBALL",
              help="JDK: Debian's OpenJDK 17 headless JDK, or a JDK directory/tarball (e.g. a CRaC build).")
@click.option("--app", default="petclinic", show_default=True, metavar="petclinic|tiny|JAR",
              help="Workload: Spring PetClinic (Debian's Spring, Jetty, H2), the tiny JDK-only service "
                   "(quick tests), or your JAR. Bundled apps are compiled in the image.")
@click.option("--owners", type=click.IntRange(1, 10_000_000), metavar="N",
              help="Bundled apps: seed the clinic with N owners (default 2000; ~2 pets and ~3 visits each).")
@click.option("--main", "main_class", metavar="CLASS",
              help="Main class of --app JAR (default: its manifest).")
@click.option("--args", "app_args", metavar="ARGS", help="Arguments of the app (one string, shell quoting).")
@click.option("--train-seconds", type=float, default=20.0, show_default=True,
              help="How long a JAR runs for its AppCDS training before SIGTERM.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also copy the image here.")
@click.option("--size", metavar="SIZE", help="Image size, e.g. 1G (default: files + 25 % + 128 MiB).")
@click.option("--mirror", metavar="URL", help="Debian mirror (default: the host's apt source).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this image.")
@click.option("--quiet", is_flag=True, help="No progress output; print only the result.")
def rootfs(jdk: str, app: str, owners: int | None, main_class: str | None, app_args: str | None,
           train_seconds: float, output: Path | None, size: str | None, mirror: str | None, force: bool,
           quiet: bool) -> None:
    """Build an ext4 root file system: Debian bookworm, JDK, python3, init, agent, workload, CDS."""
    from firecracer.image.rootfs import build_rootfs

    with _CliReporter(quiet) as rep:
        res = build_rootfs(jdk, app, main_class, app_args, output, size, mirror, train_seconds, rep, force,
                           owners)
    how = "cached" if res.cached else f"built in {res.seconds:.0f} s"
    console.print(f"rootfs ({how}): {res.image}" + (f" → {output}" if output else ""), soft_wrap=True)
    console.print(f"manifest: {res.manifest}", soft_wrap=True)


@image.command()
@click.option("--kernel", "kernel_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="vmlinux to boot (default: the newest built one).")
@click.option("--rootfs", "rootfs_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="rootfs.ext4 to boot (default: the newest built one).")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Give up after this many seconds of wall time.")
@click.option("--console-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the guest's serial console here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: ok, the checks, the times.")
def check(kernel_path: Path | None, rootfs_path: Path | None, timeout: float, console_log: Path | None,
          as_json: bool) -> None:
    """Boot kernel + rootfs under QEMU TCG (no KVM) and check init, agent, HTTP 200 and NMT."""
    from firecracer.image.check import run_check

    with _CliReporter(as_json) as rep:
        res = run_check(kernel_path, rootfs_path, timeout=timeout, console_log=console_log, reporter=rep)
    if as_json:
        print_json(res.as_dict())
    else:
        for c in res.checks:
            mark = "[green]ok[/]" if c.ok else "[red]FAILED[/]"
            console.print(f"{mark} {c.name}: {escape(c.detail)}")
        for name, value in res.times.items():  # rounded for people; --json has every digit
            shown = "-" if value is None else f"{human_ms(value)} ms" if name.endswith("_ms") else value
            console.print(f"  {name.removesuffix('_ms')}: {shown}", highlight=False)
        console.print(f"console log: {res.console_log}", soft_wrap=True)
    if not res.ok:
        sys.exit(1)


COMMANDS = [image]
