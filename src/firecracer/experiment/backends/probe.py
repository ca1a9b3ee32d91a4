"""``probe``: the probe guest under real Firecracker, restored by File backend or our uffd page server.

Runs on every KVM host, PVM-nested ones included (where no Linux guest can boot). Per variant: the working
set (seeded scattered pages, or a recorded trace's faulting pages) becomes both the probe's fill set and its
embedded touch sequence; boot, wait for ``PROBE READY``, pause, Full snapshot into the variant directory
(reused after an interruption). Per run: start the page server (``python -m firecracer uffd serve``) for
uffd strategies, ``PUT /snapshot/load``, ``PATCH /vm Resumed``, one trigger byte on the serial port, wait for
the ``PROBE RESULT`` line (pages, errors, TSC cycles), flush Firecracker's metrics, kill Firecracker, collect
the page server's trace and metrics. ``prefetch`` records its trace with an ``ondemand`` restore first (once
per variant, kept in the variant directory), like REAP.

Every wait is bounded by ``study.timeout_s``; Firecracker and the page server are killed on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError
from firecracer.experiment import workingset
from firecracer.experiment.backend import Backend, RunFailed, RunOutcome
from firecracer.experiment.backends._fcvm import FcVm, read_metrics
from firecracer.experiment.plan import Run
from firecracer.experiment.spec import Variant
from firecracer.experiment.store import now_iso
from firecracer.vmm.binary import find_firecracker, firecracker_version
from firecracer.vmm.probe import ProbeReady, ProbeResult, build_probe, min_mem_mib, probe_info

PAGE = 4096
_WS_LO_PAGE = 4096  # working sets live above 16 MiB: below are the ELF image (2 MiB) and its tables


@dataclass
class ProbeState:
    """A prepared variant: its snapshot and what the probe will touch."""

    variant: Variant
    workdir: Path
    elf: Path
    vmstate: Path
    mem: Path
    pages: npt.NDArray[np.uint64]
    prefetch_trace: Path | None = None


class ProbeBackend(Backend[ProbeState]):
    """See module doc."""

    name = "probe"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._fc: Path | None = None
        self._fc_version = ""

    # -- host checks -------------------------------------------------------------------------------
    def check(self) -> None:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise FirecracerError("the probe backend needs a usable /dev/kvm (see 'firecracer doctor')")
        self._fc = find_firecracker(self.spec.firecracker)
        version = firecracker_version(self._fc)
        self._fc_version = str(version)
        if any(s.uses_uffd for s in self.spec.strategies) and not version.at_least(1, 8):
            raise FirecracerError(
                f"{self._fc}: Firecracker {version} cannot register userfaultfd on host kernels >= 6.6 "
                "(fixed in v1.8); use Firecracker >= 1.8 for uffd strategies, or only 'file'")
        if shutil.which("as") is None or shutil.which("ld") is None:
            raise FirecracerError("the probe guest is assembled with GNU binutils ('as', 'ld'): "
                                  "apt-get install binutils")

    def versions(self) -> dict[str, Any]:
        return {"firecracker": self._fc_version, "firecracker_path": str(self._fc or ""),
                "backend": "probe guest under Firecracker"}

    @property
    def fc(self) -> Path:
        if self._fc is None:
            self.check()
        assert self._fc is not None
        return self._fc

    # -- variant -----------------------------------------------------------------------------------
    def _working_set(self, variant: Variant) -> npt.NDArray[np.uint64]:
        mem_pages = self.spec.guest.mem_size_mib * 256
        if variant.trace is not None:
            pages = workingset.from_trace(variant.trace)
        else:
            assert variant.working_set_pages is not None
            pages = workingset.scattered(variant.working_set_pages, _WS_LO_PAGE, min(mem_pages, 3 << 18),
                                         variant.mean_run_pages, variant.seed)
        if len(pages) == 0:
            raise RunFailed("prepare", f"variant {variant.name}: empty working set")
        need = min_mem_mib(int(pages.max()))
        if need > self.spec.guest.mem_size_mib:
            raise RunFailed("prepare", f"variant {variant.name}: page {int(pages.max()):#x} needs "
                                       f"mem_size_mib >= {need} (spec has {self.spec.guest.mem_size_mib})")
        return pages

    @contextmanager
    def variant(self, variant: Variant, workdir: Path) -> Iterator[ProbeState]:
        pages = self._working_set(variant)
        try:
            elf = build_probe([int(p) for p in pages], [int(p) for p in pages],
                              seed=(0x5EED << 48) ^ (variant.seed & 0xFFFF_FFFF_FFFF))
        except ValueError as exc:
            raise RunFailed("prepare", f"variant {variant.name}: {exc}") from None
        info = probe_info(elf)
        snap = workdir / "snapshot"
        marker = workdir / "variant.json"
        key = {"elf": info.key, "mem_size_mib": self.spec.guest.mem_size_mib, "vcpus": self.spec.guest.vcpus,
               "firecracker": self._fc_version}
        if not (marker.exists() and json.loads(marker.read_text()).get("key") == key
                and (snap / "vmstate").exists() and (snap / "mem").exists()):
            marker.unlink(missing_ok=True)
            shutil.rmtree(snap, ignore_errors=True)
            snap.mkdir(parents=True)
            facts = self._boot_and_snapshot(elf, snap, workdir)
            marker.write_text(json.dumps({"key": key, "created": now_iso(), **facts}, indent=1))
        state = ProbeState(variant, workdir, elf, snap / "vmstate", snap / "mem", pages)
        rec = workdir / "prefetch-trace.npz"
        if rec.exists():
            state.prefetch_trace = rec
        yield state

    def _boot_and_snapshot(self, elf: Path, snap: Path, workdir: Path) -> dict[str, Any]:
        timeout = self.spec.timeout_s
        with FcVm(self.fc, workdir / "boot") as vm:
            t0 = time.monotonic()
            try:
                vm.start()
                vm.boot(elf, mem_size_mib=self.spec.guest.mem_size_mib, vcpus=self.spec.guest.vcpus)
            except FirecracerError as exc:
                raise RunFailed("boot", str(exc)) from None
            ready = vm.wait_line(lambda x: isinstance(x, ProbeReady), timeout)
            if ready is None:
                raise RunFailed("ready", f"the probe printed no READY line within {timeout:g} s"
                                         f"{vm.death_note()}")
            boot_ms = (time.monotonic() - t0) * 1e3
            try:
                vm.api("PATCH", "/vm", {"state": "Paused"})
                t1 = time.monotonic()
                vm.api("PUT", "/snapshot/create", {"snapshot_type": "Full",
                                                   "snapshot_path": str(snap / "vmstate"),
                                                   "mem_file_path": str(snap / "mem")}, timeout=timeout)
            except FirecracerError as exc:
                raise RunFailed("snapshot", str(exc)) from None
            return {"boot_to_ready_ms": boot_ms, "snapshot_create_ms": (time.monotonic() - t1) * 1e3}

    # -- run ---------------------------------------------------------------------------------------
    def run(self, state: ProbeState, run: Run, rundir: Path) -> RunOutcome:
        strategy = run.strategy.name
        if strategy == "prefetch":
            if state.prefetch_trace is None:
                rec_dir = state.workdir / "prefetch-recording"
                shutil.rmtree(rec_dir, ignore_errors=True)
                rec_dir.mkdir()
                self._restore(state, "ondemand", rec_dir, phase_prefix="record ")
                final = state.workdir / "prefetch-trace.npz"
                os.replace(rec_dir / "trace.npz", final)
                state.prefetch_trace = final
            strategy = f"prefetch:{state.prefetch_trace}"
        return self._restore(state, strategy, rundir)

    def _restore(self, state: ProbeState, strategy: str, rundir: Path,
                 phase_prefix: str = "") -> RunOutcome:
        timeout = self.spec.timeout_s
        uffd = strategy != "file"
        short = Path(tempfile.mkdtemp(prefix="fcx-"))  # Unix socket paths must stay short
        server: subprocess.Popen[bytes] | None = None
        timings: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        try:
            _drop_cache(state.mem)
            with FcVm(self.fc, rundir / "vm", sock_dir=short) as vm:
                vm.start()
                vm.api("PUT", "/metrics", {"metrics_path": str(vm.metrics_path)})
                if uffd:
                    sock = short / "uffd.sock"
                    server = _start_server(sock, state.mem, strategy, rundir, timeout)
                    backend = {"backend_type": "Uffd", "backend_path": str(sock)}
                else:
                    backend = {"backend_type": "File", "backend_path": str(state.mem)}
                faults0 = vm.page_faults()
                t0 = time.monotonic()
                try:
                    vm.api("PUT", "/snapshot/load", {"snapshot_path": str(state.vmstate),
                                                     "mem_backend": backend, "resume_vm": False},
                           timeout=timeout)
                except FirecracerError as exc:
                    note = _server_note(server, rundir)
                    raise RunFailed(phase_prefix + "restore", f"{exc}{note}") from None
                t1 = time.monotonic()
                vm.api("PATCH", "/vm", {"state": "Resumed"})
                t2 = time.monotonic()
                vm.send_serial(b"t")
                t3 = time.monotonic()
                got = vm.wait_line(lambda x: isinstance(x, ProbeResult), timeout)
                if got is None:
                    raise RunFailed(phase_prefix + "first-response",
                                    f"no PROBE RESULT within {timeout:g} s{vm.death_note()}"
                                    f"{_server_note(server, rundir)}")
                result, t_first_byte, t_line = got
                assert isinstance(result, ProbeResult)
                timings = {"load_snapshot": (t1 - t0) * 1e3, "resume": (t2 - t1) * 1e3,
                           "first_byte": (t_first_byte - t0) * 1e3, "first_response": (t_line - t0) * 1e3,
                           "request": (t_line - t3) * 1e3}
                with contextlib.suppress(FirecracerError):
                    vm.api("PUT", "/actions", {"action_type": "FlushMetrics"})
                fc_metrics = read_metrics(vm.metrics_path)
                lat = fc_metrics.get("latencies_us", {}) if isinstance(fc_metrics, dict) else {}
                if isinstance(lat, dict) and lat.get("load_snapshot"):
                    metrics["fc_load_snapshot_us"] = lat["load_snapshot"]
                metrics.update(errors=result.errors, probe_pages=result.pages, probe_cycles=result.cycles,
                               fc_page_faults=vm.page_faults() - faults0)
                if not uffd:
                    metrics["faults"] = metrics["fc_page_faults"]
                    metrics["fault_source"] = "Firecracker process minflt+majflt during the restore"
            # Firecracker is dead now: the page server sees its uffd close and writes trace + metrics.
            if server is not None:
                metrics.update(_finish_server(server, rundir, timeout))
                server = None
        finally:
            if server is not None:
                _kill(server)
            shutil.rmtree(short, ignore_errors=True)
        if metrics.get("errors"):
            raise RunFailed(phase_prefix + "verify", f"the probe found {metrics['errors']} wrong words in "
                                                     f"{metrics['probe_pages']} pages")
        pages = None
        trace = rundir / "trace.npz"
        if trace.exists():
            pages = workingset.from_trace(trace)
        (rundir / "recording.json").write_text(json.dumps({
            "format": "firecracer-recording", "version": 1, "created": now_iso(), "source": "firecracker",
            "vmm": {"firecracker": self._fc_version}, "guest": {"kernel": "probe", "mem_size_mib":
                                                                 self.spec.guest.mem_size_mib},
            "jvm": None, "strategy": strategy, "timings_ms": timings, "metrics": metrics,
            "probe": {"elf": str(state.elf), "working_set_pages": len(state.pages)}}, indent=1))
        return RunOutcome(timings_ms=timings, metrics=metrics, pages=pages)


def _drop_cache(path: Path) -> None:
    """Evict the memory file from the page cache, so every restore starts cold (as in production)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _start_server(sock: Path, mem: Path, strategy: str, rundir: Path,
                  timeout: float) -> subprocess.Popen[bytes]:
    """``python -m firecracer uffd serve`` in its own session; returns once its socket exists."""
    log = open(rundir / "uffd.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firecracer", "uffd", "serve", str(sock), str(mem), "--strategy", strategy,
             "--trace", str(rundir / "trace.npz"), "--metrics", str(rundir / "uffd-metrics.json")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    deadline = time.monotonic() + min(timeout, 30.0)
    while not sock.exists():
        if proc.poll() is not None:
            raise RunFailed("page-server", f"the page server exited ({proc.returncode}) before listening"
                                           f"{_server_note(None, rundir)}")
        if time.monotonic() > deadline:
            _kill(proc)
            raise RunFailed("page-server", f"the page server did not create {sock} in time")
        time.sleep(0.01)
    return proc


def _finish_server(proc: subprocess.Popen[bytes], rundir: Path, timeout: float) -> dict[str, Any]:
    """Wait (bounded) for the page server to exit after Firecracker died; read its metrics."""
    try:
        proc.wait(timeout=min(timeout, 20.0))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill(proc)
    out: dict[str, Any] = {}
    mpath = rundir / "uffd-metrics.json"
    if mpath.exists():
        try:
            m = json.loads(mpath.read_text())
        except ValueError:
            m = {}
        if isinstance(m, dict):
            out["page_server"] = m
            for ours, theirs in (("faults", "faults"), ("pages", "pages"), ("bytes", "bytes"),
                                 ("prefetched", "pages_prefetched"), ("misses", "misses")):
                if isinstance(m.get(theirs), int | float):
                    out[ours] = m[theirs]
            if isinstance(m.get("service_ns_total"), int | float):
                out["service_ms"] = m["service_ns_total"] / 1e6
    trace = rundir / "trace.npz"
    if trace.exists() and "faults" not in out:
        from firecracer.uffd.trace import FLAG_FAULTING, load_trace

        t = load_trace(trace)
        out["faults"] = int(np.count_nonzero(t.flags & FLAG_FAULTING))
        out["pages"] = len(t)
        out["bytes"] = len(t) * t.page_size
    return out


def _server_note(proc: subprocess.Popen[bytes] | None, rundir: Path) -> str:
    log = rundir / "uffd.log"
    if not log.exists():
        return ""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f" (page server: {lines[-1].strip()[:300]})" if lines else ""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
