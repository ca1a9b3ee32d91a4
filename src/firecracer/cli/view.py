"""``firecracer view``: the self-contained HTML viewer (and PNG exports) for a recording."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from firecracer.cli._render import console, human_bytes

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """``1073741824``, ``1G``, ``512MiB`` → bytes (powers of 1024, as the seed's physicalMemory)."""
    m = _SIZE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 1G, 512M, 1073741824)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def _geometry(text: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)x(\d+)$", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT")
    return int(m.group(1)), int(m.group(2))


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--seed", is_flag=True,
              help="FILES are the seed's MEMMAP UFFDLOG [NMT] (as the original UffdVisualizer takes them).")
@click.option("--compare", "compare_with", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A second recording, shown side by side with synchronised selection and zoom.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write [default: ./NAME.html after the recording (NAME-vs-B.html with "
                   "--compare), ./report.html for --seed; the recording itself is never written to].")
@click.option("--scale", default=2.0, show_default=True, type=click.FloatRange(0.125, 64),
              help="Pixels per page at first (seed: uffdVisualizer.scale); below 1, each pixel shows "
                   "the most telling of its pages.")
@click.option("--width", default=512, show_default=True, type=click.IntRange(16, 1 << 16),
              help="Pages per row (seed: uffdVisualizer.width).")
@click.option("--phys-mem", "phys_mem", metavar="SIZE",
              help="Physical memory shown, e.g. 1G (seed: uffdVisualizer.physicalMemory) "
                   "[default: the guest's RAM].")
@click.option("--label", "labels", multiple=True, help="Name for the recording(s), in order.")
@click.option("--select", "select", metavar="KEY",
              help="Tree node selected at load, e.g. 'nmtcat|Java Heap' (default: the kernel, as the seed).")
@click.option("--at-end/--at-start", "at_end", default=True, show_default=True,
              help="Open with the whole restore drawn (Play animates it from the first fault), or with no "
                   "restored page drawn yet.")
@click.option("--png", "png_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the physical view as PNG (Pillow) and OUT-categories.png, the restore chart.")
@click.option("--png-category", metavar="NMT_CATEGORY",
              help="In the PNG, highlight this NMT category of the JVM instead of the whole JVM.")
@click.option("--screenshot", type=click.Path(dir_okay=False, path_type=Path),
              help="Also render the page in headless Chromium and save a PNG screenshot of it.")
@click.option("--screenshot-size", default="1400x900", show_default=True, help="Screenshot viewport WxH.")
@click.option("--screenshot-hover", metavar="ADDR",
              help="Before the screenshot, hover the physical page at ADDR (e.g. 0x26ff25000) to show "
                   "its owners.")
@click.option("--color", "colors", multiple=True, metavar="NAME=#RRGGBB",
              help="Override a colour (seed: uffdVisualizer.*Color), e.g. loadsel=#ff8800; names: "
                   "background memory kernel pagecache free traceonly shared selected selshared loadsel load "
                   "nomap outside.")
@click.option("--serve", is_flag=True, help="Serve the report on 127.0.0.1 until Ctrl-C.")
@click.option("--port", default=0, show_default=True, help="Port for --serve (0: any free port).")
def view(files: tuple[Path, ...], seed: bool, compare_with: Path | None, output: Path | None, scale: float,
         width: int, phys_mem: str | None, labels: tuple[str, ...], select: str | None, at_end: bool,
         png_out: Path | None, png_category: str | None, screenshot: Path | None, screenshot_size: str,
         screenshot_hover: str | None,
         colors: tuple[str, ...], serve: bool, port: int) -> None:
    """Write (or serve) the interactive physical-memory viewer for a RECORDING.

    \b
    firecracer view RECORDING [--compare RECORDING_B] [-o report.html] [--serve] [--png OUT.png]
    firecracer view --seed MEMMAP UFFDLOG [NMT] [-o report.html]
    """
    from firecracer.analysis import assemble_from_seed, load_recording
    from firecracer.viz.html import ViewOptions, build_report, save_html
    from firecracer.viz.png import PALETTE

    if seed:
        if len(files) not in (2, 3):
            raise click.UsageError("--seed takes MEMMAP UFFDLOG [NMT]")
        rec = assemble_from_seed(files[0], files[1], files[2] if len(files) == 3 else None)
        default_out = Path("report.html")
    else:
        if len(files) != 1 or not files[0].is_dir():
            raise click.UsageError("give one RECORDING directory (or --seed MEMMAP UFFDLOG [NMT])")
        rec = load_recording(files[0])
        default_out = Path(f"{files[0].resolve().name}.html")
    recs = [rec]
    if compare_with is not None:
        recs.append(load_recording(compare_with))
        if not seed:
            default_out = Path(f"{files[0].resolve().name}-vs-{compare_with.resolve().name}.html")
    if len(labels) > len(recs):
        raise click.UsageError(f"{len(labels)} --label values for {len(recs)} recording(s)")
    phys = parse_size(phys_mem) if phys_mem else None
    cmap: dict[str, str] = {}
    for c in colors:
        name, _, val = c.partition("=")
        if name not in PALETTE or not re.fullmatch(r"#[0-9a-fA-F]{6}", val):
            raise click.BadParameter(f"{c!r}: want NAME=#RRGGBB with NAME in {', '.join(PALETTE)}",
                                     param_hint="--color")
        cmap[name] = val.lower()
    opts = ViewOptions(scale=scale, width=width, phys_bytes=phys, select=select,
                       position="end" if at_end else "start", colors=cmap)
    out = output or default_out
    t0 = time.monotonic()
    lab_list: list[str | None] = [*labels, *([None] * (len(recs) - len(labels)))]
    rep = build_report(recs, opts, lab_list)
    path = save_html(rep.html, out)
    for pk in rep.packs:   # the original UffdVisualizer's console summary, per recording
        t, kib = pk.meta["totals"], pk.meta["page_size"] // 1024
        console.print(f"{pk.meta['label']}: {t['physical_pages']:,} physical pages, {t['processes']} owners; "
                      f"{t['uffd_events']:,} uffd events ({t['pages_loaded']:,} pages / "
                      f"{t['pages_loaded'] * kib:,} kB loaded, {t['pages_zeroed']:,} pages / "
                      f"{t['pages_zeroed'] * kib:,} kB zeroed); {t['nmt_regions']} NMT regions"
                      + (f" of JVM {t['nmt_pid']}" if t.get("nmt_pid") is not None else ""),
                      markup=False, highlight=False)
    console.print(f"wrote {path} ({human_bytes(path.stat().st_size)}) in {time.monotonic() - t0:.1f} s",
                  highlight=False)
    if png_out is not None:
        from firecracer.viz.png import write_pngs

        for p in write_pngs(rep.atts[0], png_out, width=width, scale=max(1, round(scale)), phys_bytes=phys,
                            nmt_category=png_category):
            console.print(f"wrote {p}")
    if screenshot is not None:
        from firecracer.viz.browser import Browser

        w, h = _geometry(screenshot_size)
        with Browser(width=w, height=h) as b:
            b.open(path.resolve().as_uri())
            b.wait_for("window.FC && ((FC.ready && FC.detailReady) || FC.error)", timeout=120)
            err = b.evaluate("FC.error")
            if err:
                raise click.ClickException(f"the page failed in Chromium: {err}")
            if screenshot_hover is not None:
                try:
                    page = int(screenshot_hover, 0) // rep.packs[0].meta["page_size"]
                except ValueError as exc:
                    raise click.BadParameter(f"{screenshot_hover!r} is not an address",
                                             param_hint="--screenshot-hover") from exc
                xy = b.evaluate(f"FC.slotToClient(0, {page})")
                b.mouse("mouseMoved", xy["x"], xy["y"])
                b.wait_for("document.getElementById('tip').style.display === 'block'", timeout=10)
            b.screenshot(screenshot)
        console.print(f"wrote {screenshot}")
    if serve:
        from firecracer.viz.serve import ReportServer

        with ReportServer(path, port=port) as srv:
            console.print(f"serving {srv.url}  (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("stopped")


COMMANDS = [view]
