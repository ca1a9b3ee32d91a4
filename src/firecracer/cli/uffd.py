"""``firecracer uffd``: the userfaultfd page server and its traces."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from firecracer.cli._render import console, err_console, human_bytes, human_ms, print_json, print_table
from firecracer.errors import FirecracerError

if TYPE_CHECKING:
    from firecracer.uffd.metrics import ServerMetrics


@click.group()
def uffd() -> None:
    """Serve a restoring microVM's page faults and record them."""


@uffd.command()
@click.argument("socket_path", metavar="SOCKET", type=click.Path(dir_okay=False))
@click.argument("mem_file", metavar="MEMFILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--strategy", "-s", default="ondemand", show_default=True,
              help="ondemand | fault-around:N | prefetch:TRACE | prefetch-background:TRACE | eager")
@click.option("--trace", "trace_out", type=click.Path(dir_okay=False), help="Write trace.npz here "
              "(and, for ondemand/fault-around, the working-set file TRACE.ws that prefetch replays).")
@click.option("--no-working-set", is_flag=True, help="Do not write TRACE.ws (no prefetch run will use it; "
              "'uffd working-set' or prefetch:TRACE builds it later from the trace and the memory file).")
@click.option("--metrics", "metrics_out", type=click.Path(dir_okay=False), help="Write metrics JSON here.")
@click.option("--sessions", default=1, show_default=True, type=click.IntRange(min=0),
              help="Hand-offs to serve before exiting (0: until SIGTERM/SIGINT).")
@click.option("--accept-timeout", type=float, default=None,
              help="Fail if Firecracker has not connected within this many seconds (default: wait).")
@click.option("--handshake-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the hand-off message after a connection.")
@click.option("--populate", is_flag=True, help="Read the whole memory file up front (MAP_POPULATE).")
@click.option("--mem-id", metavar="ID", help="Id of the snapshot MEMFILE belongs to (default: from the "
              "snapshot.json beside it); recorded in traces, checked by prefetch.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics JSON on stdout at exit.")
@click.option("--quiet", "-q", is_flag=True, help="No table at exit (the ready line is still printed).")
def serve(socket_path: str, mem_file: str, strategy: str, trace_out: str | None, metrics_out: str | None,
          no_working_set: bool, sessions: int, accept_timeout: float | None, handshake_timeout: float,
          populate: bool, mem_id: str | None, as_json: bool, quiet: bool) -> None:
    """Serve page faults from MEMFILE to the Firecracker that connects to SOCKET.

    MEMFILE is a snapshot's raw memory file or its compressed mem.fcz ('vm compress'): frames are then
    decompressed as faults need them.

    Prints "firecracer uffd: listening on SOCKET" to stderr once listening. Exits 0 after the
    sessions ended (Firecracker exited); non-zero on a fatal error, after killing Firecracker so it
    never hangs on a fault. Options may come before or after SOCKET MEMFILE.
    """
    from firecracer.uffd.metrics import ServerMetrics
    from firecracer.uffd.server import Server

    level = logging.INFO if os.environ.get("FIRECRACER_UFFD_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, format="firecracer uffd: %(message)s", stream=sys.stderr)
    server = Server(socket_path, mem_file, strategy, trace_out=trace_out, max_sessions=sessions,
                    accept_timeout=accept_timeout, handshake_timeout=handshake_timeout, populate=populate,
                    metrics_out=metrics_out, write_ws=not no_working_set, mem_id=mem_id)
    try:
        server.listen()

        def _stop(signum: int, _frame: object) -> None:
            server.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        sys.stderr.write(f"firecracer uffd: listening on {socket_path} (pid {os.getpid()}, "
                         f"strategy {server.strategy})\n")
        sys.stderr.flush()
        result = server.serve()
    finally:
        server.close()
    metrics = ServerMetrics.from_dict(result.metrics())  # --metrics was written by the server already
    if as_json:
        print_json(metrics.to_dict())
    elif not quiet and metrics.sessions:
        print_table(metrics_table(metrics))
        from firecracer.cli._faults import taxonomy_table

        tx = taxonomy_table([(f"session {s.session}", s.extra.get("fault_taxonomy") or {})
                             for s in metrics.sessions])
        if tx is not None:
            print_table(tx)
    elif not quiet and result.ok:  # stopped before any hand-off: no table of nothing
        err_console.print("firecracer uffd: stopped; no Firecracker connected, nothing was served",
                          highlight=False)
    if not result.ok:
        raise FirecracerError(f"uffd serve: {metrics.error}")


def metrics_table(metrics: ServerMetrics) -> Table:
    """One row per session: faults, pages by action, bytes, latency percentiles."""
    t = Table(title="uffd page server", show_lines=False)
    for col in ("session", "strategy", "faults", "load", "zero", "around", "prefetch", "eager", "served",
                "p50 µs", "p90 µs", "p99 µs", "last fault ms", "ended"):
        t.add_column(col, justify="right" if col not in ("strategy", "ended") else "left")
    for s in metrics.sessions:
        lat, pages = s.latency_us, s.pages
        t.add_row(str(s.session), s.strategy, str(s.faults), *(str(pages.get(a, 0)) for a in
                  ("load", "zero", "around", "prefetch", "eager")), human_bytes(s.bytes_served),
                  str(lat.get("p50", "-")), str(lat.get("p90", "-")), str(lat.get("p99", "-")),
                  human_ms(s.handshake_to_last_fault_ms or 0.0), s.error or s.ended or "")
    return t


@uffd.command("export-seed")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Log file to write.")
@click.option("--with-tid", is_flag=True, help="The seed's newer format (thread id; the original "
              "UffdVisualizer cannot read it).")
@click.option("--address", type=click.Choice(["gpa", "file_off"]), default="gpa", show_default=True,
              help="Which address goes into the guest range field.")
def export_seed(trace: str, output: str, with_tid: bool, address: str) -> None:
    """Write TRACE (trace.npz) as a seed uffd_handler log, readable by the original UffdVisualizer."""
    from firecracer.uffd.trace import export_seed_log, load_trace

    tr = load_trace(trace)
    export_seed_log(tr, output, with_tid=with_tid, address=address)
    console.print(f"wrote {len(tr)} page lines to {output}", highlight=False)


@uffd.command("import-seed")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="trace.npz to write.")
@click.option("--page-size", type=int, default=4096, show_default=True)
@click.option("--mem-bytes", type=int, default=None, help="Guest RAM size for gpa conversion "
              "(default: from the log's region lines).")
@click.option("--address", type=click.Choice(["gpa", "file_off"]), default="file_off", show_default=True,
              help="What the log's guest range holds (the seed handler printed file offsets).")
def import_seed(log: str, output: str, page_size: int, mem_bytes: int | None, address: str) -> None:
    """Read a seed uffd_handler LOG (with or without thread ids) into a trace.npz."""
    from firecracer.uffd.trace import import_seed_log, save_trace

    tr = import_seed_log(log, page_size=page_size, mem_bytes=mem_bytes, address=address)
    save_trace(tr, output)
    console.print(f"imported {len(tr)} faults ({tr.meta['seed_format']} format) into {output}",
                  highlight=False)


@uffd.command("working-set")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False))
@click.argument("mem_file", metavar="MEMFILE", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Default: TRACE with suffix .ws.")
@click.option("--mem-id", metavar="ID", help="Id of the snapshot MEMFILE belongs to (default: from the "
              "snapshot.json beside it).")
@click.option("--force", is_flag=True, help="Replace an existing working-set file.")
@click.option("--order", type=click.Choice(["runs", "touch", "file"]), default="runs", show_default=True,
              help="Loading order: runs of file-adjacent pages by first touch, first touch page by page "
                   "(REAP), or memory-file offset (prefetch@ORDER:TRACE uses the matching file).")
def working_set(trace: str, mem_file: str, output: str | None, mem_id: str | None, force: bool,
                order: str) -> None:
    """Build the working-set file prefetch:TRACE installs (its loading set, in loading order).

    Refuses a MEMFILE other than the one TRACE was recorded on (its snapshot id or size differ), and an
    existing output file unless --force.
    """
    from firecracer.uffd.workingset import WorkingSet, write_working_set, ws_path_for
    from firecracer.uffd.zsource import open_memory

    out = Path(output) if output else ws_path_for(trace, order)
    if (out.exists() or out.is_symlink()) and not force:
        raise FirecracerError(f"{out} exists; pass --force to replace it")
    with open_memory(mem_file, mem_id=mem_id) as mem:
        write_working_set(trace, mem, out, order=order)
    ws = WorkingSet(out, populate=False)
    info = ws.describe()
    ws.close()
    ps = int(info["page_size"])
    size = f"{ps >> 20} MiB" if ps >= 1 << 20 else f"{ps >> 10} KiB"
    console.print(f"wrote {out}: {info['pages']:,} pages of {size} in "
                  f"{info['runs']:,} runs (loading order: {info['order']}), "
                  f"{info['stored_blocks']:,} 4 KiB blocks stored, {human_bytes(info['bytes'])}",
                  highlight=False)


@uffd.command()
@click.argument("trace", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(trace: str, as_json: bool) -> None:
    """Summarise a trace.npz: rows per action, faults, pages, time span."""
    from firecracer.uffd.trace import FLAG_FAULTING, load_trace

    tr = load_trace(trace)
    data = {"rows": len(tr), "strategy": tr.strategy, "page_size": tr.page_size,
            "faulting_pages": int(((tr.flags & FLAG_FAULTING) != 0).sum()),
            "working_set": int(tr.working_set().size), "actions": tr.action_counts(),
            "span_ms": round(float(tr.t_ns.max()) / 1e6, 3) if len(tr) else 0.0,
            "events": tr.meta.get("events", {}), "regions": len(tr.regions)}
    if as_json:
        print_json(data)
    else:  # the result on stdout, rounded for people (--json has every digit)
        t = Table(title=str(trace), show_header=False)
        for k, v in data.items():
            if k == "span_ms":
                t.add_row("span", f"{human_ms(float(v))} ms")
            elif isinstance(v, dict):
                t.add_row(k, "  ".join(f"{a}={b:,}" if isinstance(b, int) else f"{a}={b}"
                                       for a, b in v.items()) or "-")
            else:
                t.add_row(k, f"{v:,}" if isinstance(v, int) and k != "page_size" else str(v))
        print_table(t)


COMMANDS = [uffd]
