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
  v1.8, #4578), and v1.4 registers a user-mode-only userfaultfd, so guest-kernel faults fail on host
  kernels >= 5.11 (Firecracker PR 4086, fixed in v1.5): both raised as :class:`Unsupported` before
  anything is started.
* A failed ``/snapshot/load`` makes Firecracker exit; the error carries its last log line.
* Paths baked into the snapshot (vsock socket) are relative to the run directory, which is
  Firecracker's cwd, so restored clones side by side do not collide.

Nothing runs on unnoticed: Firecracker and the page server die with the process that started them
(``lifeline``), or, for VMs meant to outlive their command (``lifeline=False``: ``vm boot``, ``vm
restore``), a supervisor (:mod:`firecracer.vmm.supervisor`) kills them if that command ends before
:meth:`MicroVM.detach`, and afterwards kills Firecracker when its page server dies. ``vm.json`` is
written before anything starts, and every process started for a VM can be found from its run directory
(:func:`~firecracer.vmm.lifeline.processes_in`). A page server's death is noticed through its pidfd in
every API request and wait, and reported with its last log line; Firecracker is killed with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from firecracer import hugepages
from firecracer.errors import FirecracerError, FirecrackerError
from firecracer.fcversion import Version, firecracker_version
from firecracer.paths import private_run_dir, state_dir
from firecracer.vmm import config as cfg
from firecracer.vmm.api import ApiClient, Unsupported, Watch
from firecracer.vmm.binary import BRAND_OLD_FC as BRAND_OLD_FC
from firecracer.vmm.binary import UFFD_OLD_FC as UFFD_OLD_FC
from firecracer.vmm.binary import UFFD_V14_FC as UFFD_V14_FC
from firecracer.vmm.binary import find_firecracker
from firecracer.vmm.binary import uffd_limit as uffd_limit
from firecracer.vmm.config import DEFAULT_BOOT_ARGS as DEFAULT_BOOT_ARGS
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.config import VMConfig as VMConfig
from firecracer.vmm.console import Console, ConsoleWaitError
from firecracer.vmm.lifeline import is_zombie, kill_all, processes_in, start_time
from firecracer.vmm.network import NetNamespace
from firecracer.vmm.pageserver import PageServer, restore_command
from firecracer.vmm.process import FirecrackerProcess, deferred_signals, last_error_line, socket_in_use
from firecracer.vmm.readahead import Readahead, ReadaheadJob
from firecracer.vmm.record import VmRecord, record_lock
from firecracer.vmm.snapshot import (
    Snapshot,
    check_compressed,
    check_loadable,
    check_mem_size,
    describe_vmstate,
    full_memory,
    mem_stats,
    now_iso,
    partial_dir,
    punch_zero_pages,
)
from firecracer.vmm.supervisor import release_supervisor, start_supervisor

VSOCK_NAME = "v.sock"
UFFD_NAME = "uffd.sock"

class MicroVM:
    """One microVM. Create, then :meth:`boot` or :meth:`restore` (a classmethod).

    :param firecracker: binary path (else the usual discovery, :func:`find_firecracker`).
    :param name: VM name (run dir ``state_dir()/vms/NAME``, Firecracker ``--id``, netns ``fcr-NAME``).
    :param lifeline: Firecracker and the page server die with this process (the default). ``False``
        for a VM meant to outlive it: a supervisor then watches it (see the module doc).
    :param purpose: shown by ``vm ls`` (e.g. which experiment run started the VM).
    """

    def __init__(self, firecracker: str | os.PathLike[str] | None = None, *, name: str | None = None,
                 run_dir: Path | None = None, log_level: str = "Warning", lifeline: bool = True,
                 purpose: str | None = None) -> None:
        self.binary = find_firecracker(os.fspath(firecracker) if firecracker is not None else None)
        self.binary_source = "given" if firecracker is not None else "discovered"
        self.name = name or f"vm-{uuid.uuid4().hex[:8]}"
        if not re.fullmatch(r"[A-Za-z0-9-]{1,40}", self.name):
            raise FirecracerError(f"VM name {self.name!r}: use 1-40 letters, digits or dashes")
        self.run_dir = Path(run_dir) if run_dir else state_dir() / "vms" / self.name
        self.log_level = log_level
        self.lifeline = lifeline
        self.purpose = purpose
        self.config: VMConfig | None = None
        self.state = "new"
        self.dead_reason: str | None = None
        self.dirty_tracking = False
        self.netns: NetNamespace | None = None
        self.page_server: PageServer | None = None
        self.restored_from: Snapshot | None = None
        self.last_snapshot: Snapshot | None = None
        self.timings_ms: dict[str, float] = {}
        self.detached = False
        self._fc: FirecrackerProcess | None = None
        self._supervisor: subprocess.Popen[bytes] | None = None
        self._supervisor_pid: int | None = None  # of an attached VM
        self._killed = False  # kill() ran to the end: never again (the run dir may be another VM's now)
        self.readahead: ReadaheadJob | None = None  # File restores with readahead:TRACE (vmm/readahead.py)
        self._owner = (os.getpid(), start_time(os.getpid()))
        self._instance: str | None = uuid.uuid4().hex  # in vm.json: whose run directory it is now

    @classmethod
    def attach(cls, name: str) -> MicroVM:
        """The VM ``name`` from the state directory (started by another process, e.g. ``vm boot``).

        The returned object is detached: leaving a ``with`` block does not kill it; :meth:`kill` does.

        :raises FirecracerError: no such VM.
        """
        run_dir = state_dir() / "vms" / name
        if not (run_dir / "vm.json").exists():
            raise FirecracerError(f"no VM named {name!r} in {state_dir() / 'vms'} (see 'firecracer vm ls')")
        rec = VmRecord.read(run_dir)
        try:
            vm = cls(rec.firecracker, name=name, run_dir=run_dir)
        except FirecracerError as exc:  # its binary was removed since: still killable
            if not rec.pid:
                raise
            vm = cls(None, name=name, run_dir=run_dir)
            vm.dead_reason = str(exc)
        vm.detached = True
        vm.lifeline = rec.lifeline
        vm.purpose = rec.purpose
        vm.state = rec.state
        vm.dead_reason = rec.dead_reason or vm.dead_reason
        vm.config = VMConfig.from_json(rec.config) if rec.config else None
        vm.dirty_tracking = rec.dirty_tracking if rec.dirty_tracking is not None else \
            bool(vm.config and vm.config.track_dirty_pages)
        vm.timings_ms = dict(rec.timings_ms)
        if rec.owner is not None:
            vm._owner = rec.owner
        vm._instance = rec.instance
        if rec.pid:
            pid, started = rec.pid, rec.pid_start
            vm._fc = FirecrackerProcess.attach(vm.binary, run_dir, name, pid)
            if started is not None and start_time(pid) != started:
                vm._fc._attached_pid = None  # that pid belongs to another process now
                vm._fc._gone_pid = pid
            if vm.state != "dead" and not vm._fc.alive():
                vm.state = "dead"
        if rec.netns:
            vm.netns = NetNamespace(rec.netns, created=True)
        if rec.page_server_pid:
            vm.page_server = PageServer.attach(rec.page_server_pid, run_dir / UFFD_NAME,
                                               run_dir / "uffd.log", started=rec.page_server_start)
            vm._watch_page_server()
        sup = rec.supervisor_pid
        if sup and start_time(sup) == rec.supervisor_start:
            vm._supervisor_pid = sup
        for attr in ("restored_from", "last_snapshot"):
            snap = getattr(rec, attr)
            if snap:
                with contextlib.suppress(FirecracerError):
                    setattr(vm, attr, Snapshot.load(snap))
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
        if self.detached:
            self.require_running()
        return self.fc.api

    def require_running(self) -> None:
        """Fail in one line saying why the VM is gone (instead of a missing socket further down).

        :raises FirecracerError: the VM is not running, with its recorded death or the console's last word.
        """
        if not self.alive():
            why = self.guest_death(self.dead_reason)
            raise FirecracerError(f"{self.name}: the VM is not running ({why})")

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

    @property
    def console(self) -> Console:
        """The guest's serial console (reading it, its last lines, why the guest died)."""
        return Console(self.serial_log)

    def alive(self) -> bool:
        return self._fc is not None and self._fc.alive()

    # -- boot ----------------------------------------------------------------------------------------
    def _spawn(self, netns_wanted: bool) -> None:
        if self._fc is not None:
            raise FirecracerError(f"{self.name}: already started")
        if socket_in_use(self.run_dir / "api.sock"):
            raise FirecrackerError(f"{self.run_dir / 'api.sock'}: socket path in use by another process "
                                   f"(a VM named {self.name!r} is running; pick another name or kill it)")
        live = processes_in(self.run_dir) if self.run_dir.is_dir() else []
        if live:
            raise FirecracerError(f"{self.run_dir}: processes {', '.join(map(str, live))} still run for a "
                                  f"VM named {self.name!r}; pick another name or 'firecracer vm kill "
                                  f"{self.name}'")
        if self.run_dir.exists() and (self.run_dir / "vm.json").exists():
            # leftover of a dead VM with this name: keep nothing but make room
            for f in ("serial.log", "firecracker.log", "firecracker.err", "metrics.json", "vm.json",
                      "uffd.log", "supervisor.log"):
                (self.run_dir / f).unlink(missing_ok=True)
        try:
            private_run_dir(self.run_dir)
        except OSError as exc:
            raise FirecracerError(f"{self.run_dir}: cannot create the VM's run directory "
                                  f"({exc.strerror or exc})") from None
        self.state = "starting"
        self._write_record()  # before anything runs: whatever happens next, 'vm ls --all' lists it
        try:
            if not self.lifeline:
                self._supervisor = start_supervisor(self.run_dir)
                self._write_record()
            if netns_wanted:
                self.netns = NetNamespace.create(f"fcr-{self.name}")
                self._write_record()
            self._fc = FirecrackerProcess(self.binary, self.run_dir, self.name, log_level=self.log_level,
                                          netns=self.netns.name if self.netns else None,
                                          lifeline=self.lifeline)
            t0 = time.perf_counter()
            self._fc.start()
            self.timings_ms["spawn"] = (time.perf_counter() - t0) * 1000
            self._write_record()
        except BaseException:
            self.kill()
            raise

    def _watch_page_server(self) -> None:
        """Abort any API request at once when the page server dies (:class:`~firecracer.vmm.api.Watch`)."""
        server = self.page_server
        if server is None or self._fc is None:
            return
        self._fc.api.watches = [Watch(fd=server.pidfd,
                                      fire=lambda what: self._page_server_died(f"during {what}"))]

    def _page_server_died(self, when: str) -> str:
        """Kill the VM whose page server died; the sentence that says so (with the server's last log line)."""
        server = self.page_server
        why = (server.describe_death(when) if server is not None else None) or \
            f"the page server is gone {when}"
        pid = self.pid
        self.dead_reason = why
        self.kill()
        return f"{self.name}: {why}; Firecracker (pid {pid}) was killed, as it would hang on its next fault"

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
        self.config = config
        self.dirty_tracking = config.track_dirty_pages
        self._spawn(config.network)
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
        for path, body in c.requests(self.version, tap=self.netns.tap if self.netns else None,
                                     vsock_uds=VSOCK_NAME):
            self.api.put(path, body)

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

    def resume(self, *, timeout: float | None = None) -> None:
        """``PATCH /vm Resumed``; ``timeout`` (s, default the API's) bounds the wait for Firecracker's answer,
        which comes only after a request it is still busy with (e.g. a snapshot being written)."""
        t0 = time.perf_counter()
        self.api.patch("/vm", {"state": "Resumed"}, timeout=timeout)
        self.timings_ms["resume"] = (time.perf_counter() - t0) * 1000
        self.state = "running"
        self._write_record()

    def ctrl_alt_del(self) -> None:
        """``SendCtrlAltDel``: a Linux guest with an i8042 driver reboots (Firecracker then exits)."""
        self.api.put("/actions", {"action_type": "SendCtrlAltDel"})

    def set_balloon(self, amount_mib: int) -> None:
        """``PATCH /balloon``: inflate (or deflate) the balloon configured at boot to ``amount_mib``.

        Firecracker releases inflated pages with ``madvise(MADV_DONTNEED)``; under a Uffd restore the
        page server sees them as ``UFFD_EVENT_REMOVE`` and serves them as zero afterwards.
        """
        if amount_mib < 0:
            raise FirecrackerError(f"{self.name}: balloon size {amount_mib} MiB is negative")
        self.api.patch("/balloon", {"amount_mib": amount_mib})

    def balloon(self) -> dict[str, Any]:
        """``GET /balloon``: the configured target (``amount_mib``) and settings."""
        got = self.api.get("/balloon")
        return got if isinstance(got, dict) else {}

    def flush_metrics(self) -> dict[str, Any]:
        """``FlushMetrics`` and return the newest metrics object (empty dict if none was written)."""
        self.api.put("/actions", {"action_type": "FlushMetrics"})
        return self.fc.latest_metrics()

    def check_page_server(self, when: str = "while the VM ran") -> None:
        """Raise (and kill the VM) if the Uffd page server died while Firecracker still runs.

        Without its server Firecracker hangs forever on the next missing page, so this is an error
        whatever the server's exit status; the message carries the server's last log line.
        """
        server = self.page_server
        if server is None or server.alive() or not self.alive():
            return
        raise FirecrackerError(self._page_server_died(when))

    @contextlib.contextmanager
    def page_server_guard(self, when: str = "while the guest ran") -> Iterator[None]:
        """Within the block, a page-server death kills Firecracker at once (so a blocking wait on the guest,
        e.g. an HTTP request over vsock, ends instead of running into its timeout), and the block raises
        that death, named with the server's last log line, instead of whatever the wait saw."""
        server = self.page_server
        if server is None or self._fc is None or not self.pid:
            yield
            return
        with server.kills_on_death(self.pid, f"{self.name}-page-server-guard") as fired:
            try:
                yield
            except Exception:
                if fired.is_set():
                    raise FirecrackerError(self._page_server_died(when)) from None
                raise
        if fired.is_set():
            raise FirecrackerError(self._page_server_died(when))

    # -- serial console -----------------------------------------------------------------------------
    def send_serial(self, data: bytes) -> None:
        self.fc.send_serial(data)

    def guest_death(self, death: str | None = None, also: Sequence[re.Pattern[str]] = ()) -> str:
        """Why the guest is gone, in one line: Firecracker's end (or ``death``, e.g. the recorded reason)
        and what the console said last (:meth:`Console.said`; ``also``: a guest program's own verdict
        lines, such as ``firecracer.guest.jvm.JVM_DEATH_RX``)."""
        death = death or (self.fc.describe_death() if self._fc else None) or "Firecracker is not running"
        said = self.console.said(also)
        return death + (f"; the guest said: {said}" if said else "")

    def wait_serial(self, pattern: str, timeout: float = 30.0, *,
                    since: int = 0) -> tuple[re.Match[str], int]:
        """Wait until ``pattern`` (regex, multiline) appears in the serial output after byte offset ``since``.

        Reads only the new part of the log on each poll. Returns the match (positions relative to
        ``since``) and the byte offset just past it (pass as ``since`` to wait for the next one).

        :raises FirecrackerError: timeout, or Firecracker exited (with its last log line).
        """
        def gone() -> str | None:
            self.check_page_server()
            if self.alive():
                return None
            death = self.fc.describe_death() if self._fc else None
            server_line = self.page_server.describe_death() if self.page_server else None
            return (death or "Firecracker is not running") + (f"; {server_line}" if server_line else "")

        try:
            return self.console.wait(re.compile(pattern, re.MULTILINE), timeout, since=since, gone=gone)
        except ConsoleWaitError as exc:
            raise FirecrackerError(f"{self.name}: {exc}") from None

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self, dest: str | os.PathLike[str], snapshot_type: SnapshotType = SnapshotType.FULL, *,
                 punch_holes: bool = False, resume: bool = False, parent: Snapshot | None = None,
                 labels: dict[str, Any] | None = None) -> Snapshot:
        """Pause (if running), write ``dest/{vmstate,mem,snapshot.json}``, optionally resume.

        Everything is written into ``.DEST.partial-PID`` beside ``dest`` and renamed into place at the
        end, so ``dest`` is either a complete snapshot or absent (a dead writer's partial directory is
        removed by the next snapshot into the same place).

        :param parent: for Diff, the snapshot this one's pages apply to (default: this VM's last
            snapshot, or the one it was restored from); its id is recorded, so the Diff is never
            merged onto another snapshot later.
        :param punch_holes: deallocate all-zero pages of the memory file afterwards.
        :param resume: resume the VM once the snapshot is in place (else it stays paused).
        :raises FirecracerError: ``dest`` is not empty or not writable, Diff without a parent or without
            dirty-page tracking, or Firecracker refused.

        A snapshot that fails or is interrupted (any exception, Ctrl-C, SIGTERM unwinding as
        ``SystemExit``) leaves the VM as it found it: a VM this call paused is resumed (after Firecracker
        has finished with the interrupted request), one that was paused already stays paused. The error's
        line ends with the state the VM is in then (``the VM NAME is running again`` / ``is paused (as it
        was before the snapshot)`` / ``is still paused: resuming it failed (…)`` / ``is not running``);
        an interrupt carries that sentence as a note (``__notes__``), which the CLI prints.
        """
        d = Path(dest)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise FirecracerError(f"{d}: snapshot directory exists and is not empty")
        if snapshot_type is SnapshotType.DIFF:
            parent = parent or self.last_snapshot or self.restored_from
            if parent is None:
                raise FirecracerError(f"{self.name}: a Diff snapshot needs a parent snapshot "
                                      "(take a Full one first)")
            if not self.dirty_tracking:
                how = "restore" if self.restored_from is not None else "boot"
                raise FirecracerError(
                    f"{self.name}: a Diff snapshot needs dirty-page tracking, and this VM's {how} did not "
                    f"enable it (Firecracker would write every page: a full-size 'Diff'); {how} it with "
                    "--track-dirty-pages, or take a Full snapshot")
        tmp = partial_dir(d)
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise FirecracerError(f"{d}: cannot write the snapshot there ({exc.strerror or exc})") from None
        paused_here = False
        try:
            if self.state == "running":
                paused_here = True  # also when PATCH /vm fails half-way: the recovery asks Firecracker
                self.pause()
            t0 = time.perf_counter()
            req = cfg.SnapshotCreate(str((tmp / "vmstate").resolve()), str((tmp / "mem").resolve()),
                                     snapshot_type)
            self.api.put("/snapshot/create", req.body(self.version), timeout=600)
            create_ms = (time.perf_counter() - t0) * 1000
            fmt = describe_vmstate(self.binary, tmp / "vmstate")
            timings = {"create": round(create_ms, 3)}
            punched = 0
            if punch_holes:
                t1 = time.perf_counter()
                punched = punch_zero_pages(tmp / "mem")
                timings["punch_holes"] = round((time.perf_counter() - t1) * 1000, 3)
            mem = {**mem_stats(tmp / "mem"), "holes_punched": punch_holes, "bytes_punched": punched}
            snap = Snapshot.made(d.absolute(), snapshot_type, vm=self.config.to_json() if self.config else {},
                                 firecracker=self.binary, version=str(self.version), snapshot_format=fmt,
                                 parent=parent, labels=labels, mem=mem, timings_ms=timings)
            snap.write(tmp / "snapshot.json")
            try:
                os.rename(tmp, d)  # onto nothing, or onto the empty directory that was there
            except OSError as exc:
                raise FirecracerError(f"{d}: cannot move the finished snapshot into place "
                                      f"({exc.strerror or exc})") from None
            snap = Snapshot.load(d)
        except BaseException as exc:
            # resume first: Firecracker answers only once it is done with an interrupted create, so the
            # partial directory is removed after its last write
            said = self._recover_from_failed_snapshot(paused_here, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise FirecracerError(f"{d}: cannot write the snapshot ({exc.strerror or exc}); "
                                      f"{said}") from None
            if isinstance(exc, FirecracerError) and len(exc.args) == 1 and str(exc) == exc.args[0]:
                exc.args = (f"{exc.args[0]}; {said}",)  # the same typed error, one line that says it all
            else:
                exc.add_note(said)
            raise
        self.last_snapshot = snap
        self._write_record()
        if resume:
            try:
                self.resume()
            except FirecracerError as exc:
                raise FirecracerError(f"{self.name}: the snapshot in {d} is complete, but the VM is still "
                                      f"paused: resuming it failed ({exc})") from None
        return snap

    def _recover_from_failed_snapshot(self, paused_here: bool, exc: BaseException) -> str:
        """Resume a VM that :meth:`snapshot` paused before it failed; the sentence naming its state now.

        Signals are held back meanwhile (a second Ctrl-C must not leave the VM paused half-way); when the
        failure was itself an interrupt they are dropped, as the process is ending anyway.
        """
        if not self.alive():
            return f"the VM {self.name} is not running"
        with deferred_signals() as deferred:
            try:
                # Firecracker answers only once it is done with a create we stopped waiting for: allow the
                # create's own bound
                running = self._fc_state(timeout=600) == "Running"
                if running:
                    if self.state == "paused":  # a pause that failed half-way: our record must agree
                        self.state = "running"
                        self._write_record()
                    return f"the VM {self.name} is running"
                if not paused_here:
                    return f"the VM {self.name} is paused (as it was before the snapshot)"
                self.resume(timeout=600)
                state = self._fc_state()
                if state != "Running":
                    return (f"the VM {self.name} is still paused: Firecracker says {state!r} after the "
                            f"resume; 'firecracer vm resume {self.name}'")
                return f"the VM {self.name} is running again (resumed after the failed snapshot)"
            except FirecracerError as why:
                if not self.alive():
                    return f"the VM {self.name} is not running"
                return (f"the VM {self.name} is still paused: resuming it failed ({why}); "
                        f"'firecracer vm resume {self.name}'")
            finally:
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    deferred.pending.clear()

    def _fc_state(self, timeout: float | None = None) -> str:
        """Firecracker's own word on the VM (``GET /``: ``Running``, ``Paused``, ``Not started``)."""
        info = self.api.request("GET", "/", timeout=timeout)
        state = info.get("state") if isinstance(info, dict) else None
        if not isinstance(state, str):
            raise FirecrackerError(f"GET /: no state in Firecracker's answer {info!r}", method="GET",
                                   path="/")
        return state

    @classmethod
    def restore(cls, snapshot: Snapshot | str | os.PathLike[str], *,
                firecracker: str | os.PathLike[str] | None = None, name: str | None = None,
                run_dir: Path | None = None, backend: MemBackend = MemBackend.FILE, resume: bool = True,
                track_dirty_pages: bool = False, page_server: Sequence[str] | None = None,
                strategy: str | None = None, trace: Path | None = None, metrics: Path | None = None,
                log_level: str = "Warning", check: bool = True, lifeline: bool = True,
                purpose: str | None = None, working_set: bool = True,
                readahead: Readahead | None = None, compressed: bool = False) -> MicroVM:
        """Start a fresh Firecracker and load ``snapshot`` into it.

        :param firecracker: the binary; by default the one recorded in ``snapshot.json`` when it still
            exists (``vm.binary_source`` says which was used), else the usual discovery.
        :param backend: ``File`` (Firecracker maps the memory file) or ``Uffd`` (a page server
            started here serves faults; ``page_server`` overrides its argv, where ``{socket}``,
            ``{mem}`` and ``{mem_id}`` are replaced by the socket and memory-file paths and the
            snapshot's id; by default ``firecracer uffd serve`` with ``strategy``/``trace``/``metrics``,
            and a working-set file beside the trace unless ``working_set`` is false).
        :param readahead: File backend only: read the working set recorded in its trace into the host
            page cache before the load, or from a thread racing the vCPUs (``vm.readahead`` has the facts).
        :param compressed: Uffd only: serve from the compressed memory file (``mem.fcz``) even when the raw
            one was kept (it is the only choice when it was not).
        :param check: verify up front that this Firecracker can load the snapshot's data format.
        :raises Unsupported: Uffd with a Firecracker that cannot do it on this host kernel
            (:func:`uffd_limit`), before anything is started.
        :raises FirecracerError: incompatible/corrupt snapshot, a memory file of the wrong size, a
            replaced Diff parent, page server death or load failure; nothing is left running.
        """
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot.load(snapshot)
        if compressed and snap.compressed is None:
            raise FirecracerError(f"{snap.dir}: its memory is not compressed ('firecracer vm compress "
                                  f"{snap.dir} --keep-raw' first)")
        if (snap.compressed_only or compressed) and backend is not MemBackend.UFFD:
            raise FirecracerError(f"{snap.dir}: its memory is compressed ({snap.zmem_file.name}) and the "
                                  "File backend maps the memory file as it is: restore with --uffd, or "
                                  f"'firecracer vm decompress {snap.dir}' first")
        source = "given"
        if firecracker is None:
            firecracker, source = snap.recorded_firecracker()
        vm = cls(firecracker, name=name, run_dir=run_dir, log_level=log_level, lifeline=lifeline,
                 purpose=purpose)
        vm.binary_source = source
        if backend is MemBackend.UFFD:
            limit = uffd_limit(firecracker_version(vm.binary))
            if limit:
                raise Unsupported(limit)
        if check:
            check_loadable(snap, vm.binary)
        snap.check_huge_pages(uffd=backend is MemBackend.UFFD)  # before Firecracker: it would fail later
        vm.config = VMConfig.from_json(snap.vm) if snap.vm.get("kernel") else None
        vm.restored_from = snap
        vm.dirty_tracking = track_dirty_pages
        if snap.compressed_only or compressed:  # mem.fcz, checked (index, snapshot.json, RAM size) first
            mem = check_compressed(snap)
        else:
            mem = full_memory(snap)
            check_mem_size(snap, mem)
        if readahead is not None:  # planned before anything starts: a trace of another snapshot is refused
            if backend is MemBackend.UFFD:
                raise FirecracerError(f"{readahead}: readahead fills the page cache the File backend reads; "
                                      "with --uffd use prefetch:TRACE")
            vm.readahead = ReadaheadJob(readahead, mem.resolve(), snap.id or None)
        try:
            vm._spawn(bool(vm.config and vm.config.network))
            if backend is MemBackend.UFFD:
                sock = vm.run_dir / UFFD_NAME
                argv = restore_command(page_server, sock, mem.resolve(), mem_id=snap.id, strategy=strategy,
                                       trace=trace, metrics=metrics, working_set=working_set)
                vm.page_server = PageServer(argv, sock, vm.run_dir / "uffd.log", lifeline=vm.lifeline)
                t0 = time.perf_counter()
                vm.page_server.start()
                vm.timings_ms["page_server_start"] = (time.perf_counter() - t0) * 1000
                vm._watch_page_server()
                vm._write_record()
                backend_path = UFFD_NAME  # relative to Firecracker's cwd, the run dir
            else:
                backend_path = str(mem.resolve())
                if vm.readahead is not None:
                    vm.readahead.start()
                    if not readahead or not readahead.background:
                        vm.timings_ms["readahead"] = vm.readahead.result.ms
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
                server = vm.page_server
                if server is not None and str(server.pid) not in str(exc):  # the server's own words say why
                    why = server.describe_death() or server.last_words()
                    if why:
                        raise FirecrackerError(f"{exc}; {why}", method=exc.method, path=exc.path,
                                               status=exc.status, fault_message=exc.fault_message,
                                               body=exc.body) from exc
                raise
            vm.timings_ms["load_snapshot"] = (time.perf_counter() - t0) * 1000
            vm.check_page_server("right after PUT /snapshot/load")
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
        """Kill Firecracker, the page server and anything else started for this VM; remove sockets and
        the namespace. Idempotent.

        Once a newer VM of the same name took the run directory over (its ``vm.json`` names another
        instance), only this VM's own processes are killed: the sockets, the record and whatever else
        runs there are the newer VM's.
        """
        if self._killed:
            return
        if self.readahead is not None:
            self.readahead.stop()
        owns = self.state == "new" or self._owns_run_dir()
        if self._supervisor_pid is not None:  # attached: its supervisor must not race our cleanup
            kill_all([self._supervisor_pid])
            self._supervisor_pid = None
        if self._fc is not None:
            self._fc.kill(cleanup=owns)
        if self.page_server is not None:
            # with Firecracker gone the server ends its session and writes trace/metrics itself
            self.page_server.stop(natural=2.0 if self._fc is not None else 0.0, cleanup=owns)
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            release_supervisor(sup)
        if owns and self.state != "new" and self.run_dir.is_dir():
            left = processes_in(self.run_dir)
            if left:
                kill_all(left)
                deadline = time.monotonic() + 5
                while any(not is_zombie(p) for p in left) and time.monotonic() < deadline:
                    time.sleep(0.01)
        if self.netns is not None:
            self.netns.delete()
        if self._fc is not None or self.state != "new":
            self.state = "dead"
            if owns:
                with contextlib.suppress(OSError):
                    self._write_record()
        self._killed = True

    def _owns_run_dir(self) -> bool:
        """Whether ``vm.json`` is still this VM's (a newer VM of the same name writes its own instance
        there before it starts anything; a missing record is nobody's to sweep)."""
        rec = VmRecord.find(self.run_dir)
        return rec is not None and rec.instance == self._instance

    def detach(self) -> None:
        """Leave the VM running after this object is gone (the state dir's vm.json describes it).

        A VM started with ``lifeline=False`` is handed to its supervisor, which answers only once it
        watches Firecracker and the page server; if either is gone already this raises.
        """
        self.detached = True
        if self._fc is not None and self._fc._stdin_fd is not None:
            os.close(self._fc._stdin_fd)  # Firecracker keeps the FIFO open read-write itself
            self._fc._stdin_fd = None
        self._write_record()
        sup = self._supervisor
        if sup is None or sup.stdin is None or sup.stdout is None:
            return
        fc_pid = self.pid or 0
        server_pid = (self.page_server.pid or 0) if self.page_server else 0
        server_start = (start_time(server_pid) or 0) if server_pid else 0
        line = f"detach {fc_pid} {start_time(fc_pid) or 0} {server_pid} {server_start}\n"
        answer = ""
        try:
            sup.stdin.write(line.encode())
            sup.stdin.flush()
            if select.select([sup.stdout], [], [], 30)[0]:
                answer = sup.stdout.readline().decode(errors="replace").strip()
        except OSError as exc:
            answer = f"dead the supervisor is gone ({exc})"
        if not answer and sup.poll() is not None:
            said = last_error_line(self.run_dir / "supervisor.log")
            answer = (f"dead the supervisor exited with status {sup.returncode}"
                      + (f": {said}" if said else f" (log: {self.run_dir / 'supervisor.log'})"))
        self._supervisor = None
        with contextlib.suppress(OSError):
            sup.stdin.close()
            sup.stdout.close()
        if answer != "ok":
            why = answer.removeprefix("dead ").strip() or "the supervisor did not answer within 30 s"
            self.detached = False
            self.dead_reason = why
            self.kill()
            raise FirecrackerError(f"{self.name}: could not hand the VM over to its supervisor: {why}")

    def record(self) -> VmRecord:
        """What ``vm.json`` says of this VM now."""
        server = self.page_server
        sup_pid = self._supervisor.pid if self._supervisor is not None else self._supervisor_pid
        return VmRecord(
            name=self.name, state=self.state, pid=self.pid,
            pid_start=start_time(self.pid) if self.pid else None,
            firecracker=str(self.binary), firecracker_version=str(self._fc.version) if self._fc else None,
            run_dir=str(self.run_dir), api_sock=str(self.run_dir / "api.sock"),
            vsock=None if self.config and self.config.vsock_cid is None else str(self.vsock_path),
            serial_log=str(self.serial_log), serial_in=str(self.run_dir / "serial.in"),
            netns=self.netns.name if self.netns else None,
            page_server_pid=server.pid if server else None,
            page_server_start=start_time(server.pid) if server and server.pid else None,
            supervisor_pid=sup_pid, supervisor_start=start_time(sup_pid) if sup_pid else None,
            owner=self._owner, instance=self._instance, lifeline=self.lifeline, detached=self.detached,
            purpose=self.purpose, dead_reason=self.dead_reason, dirty_tracking=self.dirty_tracking,
            restored_from=str(self.restored_from.dir) if self.restored_from else None,
            last_snapshot=str(self.last_snapshot.dir) if self.last_snapshot else None,
            config=self.config.to_json() if self.config else None,
            timings_ms={k: round(v, 3) for k, v in self.timings_ms.items()}, updated=now_iso())

    def _write_record(self) -> None:
        if not self.run_dir.is_dir():
            return
        with record_lock(self.run_dir):
            self.record().write(self.run_dir)
