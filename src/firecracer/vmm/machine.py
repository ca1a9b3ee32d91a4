"""``MicroVM``: one Firecracker microVM whose whole lifecycle this object owns.

Boot, pause/resume, snapshot (Full/Diff, optional hole punching), restore (File or Uffd backend
with a supervised page server), Ctrl-Alt-Del and kill. Used as a context manager, every exit
path (exception, Ctrl-C) kills Firecracker and the page server and removes sockets, the serial
FIFO and the network namespace; logs stay in the run directory. ``detach()`` hands a running VM
over to the state directory (what ``firecracer vm boot`` does) so another process can drive it.

Firecracker quirks handled here rather than by callers:

* v1.4 cannot start a vCPU on hosts whose CPUID brand string has no frequency (fixed in v1.5):
  raised as :class:`Unsupported` with that reason.
* v1.4-v1.7 refuse the Uffd backend on host kernels >= 6.6 ("Unrecognized ioctl flags", fixed in
  v1.8, #4578): raised as :class:`Unsupported`.
* A failed ``/snapshot/load`` makes Firecracker exit; the error carries its last log line.
* Paths baked into the snapshot (vsock socket) are relative to the run directory, which is
  Firecracker's cwd, so restored clones side by side do not collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError, FirecrackerError
from firecracer.paths import state_dir
from firecracer.vmm import config as cfg
from firecracer.vmm import hugepages
from firecracer.vmm.api import ApiClient, Unsupported
from firecracer.vmm.binary import Version, find_firecracker
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.network import GUEST_MAC, NetNamespace, kernel_ip_arg
from firecracer.vmm.pageserver import PageServer, default_command
from firecracer.vmm.process import FirecrackerProcess, last_error_line, socket_in_use
from firecracer.vmm.snapshot import (
    Snapshot,
    check_loadable,
    describe_file,
    describe_vmstate,
    full_memory,
    mem_stats,
    now_iso,
    punch_zero_pages,
)

VSOCK_NAME = "v.sock"
UFFD_NAME = "uffd.sock"
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"

UFFD_OLD_FC = "Firecracker < 1.8 on host kernel ≥ 6.6"
BRAND_OLD_FC = ("Firecracker < 1.5 cannot start a vCPU on this host: its CPUID brand string has no "
                "frequency (fixed in v1.5)")


@dataclass(frozen=True)
class VMConfig:
    """What to boot. Paths are stored as given; ``labels`` travel into ``snapshot.json``."""

    kernel: str
    boot_args: str = DEFAULT_BOOT_ARGS
    rootfs: str | None = None
    rootfs_read_only: bool = True
    initrd: str | None = None
    vcpu_count: int = 1
    mem_size_mib: int = 128
    track_dirty_pages: bool = False
    huge_pages: str | None = None
    smt: bool | None = None
    vsock_cid: int | None = 3
    network: bool = False
    balloon_mib: int | None = None
    mmds: dict[str, Any] | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _fc_path(p: str | os.PathLike[str]) -> str:
    return str(Path(p).resolve())


class MicroVM:
    """One microVM. Create, then :meth:`boot` or :meth:`restore` (a classmethod).

    :param firecracker: binary path (else the usual discovery, :func:`find_firecracker`).
    :param name: VM name (run dir ``state_dir()/vms/NAME``, Firecracker ``--id``, netns ``fcr-NAME``).
    """

    def __init__(self, firecracker: str | os.PathLike[str] | None = None, *, name: str | None = None,
                 run_dir: Path | None = None, log_level: str = "Warning") -> None:
        self.binary = find_firecracker(os.fspath(firecracker) if firecracker is not None else None)
        self.name = name or f"vm-{uuid.uuid4().hex[:8]}"
        if not re.fullmatch(r"[A-Za-z0-9-]{1,40}", self.name):
            raise FirecracerError(f"VM name {self.name!r}: use 1-40 letters, digits or dashes")
        self.run_dir = Path(run_dir) if run_dir else state_dir() / "vms" / self.name
        self.log_level = log_level
        self.config: VMConfig | None = None
        self.state = "new"
        self.netns: NetNamespace | None = None
        self.page_server: PageServer | None = None
        self.restored_from: Snapshot | None = None
        self.last_snapshot: Snapshot | None = None
        self.timings_ms: dict[str, float] = {}
        self.detached = False
        self._fc: FirecrackerProcess | None = None

    @classmethod
    def attach(cls, name: str) -> MicroVM:
        """The VM ``name`` from the state directory (started by another process, e.g. ``vm boot``).

        The returned object is detached: leaving a ``with`` block does not kill it; :meth:`kill` does.

        :raises FirecracerError: no such VM.
        """
        run_dir = state_dir() / "vms" / name
        try:
            rec = json.loads((run_dir / "vm.json").read_text())
        except FileNotFoundError as exc:
            raise FirecracerError(f"no VM named {name!r} in {state_dir() / 'vms'} "
                                  "(see 'firecracer vm ls')") from exc
        except (OSError, ValueError) as exc:
            raise FirecracerError(f"{run_dir / 'vm.json'}: unreadable VM record ({exc})") from exc
        vm = cls(rec.get("firecracker"), name=name, run_dir=run_dir)
        vm.detached = True
        vm.state = str(rec.get("state", "unknown"))
        vm.config = VMConfig.from_json(rec["config"]) if rec.get("config") else None
        vm.timings_ms = dict(rec.get("timings_ms") or {})
        if rec.get("pid"):
            vm._fc = FirecrackerProcess.attach(vm.binary, run_dir, name, int(rec["pid"]))
            if vm.state != "dead" and not vm._fc.alive():
                vm.state = "dead"
        if rec.get("netns"):
            vm.netns = NetNamespace(str(rec["netns"]), created=True)
        if rec.get("page_server_pid"):
            vm.page_server = PageServer.attach(int(rec["page_server_pid"]), run_dir / UFFD_NAME,
                                               run_dir / "uffd.log")
        for attr in ("restored_from", "last_snapshot"):
            if rec.get(attr):
                with contextlib.suppress(FirecracerError):
                    setattr(vm, attr, Snapshot.load(rec[attr]))
        return vm

    # -- context management ---------------------------------------------------------------------
    def __enter__(self) -> MicroVM:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.detached:
            self.kill()

    def __del__(self) -> None:  # last resort; explicit kill()/context manager is the contract
        if getattr(self, "_fc", None) is not None and not getattr(self, "detached", True):
            with contextlib.suppress(Exception):
                self.kill()

    # -- accessors --------------------------------------------------------------------------------
    @property
    def fc(self) -> FirecrackerProcess:
        if self._fc is None:
            raise FirecracerError(f"{self.name}: Firecracker is not running (boot or restore first)")
        return self._fc

    @property
    def api(self) -> ApiClient:
        return self.fc.api

    @property
    def version(self) -> Version:
        return self.fc.version

    @property
    def pid(self) -> int | None:
        return self._fc.pid if self._fc else None

    @property
    def vsock_path(self) -> Path:
        return self.run_dir / VSOCK_NAME

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial.log"

    def alive(self) -> bool:
        return self._fc is not None and self._fc.alive()

    # -- boot ----------------------------------------------------------------------------------------
    def _spawn(self, netns_wanted: bool) -> None:
        if self._fc is not None:
            raise FirecracerError(f"{self.name}: already started")
        if socket_in_use(self.run_dir / "api.sock"):
            raise FirecrackerError(f"{self.run_dir / 'api.sock'}: socket path in use by another process "
                                   f"(a VM named {self.name!r} is running; pick another name or kill it)")
        if self.run_dir.exists() and (self.run_dir / "vm.json").exists():
            # leftover of a dead VM with this name: keep nothing but make room
            for f in ("serial.log", "firecracker.log", "firecracker.err", "metrics.json", "vm.json"):
                (self.run_dir / f).unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if netns_wanted:
                self.netns = NetNamespace.create(f"fcr-{self.name}")
            self._fc = FirecrackerProcess(self.binary, self.run_dir, self.name, log_level=self.log_level,
                                          netns=self.netns.name if self.netns else None)
            t0 = time.perf_counter()
            self._fc.start()
            self.timings_ms["spawn"] = (time.perf_counter() - t0) * 1000
        except BaseException:
            self.kill()
            raise

    def boot(self, config: VMConfig, *, start: bool = True) -> None:
        """Spawn Firecracker, configure it from ``config`` and (unless ``start=False``) start the guest.

        :raises FirecrackerError: a request was refused (names it and Firecracker's fault message);
            :class:`Unsupported` for known host/version limits. Nothing is left running.
        """
        for label, p in (("kernel", config.kernel), ("rootfs", config.rootfs), ("initrd", config.initrd)):
            if p is not None and not Path(p).is_file():
                raise FirecracerError(f"{p}: {label} file not found")
        if config.huge_pages == "2M":
            hugepages.check_pool(config.mem_size_mib, f"microVM {self.name}")
        self._spawn(config.network)
        self.config = config
        try:
            t0 = time.perf_counter()
            self._configure(config)
            self.timings_ms["configure"] = (time.perf_counter() - t0) * 1000
            self.state = "configured"
            self._write_record()
            if start:
                self.start()
        except BaseException:
            self.kill()
            raise

    def _configure(self, c: VMConfig) -> None:
        v = self.version
        api = self.api
        boot_args = c.boot_args
        if c.network and "ip=" not in boot_args:
            boot_args = f"{boot_args} {kernel_ip_arg()}"
        api.put("/boot-source", cfg.BootSource(_fc_path(c.kernel), boot_args,
                                               _fc_path(c.initrd) if c.initrd else None).body(v))
        api.put("/machine-config", cfg.MachineConfig(vcpu_count=c.vcpu_count, mem_size_mib=c.mem_size_mib,
                                                     smt=c.smt, track_dirty_pages=c.track_dirty_pages,
                                                     huge_pages=c.huge_pages).body(v))
        if c.rootfs:
            api.put("/drives/rootfs", cfg.Drive("rootfs", _fc_path(c.rootfs), is_root_device=True,
                                                is_read_only=c.rootfs_read_only).body(v))
        if c.vsock_cid is not None:
            # relative: resolved against the run dir (Firecracker's cwd), also after restore
            api.put("/vsock", cfg.Vsock(c.vsock_cid, VSOCK_NAME).body(v))
        if c.network:
            assert self.netns is not None
            nic = cfg.NetworkInterface("eth0", self.netns.tap, GUEST_MAC)
            api.put("/network-interfaces/eth0", nic.body(v))
        if c.mmds is not None:
            if not c.network:
                raise FirecracerError("MMDS needs a network interface: set network=True")
            api.put("/mmds/config", cfg.MmdsConfig(("eth0",)).body(v))
            api.put("/mmds", c.mmds)
        if c.balloon_mib is not None:
            api.put("/balloon", cfg.Balloon(c.balloon_mib).body(v))

    def start(self) -> None:
        """``InstanceStart``: the guest begins executing."""
        t0 = time.perf_counter()
        try:
            self.api.put("/actions", {"action_type": "InstanceStart"})
        except FirecrackerError as exc:
            fault = exc.fault_message or str(exc)
            if re.search(r"MissingFrequency|GetBrandString|brand string", fault, re.IGNORECASE):
                raise Unsupported(BRAND_OLD_FC, method=exc.method, path=exc.path, status=exc.status,
                                  fault_message=exc.fault_message, body=exc.body) from exc
            raise
        self.timings_ms["start"] = (time.perf_counter() - t0) * 1000
        self.state = "running"
        self._write_record()

    # -- run-time control ---------------------------------------------------------------------------
    def pause(self) -> None:
        t0 = time.perf_counter()
        self.api.patch("/vm", {"state": "Paused"})
        self.timings_ms["pause"] = (time.perf_counter() - t0) * 1000
        self.state = "paused"
        self._write_record()

    def resume(self) -> None:
        t0 = time.perf_counter()
        self.api.patch("/vm", {"state": "Resumed"})
        self.timings_ms["resume"] = (time.perf_counter() - t0) * 1000
        self.state = "running"
        self._write_record()

    def ctrl_alt_del(self) -> None:
        """``SendCtrlAltDel``: a Linux guest with an i8042 driver reboots (Firecracker then exits)."""
        self.api.put("/actions", {"action_type": "SendCtrlAltDel"})

    def flush_metrics(self) -> dict[str, Any]:
        """``FlushMetrics`` and return the newest metrics object (empty dict if none was written)."""
        self.api.put("/actions", {"action_type": "FlushMetrics"})
        try:
            lines = self.fc.metrics_path.read_text().strip().splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
        return {}

    def check_page_server(self) -> None:
        """Raise (and kill the VM) if the Uffd page server died while Firecracker still runs.

        Without its server Firecracker hangs forever on the next missing page, so this is an error
        whatever the server's exit status; the message carries the server's last log line.
        """
        ps = self.page_server
        if ps is None or ps.alive() or not self.alive():
            return
        rc = ps.proc.returncode if ps.proc is not None else None
        how = "" if rc is None else (f" (killed by {signal.Signals(-rc).name})" if rc < 0
                                     else f" (exit status {rc})")
        line = last_error_line(ps.log)
        self.kill()
        raise FirecrackerError(f"{self.name}: the page server died{how} while the VM ran; Firecracker "
                               "would hang on its next fault, so it was killed"
                               + (f": {line}" if line else f" (log: {ps.log})"))

    # -- serial console -----------------------------------------------------------------------------
    def send_serial(self, data: bytes) -> None:
        self.fc.send_serial(data)

    def serial_text(self, since: int = 0) -> str:
        """Serial output from byte offset ``since`` (undecodable bytes kept as surrogates)."""
        try:
            with open(self.serial_log, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "surrogateescape")
        except OSError:
            return ""

    def serial_size(self) -> int:
        """Bytes of serial output so far: pass as ``since`` to wait only for what comes next."""
        try:
            return self.serial_log.stat().st_size
        except OSError:
            return 0

    def wait_serial(self, pattern: str, timeout: float = 30.0, *,
                    since: int = 0) -> tuple[re.Match[str], int]:
        """Wait until ``pattern`` (regex, multiline) appears in the serial output after byte offset ``since``.

        Reads only the new part of the log on each poll. Returns the match (positions relative to
        ``since``) and the byte offset just past it (pass as ``since`` to wait for the next one).

        :raises FirecrackerError: timeout, or Firecracker exited (with its last log line).
        """
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            text = self.serial_text(since)
            m = rx.search(text)
            if m:
                return m, since + len(text[:m.end()].encode("utf-8", "surrogateescape"))
            self.check_page_server()
            if not self.alive():
                death = self.fc.describe_death() if self._fc else None
                ps_line = last_error_line(self.page_server.log) if self.page_server else None
                raise FirecrackerError(f"{self.name}: serial output never matched {pattern!r}: "
                                       f"{death or 'Firecracker is not running'}"
                                       + (f"; page server: {ps_line}" if ps_line else ""))
            if time.monotonic() > deadline:
                tail = text[-200:].strip().replace("\n", " | ")
                raise FirecrackerError(f"{self.name}: serial output did not match {pattern!r} within "
                                       f"{timeout:g} s (last output: {tail!r})")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self, dest: str | os.PathLike[str], snapshot_type: SnapshotType = SnapshotType.FULL, *,
                 punch_holes: bool = False, resume: bool = False, parent: Snapshot | None = None,
                 labels: dict[str, Any] | None = None) -> Snapshot:
        """Pause (if running), write ``dest/{vmstate,mem,snapshot.json}``, optionally resume.

        :param parent: for Diff, the snapshot this one's pages apply to (default: this VM's last
            snapshot, or the one it was restored from).
        :param punch_holes: deallocate all-zero pages of the memory file afterwards.
        :raises FirecracerError: ``dest`` is not empty, Diff without a parent, or Firecracker refused.
        """
        d = Path(dest)
        if d.exists() and any(d.iterdir()):
            raise FirecracerError(f"{d}: snapshot directory exists and is not empty")
        if snapshot_type is SnapshotType.DIFF:
            parent = parent or self.last_snapshot or self.restored_from
            if parent is None:
                raise FirecracerError(f"{self.name}: a Diff snapshot needs a parent snapshot "
                                      "(take a Full one first)")
        if self.state == "running":
            self.pause()
        created_dir = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
        try:
            t0 = time.perf_counter()
            req = cfg.SnapshotCreate(str((d / "vmstate").resolve()), str((d / "mem").resolve()),
                                     snapshot_type)
            self.api.put("/snapshot/create", req.body(self.version), timeout=600)
            create_ms = (time.perf_counter() - t0) * 1000
            fmt = describe_vmstate(self.binary, d / "vmstate")
            timings = {"create": round(create_ms, 3)}
            punched = 0
            if punch_holes:
                t1 = time.perf_counter()
                punched = punch_zero_pages(d / "mem")
                timings["punch_holes"] = round((time.perf_counter() - t1) * 1000, 3)
            c = self.config
            vm_json = c.to_json() if c else {}
            mem = {**mem_stats(d / "mem"), "holes_punched": punch_holes, "bytes_punched": punched}
            snap = Snapshot(dir=d.resolve(), type=snapshot_type, firecracker_version=str(self.version),
                            snapshot_format=fmt, created=now_iso(),
                            parent=parent.dir if (snapshot_type is SnapshotType.DIFF and parent) else None,
                            vm=vm_json,
                            files={"kernel": describe_file(c.kernel) if c else None,
                                   "rootfs": describe_file(c.rootfs) if c and c.rootfs else None,
                                   "firecracker": str(self.binary)},
                            labels={**(c.labels if c else {}), **(labels or {})}, mem=mem, timings_ms=timings)
            snap.write()
        except BaseException:
            if created_dir:
                shutil.rmtree(d, ignore_errors=True)
            raise
        self.last_snapshot = snap
        self._write_record()
        if resume:
            self.resume()
        return snap

    @classmethod
    def restore(cls, snapshot: Snapshot | str | os.PathLike[str], *,
                firecracker: str | os.PathLike[str] | None = None, name: str | None = None,
                run_dir: Path | None = None, backend: MemBackend = MemBackend.FILE, resume: bool = True,
                track_dirty_pages: bool = False, page_server: Sequence[str] | None = None,
                strategy: str | None = None, trace: Path | None = None, metrics: Path | None = None,
                log_level: str = "Warning", check: bool = True) -> MicroVM:
        """Start a fresh Firecracker and load ``snapshot`` into it.

        :param backend: ``File`` (Firecracker maps the memory file) or ``Uffd`` (a page server
            started here serves faults; ``page_server`` overrides its argv, where ``{socket}`` and
            ``{mem}`` are replaced by the socket and memory-file paths; by default
            ``firecracer uffd serve`` with ``strategy``/``trace``/``metrics``).
        :param check: verify up front that this Firecracker can load the snapshot's data format.
        :raises Unsupported: Uffd with Firecracker < 1.8 on host kernel >= 6.6.
        :raises FirecracerError: incompatible/corrupt snapshot, page server or load failure; nothing
            is left running.
        """
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot.load(snapshot)
        vm = cls(firecracker, name=name, run_dir=run_dir, log_level=log_level)
        if check:
            check_loadable(snap, vm.binary)
        if snap.vm.get("huge_pages") == "2M":  # before Firecracker starts: it would fail or SIGBUS later
            if backend is not MemBackend.UFFD:
                raise FirecracerError(f"{snap.dir}: this snapshot's memory is backed by 2 MiB huge pages, "
                                      "which Firecracker restores only through the Uffd backend (--uffd)")
            hugepages.check_pool(int(snap.vm.get("mem_size_mib") or 0), f"snapshot {snap.dir}")
        vm.config = VMConfig.from_json(snap.vm) if snap.vm.get("kernel") else None
        vm.restored_from = snap
        try:
            mem = full_memory(snap)
            vm._spawn(bool(vm.config and vm.config.network))
            if backend is MemBackend.UFFD:
                sock = vm.run_dir / UFFD_NAME
                if page_server:
                    argv = [a.replace("{socket}", str(sock)).replace("{mem}", str(mem.resolve()))
                            for a in page_server]
                else:
                    argv = default_command(sock, mem.resolve(), strategy=strategy, trace=trace,
                                           metrics=metrics)
                vm.page_server = PageServer(argv, sock, vm.run_dir / "uffd.log")
                t0 = time.perf_counter()
                vm.page_server.start()
                vm.timings_ms["page_server_start"] = (time.perf_counter() - t0) * 1000
                backend_path = UFFD_NAME  # relative to Firecracker's cwd, the run dir
            else:
                backend_path = str(mem.resolve())
            body = cfg.SnapshotLoad(str(snap.vmstate.resolve()), backend_path, backend, track_dirty_pages,
                                    resume).body(vm.version)
            t0 = time.perf_counter()
            try:
                vm.api.put("/snapshot/load", body, timeout=300)
            except FirecrackerError as exc:
                fault = exc.fault_message or str(exc)
                if backend is MemBackend.UFFD and "Unrecognized ioctl flags" in fault:
                    raise Unsupported(f"{UFFD_OLD_FC} (Firecracker {vm.version} cannot register guest memory "
                                      f"with userfaultfd on kernel {os.uname().release}; fixed in v1.8)",
                                      method=exc.method, path=exc.path, status=exc.status,
                                      fault_message=exc.fault_message, body=exc.body) from exc
                raise
            vm.timings_ms["load_snapshot"] = (time.perf_counter() - t0) * 1000
            vm.state = "running" if resume else "paused"
            # Firecracker's own measurement of the load (µs, API level), as its perf tests read it
            fc_us = vm.flush_metrics().get("latencies_us", {}).get("load_snapshot")
            if isinstance(fc_us, int | float) and fc_us > 0:
                vm.timings_ms["fc_load_snapshot"] = fc_us / 1000
            vm._write_record()
        except BaseException:
            vm.kill()
            raise
        return vm

    # -- teardown -------------------------------------------------------------------------------------
    def wait_exit(self, timeout: float) -> int | None:
        """Wait for Firecracker to exit by itself (guest reset); its status, or None on timeout."""
        rc = self.fc.wait(timeout)
        if rc is not None:
            self.kill()
        return rc

    def kill(self) -> None:
        """Kill Firecracker and the page server, remove sockets and the namespace. Idempotent."""
        if self._fc is not None:
            self._fc.kill()
        if self.page_server is not None:
            # with Firecracker gone the server ends its session and writes trace/metrics itself
            self.page_server.stop(natural=2.0 if self._fc is not None else 0.0)
        if self.netns is not None:
            self.netns.delete()
        if self._fc is not None or self.state != "new":
            self.state = "dead"
            with contextlib.suppress(OSError):
                self._write_record()

    def detach(self) -> None:
        """Leave the VM running after this object is gone (the state dir's vm.json describes it)."""
        self.detached = True
        if self._fc is not None and self._fc._stdin_fd is not None:
            os.close(self._fc._stdin_fd)  # Firecracker keeps the FIFO open read-write itself
            self._fc._stdin_fd = None
        self._write_record()

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "pid": self.pid, "firecracker": str(self.binary),
                "firecracker_version": str(self._fc.version) if self._fc else None,
                "run_dir": str(self.run_dir), "api_sock": str(self.run_dir / "api.sock"),
                "vsock": None if self.config and self.config.vsock_cid is None else str(self.vsock_path),
                "serial_log": str(self.serial_log), "serial_in": str(self.run_dir / "serial.in"),
                "netns": self.netns.name if self.netns else None,
                "page_server_pid": self.page_server.pid if self.page_server else None,
                "restored_from": str(self.restored_from.dir) if self.restored_from else None,
                "last_snapshot": str(self.last_snapshot.dir) if self.last_snapshot else None,
                "config": self.config.to_json() if self.config else None,
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}, "updated": now_iso()}

    def _write_record(self) -> None:
        if not self.run_dir.is_dir():
            return
        tmp = self.run_dir / "vm.json.tmp"
        tmp.write_text(json.dumps(self.record(), indent=2) + "\n")
        os.replace(tmp, self.run_dir / "vm.json")
