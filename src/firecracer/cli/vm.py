"""``firecracer vm``: Firecracker microVM lifecycle from the shell.

VMs outlive the command that started them: each lives in ``state_dir()/vms/NAME`` (API socket,
serial log and input FIFO, Firecracker log, metrics, ``vm.json``), which ``vm ls`` lists.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from firecracer.cli._render import console, print_json
from firecracer.errors import FirecracerError
from firecracer.paths import state_dir
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.machine import DEFAULT_BOOT_ARGS, MicroVM, VMConfig
from firecracer.vmm.network import vsock_http
from firecracer.vmm.process import pid_is_firecracker, socket_in_use


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
    rec = m.record()
    keys = ("name", "state", "pid", "firecracker_version", "api_sock", "vsock", "serial_log", "netns",
            "page_server_pid", "timings_ms")
    return {k: rec[k] for k in keys}


def _show(m: MicroVM, as_json: bool) -> None:
    s = _summary(m)
    if as_json:
        print_json(s)
        return
    for k, v in s.items():
        if v is not None:
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
         as_json: bool) -> None:
    """Boot a microVM and leave it running (see 'vm ls', 'vm kill')."""
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
    config = VMConfig(kernel=kernel, boot_args=boot_args, rootfs=rootfs, rootfs_read_only=not rw,
                      vcpu_count=vcpus, mem_size_mib=mem_mib, track_dirty_pages=track_dirty_pages,
                      huge_pages=huge_pages, vsock_cid=None if no_vsock else 3, network=net, labels=lab)
    m = MicroVM(firecracker, name=name)
    with m:
        m.boot(config)
        m.detach()
    _show(m, as_json)


def _records() -> list[dict[str, Any]]:
    out = []
    for rec_path in sorted((state_dir() / "vms").glob("*/vm.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        pid = rec.get("pid")
        alive = bool(pid) and pid_is_firecracker(int(pid))
        if not alive:
            rec["state"] = "dead"
        rec["api_live"] = alive and socket_in_use(Path(rec.get("api_sock", "")))
        out.append(rec)
    return out


@vm.command(name="ls")
@click.option("--all", "show_all", is_flag=True, help="Include dead VMs whose run dir still exists.")
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(show_all: bool, as_json: bool) -> None:
    """List microVMs in the state directory with their sockets."""
    recs = [r for r in _records() if show_all or r["state"] != "dead"]
    if as_json:
        print_json(recs)
        return
    if not recs:
        console.print(f"no VMs in {state_dir() / 'vms'}")
        return
    t = Table("name", "state", "pid", "firecracker", "api socket", "vsock", "restored from")
    for r in recs:
        t.add_row(r["name"], r["state"], str(r.get("pid") or "-"), str(r.get("firecracker_version") or "-"),
                  r.get("api_sock") or "-", r.get("vsock") or "-", r.get("restored_from") or "-")
    console.print(t)


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


@vm.command()
@click.argument("name")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--diff", is_flag=True, help="Diff snapshot (pages dirtied since the last snapshot).")
@click.option("--punch-holes", is_flag=True, help="Deallocate all-zero pages of the memory file.")
@click.option("--resume", "resume_after", is_flag=True, help="Resume afterwards (default: stays paused).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True)
def snapshot(name: str, dest: str, diff: bool, punch_holes: bool, resume_after: bool, labels: tuple[str, ...],
             as_json: bool) -> None:
    """Snapshot microVM NAME into directory DEST (vmstate, mem, snapshot.json)."""
    m = MicroVM.attach(name)
    lab = dict(item.partition("=")[::2] for item in labels)
    snap = m.snapshot(dest, SnapshotType.DIFF if diff else SnapshotType.FULL, punch_holes=punch_holes,
                      resume=resume_after, labels=lab)
    if as_json:
        print_json(snap.to_json())
        return
    mib = 2**20
    huge = ", 2 MiB pages: restore with --uffd" if snap.vm.get("huge_pages") == "2M" else ""
    console.print(f"{snap.type.value} snapshot of {name} in {snap.dir} (Firecracker "
                  f"{snap.firecracker_version}, format {snap.snapshot_format}, create "
                  f"{snap.timings_ms['create']:.1f} ms, mem {snap.mem['allocated_bytes'] / mib:.1f} of "
                  f"{snap.mem['size'] / mib:.0f} MiB allocated{huge})", highlight=False)


@vm.command()
@click.argument("snapshot_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--name", help="Name of the restored VM (default: vm-<random>).")
@_fc_option
@click.option("--uffd", is_flag=True, help="Uffd backend: serve memory with 'firecracer uffd serve'.")
@click.option("--strategy", help="Page-server strategy (with --uffd).")
@click.option("--trace", type=click.Path(dir_okay=False), help="Page-server trace output (with --uffd).")
@click.option("--paused", is_flag=True, help="Stay paused after loading.")
@click.option("--track-dirty-pages", is_flag=True, help="Enable dirty tracking (for later Diff snapshots).")
@click.option("--json", "as_json", is_flag=True)
def restore(snapshot_dir: str, name: str | None, firecracker: str | None, uffd: bool, strategy: str | None,
            trace: str | None, paused: bool, track_dirty_pages: bool, as_json: bool) -> None:
    """Restore a snapshot directory into a new microVM and leave it running."""
    if not uffd and (strategy or trace):
        raise click.UsageError("--strategy and --trace need --uffd")
    m = MicroVM.restore(snapshot_dir, firecracker=firecracker, name=name,
                        backend=MemBackend.UFFD if uffd else MemBackend.FILE, resume=not paused,
                        track_dirty_pages=track_dirty_pages, strategy=strategy,
                        trace=Path(trace).resolve() if trace else None)
    m.detach()
    _show(m, as_json)


@vm.command()
@click.argument("names", nargs=-1)
@click.option("--all", "kill_all", is_flag=True, help="Kill every VM in the state directory.")
@click.option("--purge", is_flag=True, help="Also delete the run directories (logs).")
def kill(names: tuple[str, ...], kill_all: bool, purge: bool) -> None:
    """Kill microVMs (Firecracker, page server, namespace); sockets are removed."""
    import shutil

    if kill_all:
        names = tuple(r["name"] for r in _records())
    if not names:
        raise click.UsageError("name a VM or pass --all")
    for n in names:
        m = MicroVM.attach(n)
        m.kill()
        if purge:
            shutil.rmtree(m.run_dir, ignore_errors=True)
        console.print(f"killed {n}", highlight=False)


@vm.command()
@click.argument("name")
@click.argument("path", default="/")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--timeout", default=10.0, show_default=True)
@click.option("--body", "show_body", is_flag=True, help="Print the response body too.")
def request(name: str, path: str, port: int, timeout: float, show_body: bool) -> None:
    """HTTP GET PATH on a guest port over vsock; prints status and latency."""
    m = MicroVM.attach(name)
    rec = m.record()
    if not rec.get("vsock"):
        raise FirecracerError(f"{name}: has no vsock device")
    reply = vsock_http(Path(rec["vsock"]), port, path, timeout=timeout)
    console.print(f"{reply.status} {reply.latency_ms:.2f} ms {len(reply.body)} bytes", highlight=False)
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
