"""``jvm``: the JVM image under Firecracker, on hosts whose KVM boots Linux guests (bare metal).

Per variant: boot the image (``guest.kernel`` + ``guest.rootfs``) with the variant's JVM options on the
kernel command line (``FC_JAVA_OPTIONS``, read by the image's init) and NMT detail (``FC_NMT=detail``);
wait until the guest agent answers and the service returns HTTP 200 (``workload.ready_timeout_s``);
``workload.warmup_requests`` requests; agent ``prepare`` (``workload.prepare``); collect ``memmap.npz`` +
``nmt.txt`` into the variant directory; Full snapshot. Per run: restore (File, or Uffd with the page
server and the run's strategy; ``prefetch`` records its trace with an ondemand restore first), resume,
the first request over vsock (first byte and complete response), collect the trace, kill. The runner then
attributes the restored pages to NMT categories (:mod:`firecracer.experiment.attribution`).

Talking to the guest goes through Firecracker's vsock Unix socket (``CONNECT <port>``): the agent on port
52 and the app's HTTP port, which the image's agent forwards from vsock to the JVM. :class:`GuestDriver`
does that part and is tested here against a real agent and a real HTTP server behind an emulated vsock
socket; the whole backend needs a KVM host where Linux guests boot, which PVM-nested hosts (ours) are not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firecracer import host
from firecracer.agentclient.client import AgentClient, AgentError
from firecracer.agentclient.collect import collect_agent
from firecracer.errors import FirecracerError
from firecracer.experiment.backend import Backend, RunFailed, RunOutcome
from firecracer.experiment.backends import process as crac
from firecracer.experiment.backends._common import (
    check_uffd_strategies,
    compress_if_asked,
    ensure_prefetch_trace,
    forget_prefetch_trace,
    keep_logs,
    vm_name,
)
from firecracer.experiment.backends._restore import RestoreRun
from firecracer.experiment.plan import Run
from firecracer.experiment.spec import Request, Spec, Strategy, Variant
from firecracer.experiment.store import now_iso
from firecracer.experiment.workingset import from_trace
from firecracer.fcversion import firecracker_version
from firecracer.formats import RecordingFacts, this_host
from firecracer.guest.jvm import JVM_CRASH, JVM_DEATH_RX
from firecracer.hugepages import check_pool
from firecracer.image.manifest import with_image_init
from firecracer.paths import state_dir
from firecracer.vmm.binary import find_firecracker
from firecracer.vmm.machine import DEFAULT_BOOT_ARGS, MicroVM, VMConfig
from firecracer.vmm.vsock import vsock_http

AGENT_PORT = 52


#: how a preparation failure caused by the guest itself (not by us) begins
AFTER_READY = "the guest was lost after it was ready: "
#: what a variant's collect writes into its work directory (firecracer.agentclient.collect)
COLLECTED = ("recording.json", "memmap.npz", "memmap.txt", "nmt.txt", "smaps")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def answered(status: int) -> bool:
    """A request the service answered: 2xx, or a redirect (a form's POST answers 302 to its result)."""
    return 200 <= status < 400


def ready_path(requests: tuple[Request, ...]) -> str:
    """What readiness asks for: the first GET of the workload (a POST would write), else ``/``."""
    return next((q.path for q in requests if q.method == "GET" and not q.body), "/")


@dataclass(frozen=True)
class HttpTiming:
    """One HTTP exchange over vsock: status, seconds to the first response byte and to EOF, bytes."""

    status: int
    first_byte_s: float
    total_s: float
    nbytes: int
    retried: tuple[str, ...] = ()


class GuestDriver:
    """The guest as seen through Firecracker's vsock Unix socket ``uds``: agent and HTTP service."""

    def __init__(self, uds: Path, *, app_port: int = 8080, path: str = "/",
                 agent_port: int = AGENT_PORT) -> None:
        self.uds = uds
        self.app_port = app_port
        self.path = path  # what readiness asks for (GET)
        self.agent_address = f"vsock:{uds}:{agent_port}"

    def agent(self, timeout: float = 10.0) -> AgentClient:
        return AgentClient.connect(self.agent_address, timeout=timeout)

    def request(self, timeout: float = 30.0, retries: int = 1, q: Request | None = None) -> HttpTiming:
        """``q`` (default ``GET path``) over vsock (``CONNECT app_port``); times from before connecting (the
        last attempt).

        The reply ends at its Content-Length (or last chunk), not at EOF: Firecracker's vsock does not
        pass the guest's half-close on, so waiting for EOF could wait forever. ``retries`` > 1 retries a
        connection dropped before any byte (right after a restore the guest resets its vsock transport);
        ``retried`` says why, so no retry goes unreported.
        """
        q = q or Request(path=self.path)
        r = vsock_http(self.uds, self.app_port, q.path, method=q.method, body=q.body, timeout=timeout,
                       retries=retries)
        return HttpTiming(r.status, r.first_byte_ms / 1e3, r.latency_ms / 1e3, len(r.body), r.retried)

    def wait_ready(self, timeout: float, vm: MicroVM | None = None) -> dict[str, Any]:
        """Until the agent answers ``ping`` and the service answers 200; the ping reply. Bounded.

        With ``vm``, a guest that dies (kernel panic, the JVM's fatal error, a reboot) ends the wait at
        once with what its console said, instead of after ``timeout`` with "connection refused"; so does
        one whose console shows it cannot recover (a stalled CPU, the JVM's fatal-error banner). A guest
        that is merely not ready in time is reported with its console's last line (where it got to).
        """
        deadline = time.monotonic() + timeout
        last = "nothing answered"
        seen = 0  # console bytes already searched for a stall (less a line's worth, for split lines)
        while time.monotonic() < deadline:
            if vm is not None:
                if not vm.alive():
                    raise RunFailed("ready", "the guest died before it was ready: "
                                             f"{vm.guest_death(also=[JVM_DEATH_RX])}")
                broken = vm.console.broken(seen, also=[JVM_CRASH])
                if broken:
                    raise RunFailed("ready", f"the guest broke before it was ready: {broken}")
                seen = max(seen, vm.console.size() - 2048)
            try:
                with self.agent(timeout=min(5.0, timeout)) as a:
                    ping = a.ping()
                r = self.request(timeout=min(10.0, timeout))
                if r.status == 200:
                    return ping
                last = f"the service answered HTTP {r.status}"
            except FirecracerError as exc:
                last = str(exc)
            time.sleep(0.2)
        said = "".join(f"; the console's last line: {ln}" for ln in (vm.console.last_lines(1) if vm else []))
        raise RunFailed("ready", f"guest not ready within {timeout:g} s: {last}{said}")

    def warm_up(self, n: int, timeout: float, requests: tuple[Request, ...] = ()) -> list[float]:
        """``n`` requests, cycling through ``requests`` (default ``GET path``), each answered with a
        success (2xx or a redirect); their total times in ms."""
        out = []
        for i in range(n):
            q = requests[i % len(requests)] if requests else None
            r = self.request(timeout, q=q)
            if not answered(r.status):
                raise RunFailed("warmup", f"warm-up request {i + 1} ({q or 'GET ' + self.path}) answered "
                                          f"HTTP {r.status}")
            out.append(r.total_s * 1e3)
        return out

    def prepare_and_collect(self, steps: list[str], dest: Path, timeout: float,
                            sections: list[str] | None = None, pid: int | None = None) -> dict[str, Any]:
        """Agent ``prepare`` steps, then the recording ``collect VM`` makes (``memmap.npz`` with the
        kernel's own allocations named, ``nmt.txt`` of the JVM, smaps) into ``dest``.

        One collector for both paths (:func:`firecracer.agentclient.collect.collect_agent`): the study's
        recordings then attribute a restore exactly as a recording made by hand does.
        """
        facts: dict[str, Any] = {}
        try:
            with self.agent(timeout=timeout) as a:
                if steps:
                    rep = a.prepare(steps, pid=pid)
                    facts["prepare"] = rep
                    if not rep.get("ok"):
                        bad = [s for s in rep.get("steps", []) if not (s.get("ok") or s.get("skipped"))]
                        raise RunFailed("prepare", f"prepare step(s) failed: {json.dumps(bad)[:300]}")
                pids = None
                if sections is not None and list(sections) == ["processes"]:  # only the JVM's pages
                    jvms = a.ping().get("jvm_pids") or []
                    pids = [pid] if pid is not None else [int(jvms[0])] if jvms else None
                summary = collect_agent(a, dest, pids=pids, jvm_pid=pid, sections=sections,
                                        source="firecracker")
        except AgentError as exc:
            raise RunFailed("collect", str(exc)) from None
        if summary.jvm_pid is None or not (dest / "nmt.txt").exists():
            raise RunFailed("collect", "no NMT report of the JVM: " + "; ".join(summary.problems))
        facts["jvm_pid"] = summary.jvm_pid
        if summary.problems:
            facts["collect_problems"] = summary.problems
        return facts


@dataclass
class JvmState:
    variant: Variant
    workdir: Path
    snapdir: Path
    prefetch_trace: Path | None = None
    scratch: Path | None = None  # the CRIU checkpoint's drive, when the study has process restores


class JvmBackend(Backend[JvmState]):
    """See module doc."""

    name = "jvm"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self._fc: Path | None = None
        self._fc_version = ""

    def check(self) -> None:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise FirecracerError("the jvm backend needs a usable /dev/kvm (see 'firecracer doctor')")
        pvm = host.check_pvm_nested()
        if pvm.ok:
            raise FirecracerError("this host's KVM is PVM-nested: no Linux guest (hence no JVM) boots under "
                                  "Firecracker here; run the study on a bare-metal KVM host, or use the "
                                  "probe backend")
        for label, p in (("guest.kernel", self.spec.guest.kernel), ("guest.rootfs", self.spec.guest.rootfs)):
            if p is None or not p.is_file():
                raise FirecracerError(f"{self.spec.path}: {label} {p} is not a file (build it with "
                                      "'firecracer image kernel' / 'firecracer image rootfs')")
        if self.process_kinds and not (shutil.which("mkfs.ext4") or Path("/sbin/mkfs.ext4").exists()):
            raise FirecracerError(f"{self.spec.path}: criu restores need mkfs.ext4 on this host for the "
                                  "checkpoint's scratch drive (apt-get install e2fsprogs)")
        self._fc = find_firecracker(self.spec.firecracker)
        version = firecracker_version(self._fc)
        self._fc_version = str(version)
        check_uffd_strategies(self._fc, version, self.spec.strategies)
        if any(v.huge for v in self.spec.variants):
            check_pool(self.spec.guest.mem_size_mib, f"{self.spec.path}: 2 MiB variants")

    def versions(self) -> dict[str, Any]:
        return {"firecracker": self._fc_version, "backend": "JVM image under Firecracker",
                "kernel_image": str(self.spec.guest.kernel), "rootfs": str(self.spec.guest.rootfs)}

    def warmup_requests(self, variant: Variant) -> int:
        """Requests before the snapshot: the variant's own count (a k-sweep), else the workload's."""
        if variant.warmup_requests is not None:
            return variant.warmup_requests
        return self.spec.workload.warmup_requests

    @property
    def process_kinds(self) -> bool:
        """The study restores the JVM process too (``criu``, ``criu-lazy``): every boot is CRIU-ready."""
        return any(s.is_process for s in self.spec.strategies)

    def rootfs(self, variant: Variant) -> Path:
        """The variant's own image, else the study's."""
        p = variant.rootfs or self.spec.guest.rootfs
        assert p is not None, "parse_spec requires guest.rootfs for the jvm backend"
        return p

    def boot_args(self, variant: Variant, java: bool = True) -> str:
        """Kernel command line: Firecracker's defaults, the spec's, NMT detail and the JVM options.

        A study with process restores boots every JVM CRIU-ready (``FC_CRAC=on``), so VM and process
        restores see the same JVM; ``java=False`` is a process restore's boot (no JVM of its own).
        """
        opts = " ".join(shlex.quote(o) for o in variant.jvm_options)
        extra = " FC_CRAC=on" if self.process_kinds else ""
        if not java:
            extra += " FC_JAVA=off"
        base = f"{DEFAULT_BOOT_ARGS} {self.spec.guest.boot_args} FC_NMT=detail{extra}".strip()
        args = with_image_init(base, self.rootfs(variant))
        if '"' in opts:
            raise RunFailed("boot", f"variant {variant.name}: JVM options may not contain '\"' (kernel "
                                    "command lines cannot quote it)")
        return f'{args} FC_JAVA_OPTIONS="{opts}"' if opts and java else args

    def scratch_path(self, workdir: Path) -> Path:
        """The CRIU checkpoint's drive: beside the variant's snapshot (in L1's tmpfs in the lab)."""
        snap = self.snapshot_dir(workdir)
        return snap.with_name(snap.name + "-checkpoint.ext4")

    @staticmethod
    def snapshot_dir(workdir: Path) -> Path:
        """Where a variant's snapshot lives: in the results, or in L1's tmpfs when in the lab.

        In the lab the results directory is a 9p share, and a 1 GiB memory file written, then paged in
        through 9p under TCG costs minutes per restore; L1's RAM holds it instead (one variant at a
        time: it is deleted when the variant is done, and re-made if a resumed study needs it).
        """
        if host.in_lab():
            key = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:12]
            return Path(tempfile.gettempdir()) / "firecracer-lab-snapshots" / key
        return workdir / "snapshot"

    @contextmanager
    def variant(self, variant: Variant, workdir: Path) -> Iterator[JvmState]:
        assert self._fc is not None, "check() first"
        if variant.rootfs is not None and not variant.rootfs.is_file():
            # e.g. a JDK 25 image on a machine that has no JDK 25 to build it from: the study goes on
            raise RunFailed("skipped", f"variant {variant.name}: its image {variant.rootfs} is not there "
                                       "(build it: firecracer image rootfs --jdk DIR -o THAT_PATH)")
        snap = self.snapshot_dir(workdir)
        scratch = self.scratch_path(workdir) if self.process_kinds else None
        marker = workdir / "variant.json"
        have_checkpoint = scratch is None or (scratch.exists()
                                              and (workdir / crac.CRAC_DIR / "checkpoint.json").exists())
        if not (marker.exists() and (snap / "snapshot.json").exists() and have_checkpoint):
            shutil.rmtree(snap, ignore_errors=True)
            forget_prefetch_trace(workdir)
            facts = self._prepare_with_lab_retry(variant, workdir, snap, host.in_lab())
            marker.write_text(json.dumps({"created": now_iso(), "snapshot": str(snap), **facts}, indent=1,
                                         default=str))
        state = JvmState(variant, workdir, snap, scratch=scratch)
        if (workdir / "prefetch-trace.npz").exists():
            state.prefetch_trace = workdir / "prefetch-trace.npz"
        try:
            yield state
        finally:
            if host.in_lab():
                shutil.rmtree(snap, ignore_errors=True)
                if scratch is not None:
                    scratch.unlink(missing_ok=True)

    def _prepare_with_lab_retry(self, variant: Variant, workdir: Path, snap: Path,
                                lab: bool) -> dict[str, Any]:
        """Prepare; in the lab, boot once more if the guest died or hung before it was ready.

        QEMU 7.2's TCG running our guest under emulated nested SVM now and then loses a boot: the JVM
        crashed in compiled code, hung silently, or the init failed with a MemoryError (5 of 23 boots
        on 2026-12-05 with AVX2 off in L1's CPU), and once a JVM crashed after it was ready (docs/lab.md).
        Before the snapshot such a boot measured nothing, so it is retried once and recorded in
        ``boot_retries``; elsewhere a failed boot is the answer.
        """
        retries: list[str] = []
        while True:
            try:
                facts = self._prepare_variant(variant, workdir, snap)
                return {**facts, "boot_retries": retries}
            except RunFailed as exc:
                if not lab or retries or not (exc.phase == "ready" or exc.why.startswith(AFTER_READY)):
                    raise
                retries.append(exc.why)
                print(f"firecracer: variant {variant.name}: {exc.why}; booting once more (the lab's "
                      "emulation loses a boot now and then)", file=sys.stderr, flush=True)
                shutil.rmtree(snap, ignore_errors=True)
                lost = workdir / "boot-lost"
                shutil.rmtree(lost, ignore_errors=True)
                with contextlib.suppress(OSError):
                    (workdir / "boot").rename(lost)  # its console, for whoever wants to know why
                for name in COLLECTED:  # a guest lost after collect: the next boot's JVM may differ
                    (shutil.rmtree if (workdir / name).is_dir() else _unlink)(workdir / name)

    def _prepare_variant(self, variant: Variant, workdir: Path, snap: Path) -> dict[str, Any]:
        wl = self.spec.workload
        g = self.spec.guest
        scratch = crac.make_scratch(self.scratch_path(workdir)) if self.process_kinds else None
        drives = [{"path": str(scratch), "read_only": False}] if scratch else []
        vm = MicroVM(self._fc, name=vm_name(), purpose=f"experiment {self.spec.name}: boot {workdir.name}")
        try:
            with vm:
                t0 = time.monotonic()
                try:
                    vm.boot(VMConfig(kernel=str(g.kernel), rootfs=str(self.rootfs(variant)), drives=drives,
                                     boot_args=self.boot_args(variant), mem_size_mib=g.mem_size_mib,
                                     vcpu_count=g.vcpus, vsock_cid=3, huge_pages=variant.huge_pages,
                                     labels={"variant": variant.name,
                                             "jvm_options": list(variant.jvm_options)}))
                except FirecracerError as exc:
                    raise RunFailed("boot", str(exc)) from None
                guest = GuestDriver(vm.vsock_path, app_port=wl.port, path=ready_path(wl.requests))
                ping = guest.wait_ready(wl.ready_timeout_s, vm)
                ready_ms = (time.monotonic() - t0) * 1e3
                ready_at = vm.console.size()  # what the console said before readiness is not news
                phase = "warmup"
                try:
                    warm = guest.warm_up(self.warmup_requests(variant), self.spec.timeout_s, wl.requests)
                    phase = "collect"
                    facts = guest.prepare_and_collect(list(wl.prepare), workdir, self.spec.timeout_s)
                    phase = "snapshot"
                    s = vm.snapshot(snap, labels={"variant": variant.name})
                    if scratch is not None:  # after the VM snapshot, which must not see it happen
                        phase = "checkpoint"
                        vm.resume()
                        with guest.agent(timeout=self.spec.timeout_s) as a:
                            facts["checkpoint"] = crac.checkpoint(a, workdir, max(600.0, self.spec.timeout_s))
                except FirecracerError as exc:
                    # a guest that died (or broke) meanwhile is the answer, not the socket error it caused
                    broken = vm.console.broken(ready_at, also=[JVM_CRASH]) if vm.alive() else \
                        f"it died: {vm.guest_death(also=[JVM_DEATH_RX])}"
                    if broken:
                        raise RunFailed(phase, f"{AFTER_READY}{broken} ({exc})") from None
                    if isinstance(exc, RunFailed):
                        raise
                    raise RunFailed(phase, str(exc)) from None
                return {"boot_to_ready_ms": ready_ms, "ping": ping, "warmup_ms": warm,
                        "snapshot_ms": s.timings_ms.get("create"), **facts,
                        **compress_if_asked(self.spec.strategies, snap)}
        finally:
            keep_logs(vm.run_dir, workdir / "boot")
            shutil.rmtree(vm.run_dir, ignore_errors=True)

    def run(self, state: JvmState, run: Run, rundir: Path) -> RunOutcome:
        strategy = run.strategy.name
        if run.strategy.is_process:
            return self._process_restore(state, strategy, rundir, run.request)
        if run.strategy.needs_trace:  # recorded once per variant, answering the study's first request
            first = self.spec.workload.requests[0]
            state.prefetch_trace = ensure_prefetch_trace(
                state.workdir, state.prefetch_trace,
                lambda d: self._restore(state, RestoreRun(Strategy("ondemand"), d, record=True), first))
        return self._restore(state, RestoreRun(run.strategy, rundir, trace=state.prefetch_trace), run.request)

    def _restore(self, state: JvmState, rr: RestoreRun, request: Request) -> RunOutcome:
        """One restore (:class:`RestoreRun`) answering ``request`` first: the app's after-restore hooks
        when the snapshot ran its before-checkpoint ones, then the request over vsock."""
        wl = self.spec.workload
        timings, metrics = rr.timings, rr.metrics
        with rr.vm(self._fc, state.snapdir, state.snapdir / "mem", timeout=self.spec.timeout_s,
                   purpose=f"experiment {self.spec.name}: {rr.rundir.name}") as vm:
            vm.resume()
            t_resumed = time.perf_counter()
            hooks_ms = None
            try:
                guest = GuestDriver(vm.vsock_path, app_port=wl.port, path=request.path)
                with vm.page_server_guard():  # a dead page server ends the request at once
                    if "hooks" in wl.prepare or self.process_kinds:
                        # the snapshot ran the app's beforeCheckpoint: its afterRestore comes first
                        hooks_ms = self._after_restore_hooks(guest)
                    r = guest.request(self.spec.timeout_s, retries=3, q=request)
            except FirecracerError as exc:
                raise RunFailed(rr.prefix + "first-response", str(exc)) from None
            t_done = time.perf_counter()
            if not answered(r.status):
                raise RunFailed(rr.prefix + "first-response",
                                f"the first request ({request}) answered HTTP {r.status}")
            # a readahead before the load is part of the restore: it counts from its start
            timings.update(load_snapshot=vm.timings_ms["load_snapshot"],
                           resume=(t_resumed - rr.t_loaded) * 1e3,
                           first_byte=rr.since_load(vm, t_done - r.total_s + r.first_byte_s),
                           first_response=rr.since_load(vm, t_done), request=r.total_s * 1e3)
            timings["first_response_from_vm_start"] = timings["first_response"]  # the VM starts restored
            if hooks_ms is not None:
                timings["hooks"] = hooks_ms
            metrics.update(http_status=r.status, response_bytes=r.nbytes)
            if r.retried:  # timings then include the dropped attempts; say so
                metrics["first_request_retried"] = list(r.retried)
        rr.read_server_metrics()
        if rr.uffd and rr.trace_out.exists():
            metrics["snapshot_bytes"] = sum(f.stat().st_size for f in state.snapdir.iterdir() if f.is_file())
        self._write_recording_json(state, rr.rundir, rr.strategy, timings, metrics, "firecracker", request)
        for f in ("memmap.npz", "nmt.txt"):  # the run is a complete recording (analysis, viewer)
            if (state.workdir / f).exists():
                try:
                    os.link(state.workdir / f, rr.rundir / f)
                except OSError:
                    shutil.copyfile(state.workdir / f, rr.rundir / f)
        return RunOutcome(timings_ms=timings, metrics=metrics,
                          pages=from_trace(rr.trace_out) if rr.uffd and rr.trace_out.exists() else None)

    def _write_recording_json(self, state: JvmState, rundir: Path, strategy: str, timings: dict[str, float],
                              metrics: dict[str, Any], source: str, request: Request,
                              address_space: str | None = None) -> None:
        RecordingFacts(
            source=source, created=now_iso(), host=this_host(host.host_label()),
            timings_comparable_to_kvm=host.timings_comparable_to_kvm(), vmm={"firecracker": self._fc_version},
            guest={"kernel": str(self.spec.guest.kernel), "rootfs": str(self.rootfs(state.variant)),
                   "mem_size_mib": self.spec.guest.mem_size_mib},
            jvm={"options": list(state.variant.jvm_options)}, strategy=strategy, timings_ms=timings,
            metrics=metrics, address_space=address_space,
            first_request={"method": request.method, "path": request.path, "text": str(request)},
        ).write(rundir / "recording.json")

    def _after_restore_hooks(self, guest: GuestDriver, attempts: int = 3) -> float:
        """The app's after-restore hooks through the agent (CRaC's afterRestore); their milliseconds.

        Right after a restore the guest resets its vsock transport, and a connection racing that reset is
        closed before any reply (as the first request's): such a drop is retried. A repeat is harmless:
        the app's resources are restored once (the Java agent notifies nobody the second time).
        """
        t0 = time.perf_counter()
        for attempt in range(1, attempts + 1):
            try:
                with guest.agent(timeout=self.spec.timeout_s) as a:
                    rep = a.call("after-restore", {"steps": ["hooks"], "generation": 1},
                                 timeout=self.spec.timeout_s)
                break
            except AgentError as exc:
                if exc.code != "connection" or attempt == attempts:
                    raise
                time.sleep(0.2)
        if not rep.get("ok"):
            raise RunFailed("hooks", f"after-restore hooks failed: {json.dumps(rep.get('steps'))[:300]}")
        return (time.perf_counter() - t0) * 1e3

    def _process_restore(self, state: JvmState, kind: str, rundir: Path, request: Request) -> RunOutcome:
        """``criu``/``criu-lazy``: a fresh boot without a JVM restores the checkpoint (module
        :mod:`.process`); times from the restore command (guest clock) and from the VM's start."""
        assert state.scratch is not None, "variant() makes the checkpoint when the study has criu kinds"
        wl = self.spec.workload
        g = self.spec.guest
        name = vm_name()
        run_dir = state_dir() / "vms" / name
        vm = MicroVM(self._fc, name=name, purpose=f"experiment {self.spec.name}: {rundir.name}")
        try:
            with vm:
                t0 = time.perf_counter()
                try:
                    vm.boot(VMConfig(kernel=str(g.kernel), rootfs=str(self.rootfs(state.variant)),
                                     boot_args=self.boot_args(state.variant, java=False),
                                     mem_size_mib=g.mem_size_mib, vcpu_count=g.vcpus, vsock_cid=3,
                                     drives=[{"path": str(state.scratch), "read_only": True}],
                                     labels={"variant": state.variant.name, "restore": kind}))
                except FirecracerError as exc:
                    raise RunFailed("boot", str(exc)) from None
                guest = GuestDriver(vm.vsock_path, app_port=wl.port, path=request.path)
                boot_s = crac.wait_agent(guest.agent_address, wl.ready_timeout_s, vm.alive)
                t_cmd = time.perf_counter()
                with guest.agent(timeout=self.spec.timeout_s) as a:  # GETs only (parse_spec says so)
                    reply = crac.restore_in_guest(a, lazy=kind == "criu-lazy", port=wl.port,
                                                  path=request.path, timeout=self.spec.timeout_s)
                t_reply = time.perf_counter()
                fr = reply.get("first_request") or {}
                if fr.get("status") != 200:
                    raise RunFailed("first-response", f"the first request answered HTTP {fr.get('status')}")
                hooks = reply.get("hooks") or {}
                if hooks and not hooks.get("ok", True):
                    raise RunFailed("hooks", f"after-restore hooks failed: {json.dumps(hooks)[:300]}")
                check = guest.request(self.spec.timeout_s, retries=3)  # the path the VM restores use
                if check.status != 200:
                    raise RunFailed("first-response", f"over vsock the service answered HTTP {check.status}")
                first = float(reply.get("first_response_seconds") or 0.0) * 1e3
                timings = {"boot_to_agent": boot_s * 1e3, "restore": float(reply.get("seconds", 0)) * 1e3,
                           "hooks": float(reply.get("hooks_seconds") or 0) * 1e3,
                           "first_byte": (float(reply.get("running_seconds") or 0)
                                          + float(fr.get("first_byte_s") or 0)) * 1e3,
                           "first_response": first, "request": float(fr.get("seconds") or 0) * 1e3,
                           "restore_command_round_trip": (t_reply - t_cmd) * 1e3,
                           "first_response_from_vm_start": (t_cmd - t0) * 1e3 + first}
        finally:
            keep_logs(run_dir, rundir / "vm")
            shutil.rmtree(run_dir, ignore_errors=True)
        metrics = crac.write_recording(state.workdir, rundir, reply, kind)
        metrics.update(http_status=fr.get("status"), response_bytes=fr.get("bytes"),
                       boot_share_of_first_response=round(timings["boot_to_agent"]
                                                          / timings["first_response_from_vm_start"], 4))
        self._write_recording_json(state, rundir, kind, timings, metrics, "criu", request,
                                   address_space="criu-image")
        return RunOutcome(timings_ms=timings, metrics=metrics,
                          pages=from_trace(rundir / "trace.npz") if kind == "criu-lazy" else None)
