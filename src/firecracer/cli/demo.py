"""``firecracer demo``: the README's main command — the richest study this host allows.

Output leads with a short summary (what ran, where the page is, the numbers that matter); the tables
are behind ``--verbose`` or in the page, and ``--json`` prints ``{"mode", "host", "recordings", "view"}``.
"""

from __future__ import annotations

import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

import click

from firecracer.cli._render import console, err_console, print_json
from firecracer.demo import MODES, DemoResult


def _say(as_json: bool, text: str) -> None:
    """Human lines: stdout normally, stderr under --json (stdout is the JSON)."""
    (err_console if as_json else console).print(text, highlight=False)


@click.command()
@click.option("-o", "--output", "out", default="firecracer-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where results and pages go.")
@click.option("--mode", type=click.Choice(MODES),
              help="Force a mode (default: the richest this host supports).")
@click.option("--no-browser", is_flag=True, help="Write the pages and print their paths; open nothing.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"mode", "host", "recordings", "view", "report", "summary"} as JSON on stdout.')
@click.option("--verbose", is_flag=True, help="Also print the per-category tables of the main recording.")
@click.option("--firecracker", "firecracker", metavar="PATH", help="Firecracker binary to use.")
@click.pass_context
def demo(ctx: click.Context, out: Path, mode: str | None, no_browser: bool, as_json: bool, verbose: bool,
         firecracker: str | None) -> None:
    """Run the most complete study this host allows, and say which and why.

    \b
    jvm      the JVM image in Firecracker, restored through the uffd page server (KVM that boots Linux)
    jvm-lab  the same inside the lab (QEMU TCG, emulated SVM) where KVM cannot boot Linux guests
    probe    the probe-guest restore study in real Firecracker (any usable KVM, PVM-nested included)
    sample   the bundled real JVM recordings, analysed and viewed
    """
    from firecracer.demo import choose_mode

    choice = choose_mode(firecracker, mode)
    _say(as_json, f"[bold]firecracer demo: {choice.mode} mode[/] — {choice.why}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if choice.mode == "sample":
        result = _sample(out)
    elif choice.mode == "probe":
        result = _probe(ctx, out, firecracker, as_json)
    elif choice.mode == "jvm":
        result = _jvm(out, firecracker, as_json)
    else:
        result = _jvm_lab(out, firecracker, as_json)
    result.summary["wall_s"] = round(time.monotonic() - t0, 1)
    if as_json:
        print_json(result.as_json())
    else:
        _print_summary(result)
        if verbose and result.recordings:
            from firecracer.cli.analyze import analyze

            ctx.invoke(analyze, files=(result.recordings[0],), only=("owner_classes", "nmt_categories"))
    page = result.view or result.report
    if page is not None and not no_browser:
        webbrowser.open(page.resolve().as_uri())


def _progress(as_json: bool) -> Any:
    def on_event(e: Any) -> None:
        if e.kind == "variant":
            err_console.print(f"[dim]demo: preparing variant {e.variant} (boot, warm-up, collect, "
                              "snapshot)[/]", highlight=False)
        elif e.kind == "run" and e.run is not None:
            err_console.print(f"[dim]demo: restore {e.run.run_id}[/]", highlight=False)
        elif e.kind == "done" and e.record is not None and not e.record.ok:
            err_console.print(f"[red]demo: {e.record.run_id} failed: {e.record.reason}[/]", highlight=False)
    return on_event


def _jvm(out: Path, firecracker: str | None, as_json: bool) -> DemoResult:
    from firecracer.demo import run_jvm

    return run_jvm(out, firecracker, on_event=_progress(as_json))


def _jvm_lab(out: Path, firecracker: str | None, as_json: bool) -> DemoResult:
    from firecracer.demo import run_jvm_in_lab

    def put(data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    return run_jvm_in_lab(out, firecracker,
                          progress=lambda m: err_console.print(f"[dim]lab: {m}[/]", highlight=False),
                          stderr=put)


def _probe(ctx: click.Context, out: Path, firecracker: str | None, as_json: bool) -> DemoResult:
    from firecracer import host
    from firecracer.cli.experiment import report, run
    from firecracer.experiment.spec import example_spec_text

    spec = out / "probe-study.toml"
    spec.write_text(example_spec_text(repetitions=1))  # one repetition: the demo takes about a minute
    results = out / "results-probe"
    page = out / "probe-report.html"
    if as_json:  # the experiment commands print to stdout; keep it for the JSON
        with console.capture():
            ctx.invoke(run, spec_file=str(spec), out=str(results), firecracker=firecracker)
            ctx.invoke(report, results=str(results), out=str(page))
    else:
        ctx.invoke(run, spec_file=str(spec), out=str(results), firecracker=firecracker)
        ctx.invoke(report, results=str(results), out=str(page))
    recs = sorted(p for p in (results / "runs").glob("*") if (p / "trace.npz").exists())
    return DemoResult("probe", host.host_label(), recs, None, page, {"spec": str(spec)})


def _sample(out: Path) -> DemoResult:
    from firecracer import samples
    from firecracer.analysis import attribute, load_recording
    from firecracer.analysis.tables import totals
    from firecracer.errors import FirecracerError
    from firecracer.viz.html import ViewOptions, write_report

    names = samples.names()
    if not names:
        raise FirecracerError("this installation carries no sample recordings (src/firecracer/samples)")
    dirs = [samples.extract(n, out / "samples") for n in names[:2]]
    summary: dict[str, Any] = {"variants": {}}
    for name, d in zip(names, dirs, strict=False):
        src = samples.info(name)
        t = totals(attribute(load_recording(d)))
        summary["variants"][name] = {
            "source": src.source, "created": src.created, "host": src.host.get("label"),
            "ondemand": {"pages": t.get("restored_pages"), "mib": round(t.get("restored_kb", 0) / 1024, 1),
                         "faults": t.get("faults")},
            "attributed_pct": t.get("attributed_pct")}
    page = write_report([load_recording(d) for d in dirs], out / "sample-view.html",
                        ViewOptions(title="firecracer demo: bundled recordings"),
                        labels=list[str | None](names[:2]))
    return DemoResult("sample", "bundled recordings", dirs, page, None, summary)


def _print_summary(r: DemoResult) -> None:
    s = r.summary
    where = f" ({r.host})" if r.host else ""
    console.print(f"[bold]{r.mode} mode done[/]{where} in {s.get('wall_s', 0):.0f} s")
    if r.host.startswith("lab"):
        console.print("  timings are TCG timings (not comparable to KVM); page and fault counts are real")
    for name, v in s.get("variants", {}).items():
        od = v.get("ondemand")
        if od:
            line = (f"  {name}: first request after restore touched {od['pages']:,} pages "
                    f"({od['mib']:.1f} MiB), {od['faults']:,} faults")
            if v.get("attributed_pct") is not None:
                line += f", {v['attributed_pct']:.1f} % attributed"
            pf = v.get("prefetch")
            if pf:
                line += f"; prefetch: {pf['faults']:,} faults"
            console.print(line, highlight=False)
    for f in s.get("failed", []):
        console.print(f"  [red]failed[/] {f}", highlight=False)
    if r.view:
        console.print(f"  viewer: {r.view}", highlight=False)
    if r.report:
        console.print(f"  study report: {r.report}", highlight=False)
    if r.recordings:
        console.print(f"  recordings ({len(r.recordings)}): {r.recordings[0].parent}  "
                      f"(firecracer analyze DIR; firecracer view DIR)", highlight=False)


COMMANDS = [demo]
