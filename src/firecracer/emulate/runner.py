"""``firecracer emulate``: record a real JVM's lazy-restore page order without KVM (QEMU TCG + FUSE).

The pipeline, one QEMU per side (both ``-M microvm,accel=tcg``, guest RAM from a
``memory-backend-file`` mapped ``share=on``):

1. *source*: boot the image with RAM in a sparse file ``mem``; wait for the JVM service, warm it up,
   ``prepare`` (GC, drop caches, compact), collect memmap + NMT + smaps through the guest agent;
2. *snapshot*: ``stop``, then migrate with capability ``x-ignore-shared`` to a file: only device state
   goes into ``vmstate`` (like Firecracker's vmstate), RAM stays in ``mem`` (like its memory file);
3. *restore*: mount ``mem`` through :class:`~firecracer.emulate.fusemem.MemFileMount` (a fresh FUSE
   mount, readahead off), start a second QEMU mapping RAM from the mount, ``-incoming defer`` +
   ``migrate-incoming`` the vmstate, ``cont``; every page the restored VM touches first is one FUSE read,
   recorded in order (the restore trace), until the first HTTP response arrives.

Why not post-copy migration: it pushes RAM in the background as well as on request, so the trace says
what the *migration* sent, not what the guest needed; throttling the push starves the request path
(the issue's 64 KiB/s experiment stalled the guest). The FUSE mount serves only what is asked for —
exactly a userfaultfd ``ondemand`` restore — and nothing else ever moves a page (docs/emulate.md).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from firecracer import __version__
from firecracer.emulate.fusemem import MemFileMount, PageReads, data_extents, in_holes
from firecracer.emulate.nothp import drop_hugepage_advice
from firecracer.emulate.qmp import Qmp
from firecracer.errors import BinaryNotFound, FirecracerError

#: ``recording.json`` ``source`` and the trace's ``meta.vmm`` for recordings made this way.
SOURCE = "qemu-tcg-fuse"
TIMING_NOTE = ("Recorded under QEMU TCG (software CPU emulation, no KVM): absolute times are 10-100x "
               "slower than a KVM restore and not comparable to Firecracker timings; the page ORDER and "
               "SET are what this recording is for.")
GUEST_AGENT_PORT = 5252
APP_PORT = 8080
INIT_PATH = "/sbin/firecracer-init"
WARMUP_PATHS = ("/owners", "/owners/1", "/vets", "/api/owners", "/api/owners/2", "/api/vets", "/api/stats",
                "/api/pets/1/visits", "/owners?lastName=Da", "/api/pettypes", "/")
#: x86-64 microvm puts all RAM below the 3 GiB MMIO hole up to this size, so file offset == gpa.
MAX_MEM_MIB = 3072

Progress = Callable[[str], None]


class EmulateError(FirecracerError):
    """A step of the emulated record run failed (names the step and why)."""


@dataclass
class EmulateConfig:
    """What to boot and how. ``java_options`` is one string (shell-quoted like FC_JAVA_OPTIONS)."""

    kernel: Path
    rootfs: Path
    out: Path
    mem_mib: int = 1024
    cpus: int = 2
    java_options: str = ""
    appcds: bool = False
    label: str = ""
    warmup: int = 30
    request_path: str = "/owners/1"
    boot_timeout: float = 1200.0
    restore_timeout: float = 900.0
    qemu: str = "qemu-system-x86_64"
    keep_snapshot: bool = False
    workdir: Path | None = None
    prepare_steps: list[str] | None = None
    cpu_model: str = "max"


@dataclass
class EmulateResult:
    """Where the recording went and the headline numbers."""

    out: Path
    pages: int
    zero_pages: int
    reads_before_resume: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    attributed_pct: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kernel_cmdline(cfg: EmulateConfig) -> str:
    """Guest kernel arguments: console, read-only root, the image's init, agent on TCP, NMT detail, JVM."""
    args = ["console=ttyS0", "reboot=k", "panic=-1", "pci=off", "root=/dev/vda", "ro", f"init={INIT_PATH}",
            "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off", "overlay_size=256m",
            f"FC_AGENT=tcp:0.0.0.0:{GUEST_AGENT_PORT}", "FC_NMT=detail"]
    if cfg.java_options:
        if '"' in cfg.java_options:
            raise EmulateError(f"JVM options {cfg.java_options!r}: double quotes cannot pass the kernel "
                               "command line; use single quotes")
        args.append(f'FC_JAVA_OPTIONS="{cfg.java_options}"')
    if cfg.appcds:
        args.append("FC_APPCDS=1")
    return " ".join(args)


def qemu_argv(cfg: EmulateConfig, mem_path: Path, qmp: Path, agent_port: int, http_port: int,
              *, incoming: bool) -> list[str]:
    """One side's QEMU command line. Source and destination differ only in mem-path, ports, -incoming."""
    net = (f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{agent_port}-:{GUEST_AGENT_PORT},"
           f"hostfwd=tcp:127.0.0.1:{http_port}-:{APP_PORT}")
    argv = [
        # acpi=off: see firecracer.image.check (TCG cannot calibrate timers on hw-reduced ACPI)
        cfg.qemu, "-M", "microvm,accel=tcg,acpi=off,memory-backend=mem", "-cpu", cfg.cpu_model,
        "-m", f"{cfg.mem_mib}M", "-smp", str(cfg.cpus),
        "-object", f"memory-backend-file,id=mem,size={cfg.mem_mib}M,mem-path={mem_path},share=on",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(cfg.kernel), "-append", kernel_cmdline(cfg),
        "-drive", f"id=root,file={cfg.rootfs},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=root",
        "-netdev", net, "-device", "virtio-net-device,netdev=n0",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


class _Qemu:
    """A QEMU process in its own process group, console copied to a log file with markers seen."""

    def __init__(self, argv: list[str], log: Path, *, no_hugepage_advice: bool = False) -> None:
        self.log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=drop_hugepage_advice if no_hugepage_advice else None)
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._log.write(raw)
            self._log.flush()
            with self._cv:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_line(self, needle: str, timeout: float) -> str:
        """Wait (bounded) for a console line containing ``needle``; error if QEMU exits first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise EmulateError(f"QEMU exited ({self.proc.returncode}) before {needle!r}; "
                                       f"console {self.log_path}: {self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EmulateError(f"no {needle!r} on the console within {timeout:.0f} s; "
                                       f"console {self.log_path}: {self.tail()}")
                self._cv.wait(min(left, 1.0))

    def tail(self, n: int = 3) -> str:
        return " | ".join(self.lines[-n:])

    def stop(self) -> None:
        """Kill the process group (bounded) and close the log."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._reader.join(5)
        self._log.close()


def http_get(port: int, path: str, timeout: float) -> tuple[int, int, float, float]:
    """GET ``path`` from 127.0.0.1:``port``: status, body bytes, s to first byte, s to full response."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        t_first = time.monotonic()
        body = resp.read()
        return resp.status, len(body), t_first - t0, time.monotonic() - t0
    finally:
        conn.close()


def _agent(port: int, timeout: float) -> Any:
    from firecracer.guest.client import AgentClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            agent = AgentClient.connect(f"tcp:127.0.0.1:{port}", timeout=30)
            agent.ping()
            return agent
        except FirecracerError as exc:
            if time.monotonic() > deadline:
                raise EmulateError(f"guest agent on 127.0.0.1:{port} did not answer: {exc}") from exc
            time.sleep(2)


def _qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BinaryNotFound(f"{qemu}: cannot run ({exc}); install qemu-system-x86") from exc
    return out.splitlines()[0] if out else "?"


def _mapping_base(pid: int, path: Path) -> int:
    """Host VA where process ``pid`` mapped ``path`` (the guest RAM), from /proc/PID/maps; 0 if unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if line.endswith(" " + str(path)):
                return int(line.split("-", 1)[0], 16)
    return 0


def _thread_names(pid: int, tids: np.ndarray[Any, Any]) -> dict[int, str]:
    names: dict[int, str] = {}
    for tid in np.unique(tids):
        try:
            names[int(tid)] = Path(f"/proc/{pid}/task/{int(tid)}/comm").read_text().strip()
        except OSError:
            names[int(tid)] = "?"
    return names


def build_trace(reads: PageReads, extents: np.ndarray[Any, Any], *, hva_base: int, mem_bytes: int,
                meta: dict[str, Any]) -> Any:
    """The restore trace (``firecracer.uffd.trace.Trace``) from the recorded FUSE reads.

    Every row is a faulting page (``FLAG_FAULTING``), read/write unknown (FUSE sees a read for both);
    pages in holes of the snapshot's memory file get action ``zero`` as a uffd server would serve them.
    """
    from firecracer.uffd.trace import FLAG_FAULTING, Action, gpa_of, make_trace

    zero = in_holes(reads.offset, extents)
    n = len(reads)
    cols = {
        "t_ns": reads.t_ns,
        "hva": (reads.offset + np.uint64(hva_base)).astype(np.uint64),
        "file_off": reads.offset,
        "gpa": gpa_of(reads.offset, mem_bytes),
        "flags": np.full(n, FLAG_FAULTING, dtype=np.uint8),
        "action": np.where(zero, Action.ZERO, Action.LOAD).astype(np.uint8),
        "fault": reads.request,
        "service_ns": reads.service_ns,
    }
    return make_trace(cols, meta)


def run(cfg: EmulateConfig, progress: Progress | None = None) -> EmulateResult:
    """Boot, warm up, collect, snapshot, restore lazily, first request; write the recording ``cfg.out``."""
    say = progress or (lambda _msg: None)
    if cfg.mem_mib > MAX_MEM_MIB:
        raise EmulateError(f"--mem-mib {cfg.mem_mib}: at most {MAX_MEM_MIB} (RAM must stay below the "
                           "MMIO hole so that memory-file offsets are guest-physical addresses)")
    for p, what in ((cfg.kernel, "kernel"), (cfg.rootfs, "rootfs")):
        if not Path(p).is_file():
            raise EmulateError(f"{what} {p}: not found (build it with `firecracer image {what}`)")
    if shutil.which(cfg.qemu) is None and not Path(cfg.qemu).is_file():
        raise BinaryNotFound(f"{cfg.qemu}: not found; apt-get install qemu-system-x86")
    qemu_version = _qemu_version(cfg.qemu)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    own_work = cfg.workdir is None
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="firecracer-emulate-"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    problems: list[str] = []
    t_start = time.monotonic()

    def mark(name: str, since: float) -> None:
        timings[name] = round((time.monotonic() - since) * 1000, 1)

    try:
        # Pin the image: hard links (or copies) in the work dir, so a rebuild or prune of the image cache
        # between the source boot and the restore cannot swap the disk under the restored VM.
        vm_cfg = _pinned(cfg, work)
        mem = work / "mem"
        vmstate = work / "vmstate"
        for f in (mem, vmstate):
            f.unlink(missing_ok=True)
        with open(mem, "wb") as fh:
            fh.truncate(cfg.mem_mib << 20)

        # 1. source: boot, warm up, prepare, collect
        a_port, h_port = free_port(), free_port()
        src = _Qemu(qemu_argv(vm_cfg, mem, work / "qmp-src.sock", a_port, h_port, incoming=False),
                    out / "console-source.log")
        try:
            say("booting the image under QEMU TCG (source)")
            t0 = time.monotonic()
            ready = src.wait_line("petclinic: ready", cfg.boot_timeout)
            mark("source_boot_to_ready_wall", t0)
            say(f"JVM service ready: {ready.strip()}")
            agent = _agent(a_port, 300)
            try:
                t1 = time.monotonic()
                statuses: dict[int, int] = {}
                for i in range(cfg.warmup):
                    st, _, _, _ = http_get(h_port, WARMUP_PATHS[i % len(WARMUP_PATHS)], 300)
                    statuses[st] = statuses.get(st, 0) + 1
                mark("warmup_wall", t1)
                if cfg.warmup and 200 not in statuses:
                    raise EmulateError(f"warm-up requests never got HTTP 200 (statuses {statuses})")
                say(f"warmed up with {cfg.warmup} requests {statuses}")
                t1 = time.monotonic()
                prep = agent.prepare(cfg.prepare_steps)
                mark("prepare_wall", t1)
                (out / "prepare.json").write_text(json.dumps(prep, indent=1, default=str))
                say("prepared (GC, drop caches, compact); collecting memmap + NMT")
                from firecracer.guest.recording import collect_agent

                t1 = time.monotonic()
                summary = collect_agent(agent, out, source=SOURCE)
                problems += list(summary.problems)
                kernel_classes = _complete_memmap(agent, out / "memmap.npz", cfg.mem_mib)
                mark("collect_wall", t1)
                say(f"memmap: {summary.pages} page rows; kernel allocations by kpageflags: {kernel_classes}")
            finally:
                agent.close()
            # 2. snapshot: device state only; RAM stays in `mem`
            say("snapshot: stop + migrate device state (x-ignore-shared)")
            with Qmp(work / "qmp-src.sock") as q:
                t1 = time.monotonic()
                q.command("stop")
                q.command("migrate-set-capabilities",
                          {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
                q.command("migrate", {"uri": f"exec:cat > {vmstate}"})
                q.wait_migration(timeout=300)
                mark("snapshot_wall", t1)
                with contextlib.suppress(FirecracerError):
                    q.command("quit")
        finally:
            src.stop()
        extents = data_extents(mem)
        snap_meta = {"vmm": "qemu", "qemu_version": qemu_version, "type": "Full", "method": "x-ignore-shared",
                     "mem_size_mib": cfg.mem_mib, "vmstate_bytes": vmstate.stat().st_size,
                     "mem_data_bytes": int((extents[:, 1] - extents[:, 0]).sum()) if len(extents) else 0,
                     "kernel": str(cfg.kernel), "rootfs": str(cfg.rootfs),
                     "kernel_args": kernel_cmdline(cfg), "created": _now()}

        # 3. restore lazily through the FUSE mount, first request
        a_port, h_port = free_port(), free_port()
        say("restore: second QEMU with RAM on the recording FUSE mount")
        reads, hva_base, names, t_marks, first = _restore(vm_cfg, mem, vmstate, work, a_port, h_port, out)
        timings.update(t_marks)

        # 4. the recording
        resp_ns = int(t_marks["first_response_ns"])
        keep = reads.t_ns <= np.uint64(resp_ns)
        cut = PageReads(*(getattr(reads, f)[keep]
                          for f in ("t_ns", "offset", "service_ns", "request", "tid")))
        by_thread: dict[str, int] = {}
        for tid, cnt in zip(*np.unique(cut.tid, return_counts=True), strict=True):
            nm = names.get(int(tid), "?")
            by_thread[nm] = by_thread.get(nm, 0) + int(cnt)
        meta = {
            "strategy": "ondemand", "vmm": SOURCE, "qemu_version": qemu_version, "mem_file": str(mem),
            "regions": [{"base_host_virt_addr": hva_base, "size": cfg.mem_mib << 20, "offset": 0,
                         "page_size": 4096}],
            "faults": int(cut.request.max() + 1) if len(cut) else 0,
            "events": {"pagefault": len(np.unique(cut.request))},
            "write_flag_known": False, "resume_ns": int(t_marks["resume_ns"]), "first_response_ns": resp_ns,
            "pages_after_response_dropped": int((~keep).sum()), "reads_by_thread": by_thread,
            "timing_note": TIMING_NOTE,
        }
        trace = build_trace(cut, extents, hva_base=hva_base, mem_bytes=cfg.mem_mib << 20, meta=meta)
        from firecracer.uffd.trace import save_trace

        save_trace(trace, out / "trace.npz")
        snapdir = out / "snapshot"
        snapdir.mkdir(exist_ok=True)
        (snapdir / "snapshot.json").write_text(json.dumps(snap_meta, indent=1))
        if cfg.keep_snapshot:
            shutil.copyfile(vmstate, snapdir / "vmstate")
            subprocess.run(["cp", "--sparse=always", str(mem), str(snapdir / "mem")], check=True, timeout=600)
        zero = int(trace.is_zero().sum())
        before = int((cut.t_ns < np.uint64(t_marks["resume_ns"])).sum())
        timings["total_wall"] = round((time.monotonic() - t_start) * 1000, 1)
        _write_recording_json(out, cfg, qemu_version, timings, first, trace_rows=len(cut), zero=zero,
                              before=before)
        res = EmulateResult(out, len(cut), zero, before,
                            {k: v for k, v in timings.items() if not k.endswith("_ns")}, problems)
        try:
            res.attributed_pct = _attributed_pct(out)
        except FirecracerError as exc:
            problems.append(f"analysis of the recording failed: {exc}")
        return res
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _attributed_pct(out: Path) -> float | None:
    """Share of first-touch pages the analysis attributes to an owner; also noted in recording.json."""
    from firecracer.analysis.join import attribute
    from firecracer.analysis.recording import load_recording
    from firecracer.analysis.tables import totals

    tot = totals(attribute(load_recording(out)))
    pct = tot.get("attributed_pct")
    path = out / "recording.json"
    rec = json.loads(path.read_text())
    rec["analysis"] = {"attributed_pct": pct}
    path.write_text(json.dumps(rec, indent=1, default=str))
    return None if pct is None else float(pct)


def _complete_memmap(agent: Any, path: Path, mem_mib: int) -> dict[str, int]:
    """Add kernel allocations (slab, page tables, …) no collector section names; see ``kernelpages``."""
    from firecracer.guest.kernelpages import complete_memmap

    return complete_memmap(agent, path)


def _pinned(cfg: EmulateConfig, work: Path) -> EmulateConfig:
    from dataclasses import replace

    pinned: dict[str, Path] = {}
    for name in ("kernel", "rootfs"):
        src = Path(getattr(cfg, name)).resolve()
        dst = work / f"{name}-{src.name}"
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True, timeout=900)
        pinned[name] = dst
    return replace(cfg, kernel=pinned["kernel"], rootfs=pinned["rootfs"])


def _restore(cfg: EmulateConfig, mem: Path, vmstate: Path, work: Path, a_port: int, h_port: int,
             out: Path) -> tuple[PageReads, int, dict[int, str], dict[str, float], dict[str, Any]]:
    marks: dict[str, float] = {}
    with MemFileMount(mem, work / "fuse") as mount:
        dst = _Qemu(qemu_argv(cfg, mount.path, work / "qmp-dst.sock", a_port, h_port, incoming=True),
                    out / "console-restore.log", no_hugepage_advice=True)
        try:
            with Qmp(work / "qmp-dst.sock", timeout=60) as q:
                t_load = mount.mark()
                q.command("migrate-set-capabilities",
                          {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
                q.command("migrate-incoming", {"uri": f"exec:cat {vmstate}"})
                q.wait_status({"paused", "running"}, timeout=cfg.restore_timeout)
                t_loaded = mount.mark()
                marks["load_snapshot_ms"] = round((t_loaded - t_load) / 1e6, 1)
                hva_base = _mapping_base(dst.proc.pid, mount.path)
                q.command("cont")
                t_resume = mount.mark()
                marks["resume_ns"] = t_resume
                try:
                    status, size, ttfb, _total = http_get(h_port, cfg.request_path, cfg.restore_timeout)
                except OSError as exc:
                    raise EmulateError(f"first request GET {cfg.request_path} after restore failed: {exc}; "
                                       f"console {dst.log_path}: {dst.tail()}") from exc
                t_resp = mount.mark()
                marks["first_response_ns"] = t_resp
                marks["resume_to_first_byte_ms"] = round(ttfb * 1000, 1)
                marks["resume_to_response_ms"] = round((t_resp - t_resume) / 1e6, 1)
                if mount.error is not None:
                    raise EmulateError(f"FUSE page server failed: {mount.error}")
                reads = mount.reads()
                names = _thread_names(dst.proc.pid, reads.tid)
                first = {"path": cfg.request_path, "status": status, "bytes": size}
                if status != 200:
                    raise EmulateError(f"first request GET {cfg.request_path} after restore: HTTP {status}")
        finally:
            dst.stop()
    return reads, hva_base, names, marks, first


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _write_recording_json(out: Path, cfg: EmulateConfig, qemu_version: str, timings: dict[str, float],
                          first: dict[str, Any], *, trace_rows: int, zero: int, before: int) -> None:
    path = out / "recording.json"
    rec: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    rec.update({"format": "firecracer-recording", "version": 1, "created": _now(), "source": SOURCE,
                "label": cfg.label or None})
    rec["vmm"] = {"name": "qemu", "version": qemu_version, "accel": "tcg", "machine": "microvm",
                  "restore": "memory-backend-file on a FUSE mount (readahead off), x-ignore-shared vmstate",
                  "firecracer": __version__}
    guest = dict(rec.get("guest") or {})
    guest.update({"mem_size_mib": cfg.mem_mib, "vcpus": cfg.cpus, "kernel_path": str(cfg.kernel),
                  "rootfs": str(cfg.rootfs), "kernel_args": kernel_cmdline(cfg)})
    rec["guest"] = guest
    jvm = dict(rec.get("jvm") or {})
    jvm.update({"java_options": cfg.java_options, "appcds": cfg.appcds})
    rec["jvm"] = jvm
    rec["strategy"] = "ondemand"
    rec["first_request"] = first
    rec["timings_ms"] = {k: v for k, v in timings.items() if not k.endswith("_ns")}
    rec["timings_comparable_to_kvm"] = False
    rec["timing_note"] = TIMING_NOTE
    rec["trace"] = {"pages": trace_rows, "zero_pages": zero, "pages_before_resume": before}
    rec["host"] = {"kernel": platform.release(), "machine": platform.machine(),
                   "python": platform.python_version(), "cpus": os.cpu_count()}
    path.write_text(json.dumps(rec, indent=1, default=str))
