"""``firecracer demo``: the README's main command — the richest study this host allows."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from firecracer.cli._render import console


@click.command()
@click.option("-o", "--output", "out", default="firecracer-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where results and pages go.")
@click.option("--mode", type=click.Choice(["jvm", "probe", "sample"]),
              help="Force a mode (default: the richest this host supports).")
@click.option("--no-browser", is_flag=True, help="Write the pages and print their paths; open nothing.")
@click.option("--firecracker", "firecracker", metavar="PATH", help="Firecracker binary to use.")
@click.pass_context
def demo(ctx: click.Context, out: Path, mode: str | None, no_browser: bool, firecracker: str | None) -> None:
    """Run the most complete study this host allows, and say which and why.

    \b
    jvm     the JVM image in Firecracker, restored through the uffd page server (bare-metal KVM + image)
    probe   the probe-guest restore study in real Firecracker (any usable KVM, PVM-nested included)
    sample  the bundled real JVM recordings (made with 'firecracer emulate'), analysed and viewed
    """
    from firecracer.demo import choose_mode

    choice = choose_mode(firecracker, mode)
    console.print(f"[bold]firecracer demo: {choice.mode} mode[/] — {choice.why}")
    out.mkdir(parents=True, exist_ok=True)
    page = _sample(ctx, out) if choice.mode == "sample" else _study(ctx, out, choice.mode, firecracker)
    console.print(f"[bold]{choice.mode} mode done[/]: open {page}")
    if not no_browser:
        webbrowser.open(page.resolve().as_uri())


def _study(ctx: click.Context, out: Path, mode: str, firecracker: str | None) -> Path:
    from firecracer.cli.experiment import report, run
    from firecracer.demo import write_jvm_spec
    from firecracer.experiment.spec import example_spec_text

    spec = out / f"{mode}-study.toml"
    if mode == "jvm":
        write_jvm_spec(spec)
    else:  # the bundled probe study, one repetition so the demo takes about a minute
        spec.write_text(example_spec_text(repetitions=1))
    console.print(f"study spec: {spec} (results resume if you run the demo again)")
    results = out / f"results-{mode}"
    ctx.invoke(run, spec_file=str(spec), out=str(results), firecracker=firecracker)
    page = out / f"{mode}-report.html"
    ctx.invoke(report, results=str(results), out=str(page))
    return page


def _sample(ctx: click.Context, out: Path) -> Path:
    from firecracer.cli.analyze import analyze
    from firecracer.cli.view import view
    from firecracer.emulate import samples
    from firecracer.errors import FirecracerError

    names = samples.names()
    if not names:
        raise FirecracerError("this installation carries no sample recordings (src/firecracer/samples)")
    dirs = [samples.extract(n, out / "samples") for n in names[:2]]
    for name, d in zip(names, dirs, strict=False):
        src = samples.info(name)
        console.print(f"sample {name}: recorded by {src.get('source', '?')} on {src.get('created', '?')} "
                      f"({src.get('note') or 'real recording'}) → {d}")
    compare_with = dirs[1] if len(dirs) > 1 else None
    ctx.invoke(analyze, files=(dirs[0],), compare_with=compare_with)
    page = out / "sample-view.html"
    ctx.invoke(view, files=(dirs[0],), compare_with=compare_with, output=page)
    return page


COMMANDS = [demo]
