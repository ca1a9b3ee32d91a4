"""``firecracer vm``: Firecracker microVM lifecycle from the shell.

VMs outlive the command that started them: each lives in ``state_dir()/vms/NAME`` (API socket,
serial log and input FIFO, Firecracker log, metrics, ``vm.json``), which ``vm ls`` lists, watched by
a supervisor (``firecracer.vmm.supervisor``). VMs started by other commands (experiments, selftest)
live there too while they run. ``vm ls --all`` also lists dead ones; ``vm prune`` removes them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from firecracer.cli._render import console, err_console, human_ms, print_json, print_table, timings_text
from firecracer.errors import FirecracerError
from firecracer.paths import state_dir
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.lifeline import alive, kill_all, processes_by_run_dir, processes_in
from firecracer.vmm.machine import DEFAULT_BOOT_ARGS, MicroVM, VMConfig
from firecracer.vmm.process import socket_in_use
from firecracer.vmm.record import VmRecord
from firecracer.vmm.vsock import vsock_http


@click.group()
def vm() -> None:
    """Boot, snapshot, restore and drive Firecracker microVMs."""
    term_runs_cleanup()


def term_runs_cleanup() -> None:
    """Make SIGTERM unwind like Ctrl-C, so context managers kill what a half-done command started."""
    import signal
    import threading

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit)


def _fc_option(f: Any) -> Any:
    return click.option("--firecracker", "firecracker", type=click.Path(dir_okay=False),
                        help="Firecracker binary (default: $FIRECRACKER, the cache, PATH).")(f)


def _summary(m: MicroVM) -> dict[str, Any]:
    rec = m.record().to_dict()
    keys = ("name", "state", "pid", "firecracker_version", "api_sock", "vsock", "serial_log", "netns",
            "page_server_pid", "timings_ms")
    return {k: rec[k] for k in keys}


def _show(m: MicroVM, as_json: bool) -> None:
    s = _summary(m)
    if as_json:
        print_json(s)
        return
    for k, v in s.items():
        if k == "timings_ms" and isinstance(v, dict):  # rounded for people; --json has every digit
            console.print(f"[bold]timings[/bold]: {timings_text(v)}", highlight=False)
        elif v is not None:
            console.print(f"[bold]{k}[/bold]: {v}", highlight=False)


@vm.command()
@click.option("--name", help="VM name (default: vm-<random>).")
@_fc_option
@click.option("--kernel", type=click.Path(dir_okay=False), help="Guest kernel (vmlinux ELF).")
@click.option("--probe", is_flag=True, help="Boot the probe guest instead of a kernel (see docs/vmm.md).")
@click.option("--replay", type=click.Path(dir_okay=False, exists=True),
              help="With --probe: walk the faulting pages of this trace.npz, in first-fault order.")
@click.option("--replay-limit", type=click.IntRange(1), help="Replay only the first N faulting pages.")
@click.option("--rootfs", type=click.Path(dir_okay=False), help="Root file system image.")
@click.option("--rw", is_flag=True, help="Attach the root file system read-write (default read-only).")
@click.option("--drive", "drives", multiple=True, metavar="FILE[:ro]",
              help="Another block device (vdb, vdc … in order), e.g. a CRIU scratch drive "
                   "('firecracer crac scratch'); ':ro' attaches it read-only.")
@click.option("--boot-args", default=DEFAULT_BOOT_ARGS, show_default=True)
@click.option("--vcpus", default=1, show_default=True, type=click.IntRange(1, 32))
@click.option("--mem", "mem_mib", default=128, show_default=True, type=click.IntRange(16), help="MiB.")
@click.option("--track-dirty-pages", is_flag=True, help="Needed for Diff snapshots.")
@click.option("--huge-pages", type=click.Choice(["None", "2M"]), default=None,
              help="2M: back guest memory with 2 MiB hugetlbfs pages (needs free pages in the host's pool, "
                   "see 'firecracer doctor'; snapshots then restore only with --uffd).")
@click.option("--net", is_flag=True, help="Tap networking in a per-VM network namespace (root).")
@click.option("--no-vsock", is_flag=True, help="Do not attach a vsock device.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Recorded into snapshot.json.")
@click.option("--json", "as_json", is_flag=True)
def boot(name: str | None, firecracker: str | None, kernel: str | None, probe: bool, replay: str | None,
         replay_limit: int | None, rootfs: str | None, rw: bool, boot_args: str, vcpus: int, mem_mib: int,
         track_dirty_pages: bool, huge_pages: str | None, net: bool, no_vsock: bool, labels: tuple[str, ...],
         as_json: bool, drives: tuple[str, ...] = ()) -> None:
    """Boot a microVM and leave it running (see 'vm ls', 'vm kill')."""
    extra = []
    for d in drives:
        path, ro = (d[:-3], True) if d.endswith(":ro") else (d, False)
        if not Path(path).is_file():
            raise click.UsageError(f"--drive {d}: {path} is not a file")
        extra.append({"path": str(Path(path).resolve()), "read_only": ro})
    if probe == (kernel is not None):
        raise click.UsageError("give exactly one of --kernel or --probe")
    if replay and not probe:
        raise click.UsageError("--replay needs --probe")
    if probe:
        from firecracer.vmm.probe import build_probe, min_mem_mib, probe_info
        from firecracer.vmm.selftest import FILL, TRACE

        if replay:
            from firecracer.vmm.probe.replay import replay_pages

            trace, fill = replay_pages(replay, limit=replay_limit)
            kernel = str(build_probe(trace, fill, skip_reserved=True))
        else:
            kernel = str(build_probe(TRACE, FILL))
        mem_mib = max(mem_mib, min_mem_mib(probe_info(kernel).max_page))
        boot_args = "console=ttyS0"
        if huge_pages == "2M":
            mem_mib += mem_mib % 2
    if huge_pages == "2M" and mem_mib % 2:
        raise click.UsageError(f"--mem {mem_mib}: with --huge-pages 2M guest memory must be a multiple of "
                               "2 MiB")
    assert kernel is not None
    lab: dict[str, Any] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--label {item!r}: expected KEY=VALUE")
        lab[key] = value
    if not probe:
        from firecracer.image.manifest import with_image_init

        boot_args = with_image_init(boot_args, rootfs)
    config = VMConfig(kernel=kernel, boot_args=boot_args, rootfs=rootfs, rootfs_read_only=not rw,
                      vcpu_count=vcpus, mem_size_mib=mem_mib, track_dirty_pages=track_dirty_pages,
                      huge_pages=huge_pages, vsock_cid=None if no_vsock else 3, network=net, labels=lab,
                      drives=extra)
    m = MicroVM(firecracker, name=name, lifeline=False)
    with m:
        m.boot(config)
        m.detach()
    _show(m, as_json)


def _records() -> list[dict[str, Any]]:
    """Every run directory, with its state as the processes say (not only as ``vm.json`` last said).

    ``state`` is ``vm.json``'s while Firecracker runs, except ``broken`` (its page server is gone: the
    guest hangs on its next fault) and ``orphaned`` (the command starting it died before handing it
    over); ``leftover`` when Firecracker is gone but something started for it still runs; else
    ``dead``. ``processes`` lists every pid still running for the directory.
    """
    root = state_dir() / "vms"
    procs = processes_by_run_dir()
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir():
            continue
        found = VmRecord.find(d)
        vr = found or VmRecord(name=d.name, run_dir=str(d))
        fc = alive(vr.pid, vr.pid_start)
        ps = alive(vr.page_server_pid, vr.page_server_start)
        owner_alive = vr.owner is not None and alive(*vr.owner)
        rec = vr.to_dict()
        if vr.name not in ("", d.name):  # copied or hand-edited: the directory is what we act on
            rec["record_name"] = vr.name
        rec["name"] = d.name
        running = sorted(procs.get(os.path.realpath(d), []))
        if fc:
            if vr.page_server_pid and not ps:
                rec["state"], rec["dead_reason"] = "broken", "its page server is gone"
            elif not vr.detached and not vr.lifeline and not owner_alive:
                rec["state"] = "orphaned"
        elif running:
            rec["state"] = "leftover"
        else:
            rec["state"] = "dead"
        rec["processes"] = running
        rec["api_live"] = fc and socket_in_use(d / "api.sock")
        try:
            rec["age_s"] = round(time.time() - (d / "vm.json").stat().st_mtime, 1)
        except OSError:
            rec["age_s"] = round(time.time() - d.stat().st_mtime, 1)
        out.append(rec)
    return out


@vm.command(name="ls")
@click.option("--all", "show_all", is_flag=True,
              help="Include dead VMs whose run directory still exists (their logs; see 'vm prune').")
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(show_all: bool, as_json: bool) -> None:
    """List microVMs in the state directory ($FIRECRACER_STATE/vms) with their sockets."""
    every = _records()
    recs = [r for r in every if show_all or r["state"] != "dead"]
    if as_json:
        print_json(recs)
        return
    if not recs:
        console.print(f"no VMs in {state_dir() / 'vms'}"
                      + ("" if show_all else " (--all lists dead ones too)"))
        return
    t = Table("name", "state", "pid", "firecracker")
    for col in ("api socket", "vsock", "restored from"):  # paths fold inside their column
        t.add_column(col, overflow="fold", max_width=48)
    t.add_column("purpose / why", overflow="fold", max_width=60)
    for r in recs:
        why = r.get("dead_reason") if r["state"] in ("dead", "broken", "leftover", "orphaned") else None
        name = r["name"] + (f" (its vm.json says {r['record_name']})" if r.get("record_name") else "")
        t.add_row(name, r["state"], str(r.get("pid") or "-"), str(r.get("firecracker_version") or "-"),
                  r.get("api_sock") or "-", r.get("vsock") or "-", r.get("restored_from") or "-",
                  str(why or r.get("purpose") or ""))
    print_table(t)
    dead = len(every) - len(recs)
    if dead:
        err_console.print(f"{dead} dead VM run directories not shown (vm ls --all; vm prune)")


@vm.command()
@click.argument("name")
def pause(name: str) -> None:
    """Pause a running microVM."""
    MicroVM.attach(name).pause()


@vm.command()
@click.argument("name")
def resume(name: str) -> None:
    """Resume a paused microVM."""
    MicroVM.attach(name).resume()


def _compress_options(f: Any) -> Any:
    f = click.option("--keep-raw", is_flag=True, help="Keep the uncompressed mem too (File restores work "
                     "without 'vm decompress'; the disk space is not saved).")(f)
    f = click.option("--frame-kib", default=16, show_default=True, type=click.IntRange(4, 65536),
                     help="Uncompressed KiB per zstd frame (a power of two): what one fault decompresses.")(f)
    return click.option("--level", default=3, show_default=True, type=click.IntRange(1, 22),
                        help="zstd compression level.")(f)


def _say_compressed(snap: Any) -> None:
    rec = snap.compressed or {}
    mib = 2**20
    raw = "mem kept" if rec.get("raw_kept") else "mem removed ('firecracer vm decompress' brings it back)"
    err_console.print(f"compressed {snap.dir}/{rec.get('file')}: {rec['compressed_bytes'] / mib:.1f} MiB for "
                      f"{rec['data_bytes'] / mib:.1f} MiB of data in {rec['size'] / mib:.0f} MiB of memory "
                      f"(ratio {rec['ratio']:.2f}, {rec['frame_size'] >> 10} KiB frames, level "
                      f"{rec['level']}, {human_ms(rec['compress_ms'])} ms); {raw}; restore with --uffd",
                      highlight=False)


@vm.command()
@click.argument("snapshot_dir", type=click.Path(file_okay=False, exists=True))
@_compress_options
@click.option("--json", "as_json", is_flag=True)
def compress(snapshot_dir: str, level: int, frame_kib: int, keep_raw: bool, as_json: bool) -> None:
    """Compress a Full snapshot's memory into SNAPSHOT_DIR/mem.fcz: independently decompressible zstd
    frames with an index, served by 'uffd serve' and 'vm restore --uffd' (every strategy but the File
    backend). Verified by decompressing it before mem is removed."""
    from firecracer.vmm.snapshot import Snapshot, compress_snapshot

    if frame_kib & (frame_kib - 1):
        raise click.UsageError(f"--frame-kib {frame_kib}: must be a power of two")
    snap = compress_snapshot(Snapshot.load(snapshot_dir), level=level, frame_size=frame_kib << 10,
                             keep_raw=keep_raw)
    if as_json:
        print_json(snap.compressed)
        return
    _say_compressed(snap)


@vm.command()
@click.argument("snapshot_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--keep-compressed", is_flag=True, help="Keep mem.fcz and its record too.")
def decompress(snapshot_dir: str, keep_compressed: bool) -> None:
    """Write SNAPSHOT_DIR/mem back from mem.fcz (sparse; its SHA-256 checked), so File restores work."""
    from firecracer.vmm.snapshot import Snapshot, decompress_snapshot

    snap = decompress_snapshot(Snapshot.load(snapshot_dir), keep_compressed=keep_compressed)
    console.print(f"{snap.mem_file}: {snap.mem['size'] / 2**20:.0f} MiB restored from mem.fcz"
                  + ("" if keep_compressed else "; mem.fcz removed"), highlight=False)


@vm.command()
@click.argument("name")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--diff", is_flag=True, help="Diff snapshot (pages dirtied since the last snapshot).")
@click.option("--punch-holes", is_flag=True, help="Deallocate all-zero pages of the memory file.")
@click.option("--resume", "resume_after", is_flag=True,
              help="Resume afterwards (default: stays paused). A snapshot that fails or is interrupted "
                   "always resumes a VM it paused; pause it first ('vm pause') to keep it paused whatever "
                   "happens.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--compress", is_flag=True, help="Then compress the memory file into mem.fcz (zstd frames; "
              "restore with --uffd) and remove mem, as 'vm compress' does.")
@_compress_options
@click.option("--json", "as_json", is_flag=True)
def snapshot(name: str, dest: str, diff: bool, punch_holes: bool, resume_after: bool, labels: tuple[str, ...],
             as_json: bool, compress: bool = False, level: int = 3, frame_kib: int = 16,
             keep_raw: bool = False) -> None:
    """Snapshot microVM NAME into directory DEST (vmstate, mem, snapshot.json)."""
    if compress and diff:
        raise click.UsageError("--compress takes Full snapshots only (a Diff's memory is its dirty pages)")
    if frame_kib & (frame_kib - 1):
        raise click.UsageError(f"--frame-kib {frame_kib}: must be a power of two")
    m = MicroVM.attach(name)
    lab = dict(item.partition("=")[::2] for item in labels)
    snap = m.snapshot(dest, SnapshotType.DIFF if diff else SnapshotType.FULL, punch_holes=punch_holes,
                      resume=resume_after, labels=lab)
    if compress:
        from firecracer.vmm.snapshot import compress_snapshot

        snap = compress_snapshot(snap, level=level, frame_size=frame_kib << 10, keep_raw=keep_raw)
        _say_compressed(snap)
    if as_json:
        print_json(snap.to_json())
        return
    mib = 2**20
    huge = ", 2 MiB pages: restore with --uffd" if snap.vm.get("huge_pages") == "2M" else ""
    console.print(f"{snap.type.value} snapshot of {name} in {snap.dir} (Firecracker "
                  f"{snap.firecracker_version}, format {snap.snapshot_format}, create "
                  f"{human_ms(snap.timings_ms['create'])} ms, mem {snap.mem['allocated_bytes'] / mib:.1f} of "
                  f"{snap.mem['size'] / mib:.0f} MiB allocated{huge}); {name} is "
                  + ("running" if m.state == "running" else f"{m.state} ('firecracer vm resume {name}')"),
                  highlight=False)


@vm.command()
@click.argument("snapshot_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--name", help="Name of the restored VM (default: vm-<random>).")
@_fc_option
@click.option("--uffd", is_flag=True, help="Uffd backend: serve memory with 'firecracer uffd serve'.")
@click.option("--strategy", help="Page-server strategy (with --uffd); without --uffd: readahead:TRACE or "
              "readahead-background:TRACE (the File backend with TRACE's working set read into the host page "
              "cache before the load, or racing the vCPUs).")
@click.option("--trace", type=click.Path(dir_okay=False), help="Page-server trace output (with --uffd).")
@click.option("--paused", is_flag=True, help="Stay paused after loading.")
@click.option("--track-dirty-pages", is_flag=True, help="Enable dirty tracking (for later Diff snapshots).")
@click.option("--compressed", is_flag=True, help="With --uffd: serve the compressed memory file (mem.fcz) "
              "even when the raw one was kept ('vm compress --keep-raw').")
@click.option("--json", "as_json", is_flag=True)
def restore(snapshot_dir: str, name: str | None, firecracker: str | None, uffd: bool, strategy: str | None,
            trace: str | None, paused: bool, track_dirty_pages: bool, compressed: bool,
            as_json: bool) -> None:
    """Restore a snapshot directory into a new microVM and leave it running."""
    from firecracer.vmm.readahead import Readahead

    readahead = Readahead.parse(strategy) if strategy else None
    if readahead is not None:
        if uffd or trace:
            raise click.UsageError(f"{strategy} restores with the File backend: without --uffd and --trace")
        strategy = None
    elif not uffd and (strategy or trace):
        raise click.UsageError("--strategy and --trace need --uffd (or --strategy readahead:TRACE)")
    m = MicroVM.restore(snapshot_dir, firecracker=firecracker, name=name,
                        backend=MemBackend.UFFD if uffd else MemBackend.FILE, resume=not paused,
                        track_dirty_pages=track_dirty_pages, strategy=strategy,
                        trace=Path(trace).resolve() if trace else None, lifeline=False, readahead=readahead,
                        compressed=compressed)
    m.detach()
    if not firecracker:
        err_console.print(f"using Firecracker {m.version} at {m.binary} ({m.binary_source})", highlight=False,
                          soft_wrap=True)
    if m.readahead is not None:  # a racing read ends with this command: let it finish, then say what it did
        r = m.readahead.wait()
        err_console.print(f"readahead: {r.pages:,} pages of {readahead.trace if readahead else ''} in "
                          f"{r.reads:,} reads, {r.bytes / 2**20:.1f} MiB in {r.ms:.1f} ms"
                          + (f" ({r.error})" if r.error else ""), highlight=False, soft_wrap=True)
    _show(m, as_json)


@vm.command()
@click.argument("names", nargs=-1)
@click.option("--all", "kill_every", is_flag=True,
              help="Kill every VM in the state directory that still has a process running.")
@click.option("--purge", is_flag=True, help="Also delete the run directories (logs).")
def kill(names: tuple[str, ...], kill_every: bool, purge: bool) -> None:
    """Kill microVMs (Firecracker, page server, supervisor, namespace); sockets are removed.

    Anything still running for a VM's run directory is killed, also when its vm.json is missing or
    unreadable (a command killed while starting it).
    """
    import shutil

    if kill_every:
        names = tuple(r["name"] for r in _records() if r["processes"] or r["state"] != "dead")
        if not names:
            console.print("nothing runs")
            return
    if not names:
        raise click.UsageError("name a VM or pass --all")
    for n in names:
        run_dir = state_dir() / "vms" / n
        if not run_dir.is_dir():
            raise FirecracerError(f"no VM named {n!r} in {state_dir() / 'vms'} "
                                  "(see 'firecracer vm ls --all')")
        killed = False
        if VmRecord.find(run_dir) is not None:
            m = MicroVM.attach(n)
            killed = m.alive() or bool(m.page_server and m.page_server.alive())
            m.kill()
        left = processes_in(run_dir)
        if left:
            kill_all(left)
            killed = True
            from firecracer.vmm.supervisor import cleanup_run_dir, mark_dead

            cleanup_run_dir(run_dir)
            mark_dead(run_dir, f"killed by 'firecracer vm kill' (pids {', '.join(map(str, left))})")
        if purge:
            shutil.rmtree(run_dir, ignore_errors=True)
        console.print(f"killed {n}" if killed else f"{n} was not running", highlight=False)


@vm.command()
@click.option("--keep", default=10, show_default=True, type=click.IntRange(0),
              help="Keep the run directories (logs) of this many most recently dead VMs.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True)
def prune(keep: int, dry_run: bool, as_json: bool) -> None:
    """Remove the run directories of dead VMs, keeping the newest --keep for post-mortem.

    Never touches a VM with anything still running (kill it first). Also deletes a dead VM's network
    namespace if it was left behind.
    """
    import shutil

    from firecracer.vmm.supervisor import cleanup_run_dir

    def last_change(r: dict[str, Any]) -> int:  # ns: age_s is rounded to 0.1 s, VMs die closer together
        d = state_dir() / "vms" / r["name"]
        for f in (d / "vm.json", d):
            with contextlib.suppress(OSError):
                return int(f.stat().st_mtime_ns)
        return 0

    dead = sorted((r for r in _records() if r["state"] == "dead" and not r["processes"]),
                  key=last_change, reverse=True)
    kept, gone = dead[:keep], dead[keep:]
    removed = []
    for r in gone:
        d = state_dir() / "vms" / r["name"]
        if not dry_run:
            cleanup_run_dir(d)
            shutil.rmtree(d, ignore_errors=True)
        removed.append(r["name"])
    if as_json:
        print_json({"removed": removed, "kept": [r["name"] for r in kept], "dry_run": dry_run,
                    "state_dir": str(state_dir())})
        return
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {len(removed)} dead VM run directories from {state_dir() / 'vms'}; kept the "
                  f"{len(kept)} newest (their logs; 'vm logs NAME')", highlight=False)


@vm.command()
@click.argument("name")
@click.argument("path", default="/")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--timeout", default=10.0, show_default=True)
@click.option("--body", "show_body", is_flag=True, help="Print the response body too.")
def request(name: str, path: str, port: int, timeout: float, show_body: bool) -> None:
    """HTTP GET PATH on a guest port over vsock; prints status and latency."""
    m = MicroVM.attach(name)
    vsock = m.record().vsock
    if not vsock:
        raise FirecracerError(f"{name}: has no vsock device")
    m.require_running()
    reply = vsock_http(Path(vsock), port, path, timeout=timeout)
    console.print(f"{reply.status} {human_ms(reply.latency_ms)} ms {len(reply.body):,} bytes",
                  highlight=False)
    if show_body:
        sys.stdout.write(reply.body.decode(errors="replace"))


@vm.command(name="console")
@click.argument("name")
@click.option("--send", "send_text", help="Write this text to the guest's serial input (\\n for newline).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until Ctrl-C or the VM exits.")
def console_cmd(name: str, send_text: str | None, follow: bool) -> None:
    """Print the serial console output (and optionally send input)."""
    m = MicroVM.attach(name)
    if send_text is not None:
        m.send_serial(send_text.encode().decode("unicode_escape").encode("latin-1"))
    pos = 0
    while True:
        data = m.serial_log.read_bytes() if m.serial_log.exists() else b""
        if len(data) > pos:
            sys.stdout.write(data[pos:].decode(errors="replace"))
            sys.stdout.flush()
            pos = len(data)
        if not follow or not m.alive():
            break
        time.sleep(0.2)


@vm.command()
@click.argument("name")
@click.option("--stderr", "with_stderr", is_flag=True, help="Also print Firecracker's stderr.")
@click.option("--uffd", "with_uffd", is_flag=True, help="Print the page server's log instead.")
def logs(name: str, with_stderr: bool, with_uffd: bool) -> None:
    """Print Firecracker's log for a VM (the serial console is 'vm console')."""
    run_dir = state_dir() / "vms" / name
    if not run_dir.is_dir():
        raise FirecracerError(f"no VM named {name!r} in {state_dir() / 'vms'}")
    files = [run_dir / "uffd.log"] if with_uffd else [run_dir / "firecracker.log"] + (
        [run_dir / "firecracker.err"] if with_stderr else [])
    for f in files:
        if f.exists():
            sys.stdout.write(f.read_text(errors="replace"))
        elif with_uffd:
            raise FirecracerError(f"{f}: no page-server log (not a Uffd restore?)")
    sys.stdout.flush()


COMMANDS = [vm]
