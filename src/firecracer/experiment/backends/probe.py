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

import json
import os
import shutil
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
from firecracer.experiment.backends._common import (
    check_uffd_strategies,
    compress_if_asked,
    ensure_prefetch_trace,
    forget_prefetch_trace,
    keep_logs,
    log_note,
    vm_name,
)
from firecracer.experiment.backends._restore import RestoreRun
from firecracer.experiment.plan import Run
from firecracer.experiment.spec import Strategy, Variant
from firecracer.experiment.store import now_iso
from firecracer.fcversion import firecracker_version
from firecracer.formats import RecordingFacts
from firecracer.hugepages import check_pool
from firecracer.vmm.binary import find_firecracker
from firecracer.vmm.machine import MicroVM, VMConfig
from firecracer.vmm.probe import ProbeReady, ProbeResult, build_probe, min_mem_mib, parse_line, probe_info

PAGE = 4096
_WS_LO_PAGE = 4096  # working sets live above 16 MiB: below are the ELF image (2 MiB) and its tables


@dataclass
class ProbeState:
    """A prepared variant: its snapshot and what the probe will touch."""

    variant: Variant
    workdir: Path
    elf: Path
    snapdir: Path
    pages: npt.NDArray[np.uint64]
    prefetch_trace: Path | None = None

    @property
    def vmstate(self) -> Path:
        return self.snapdir / "vmstate"

    @property
    def mem(self) -> Path:
        return self.snapdir / "mem"


class ProbeBackend(Backend[ProbeState]):
    """See module doc."""

    name = "probe"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._fc: Path | None = None
        self._fc_version = ""
        self.dropped = 0

    # -- host checks -------------------------------------------------------------------------------
    def check(self) -> None:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise FirecracerError("the probe backend needs a usable /dev/kvm (see 'firecracer doctor')")
        self._fc = find_firecracker(self.spec.firecracker)
        version = firecracker_version(self._fc)
        self._fc_version = str(version)
        check_uffd_strategies(self._fc, version, self.spec.strategies)
        if any(v.huge for v in self.spec.variants):
            check_pool(self.spec.guest.mem_size_mib, f"{self.spec.path}: 2 MiB variants")
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
        """The pages the probe fills and touches, in order (see module doc).

        A recorded trace (e.g. of a JVM restore) also holds pages the probe cannot own: its own image and
        low memory (below 16 MiB) and the x86 MMIO holes. Those are dropped (``self.dropped`` says how
        many); the rest keeps its recorded order.
        """
        self.dropped = 0
        if variant.trace is not None:
            pages = workingset.from_trace(variant.trace)
            gib = 1 << 18  # pages per GiB
            keep = (pages >= _WS_LO_PAGE) & ~((pages >= 3 * gib) & (pages < 4 * gib)) \
                & ~((pages >= 256 * gib) & (pages < 512 * gib))
            self.dropped = int(len(pages) - np.count_nonzero(keep))
            pages = pages[keep]
        else:
            assert variant.working_set_pages is not None
            lo, hi = workingset.scatter_range("probe", self.spec.guest.mem_size_mib)
            pages = workingset.scattered(variant.working_set_pages, lo, hi, variant.mean_run_pages,
                                         variant.seed)
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
        key: dict[str, Any] = {"elf": info.key, "mem_size_mib": self.spec.guest.mem_size_mib,
                               "vcpus": self.spec.guest.vcpus, "firecracker": self._fc_version}
        if variant.huge:
            key["huge_pages"] = variant.huge_pages
        if not (marker.exists() and json.loads(marker.read_text()).get("key") == key
                and (snap / "snapshot.json").exists()):
            marker.unlink(missing_ok=True)
            shutil.rmtree(snap, ignore_errors=True)
            forget_prefetch_trace(workdir)
            facts = self._boot_and_snapshot(elf, snap, workdir, variant.huge_pages)
            marker.write_text(json.dumps({"key": key, "created": now_iso(), "working_set_pages": len(pages),
                                          "trace_pages_dropped": self.dropped, **facts}, indent=1))
        state = ProbeState(variant, workdir, elf, snap, pages)
        rec = workdir / "prefetch-trace.npz"
        if rec.exists():
            state.prefetch_trace = rec
        yield state

    def _boot_and_snapshot(self, elf: Path, snap: Path, workdir: Path,
                           huge_pages: str | None = None) -> dict[str, Any]:
        timeout = self.spec.timeout_s
        vm = MicroVM(self.fc, name=vm_name(), purpose=f"experiment {self.spec.name}: boot {workdir.name}")
        try:
            with vm:
                t0 = time.monotonic()
                try:
                    vm.boot(VMConfig(kernel=str(elf), boot_args="console=ttyS0",
                                     mem_size_mib=self.spec.guest.mem_size_mib,
                                     vcpu_count=self.spec.guest.vcpus, vsock_cid=None, huge_pages=huge_pages,
                                     labels={"probe": probe_info(elf).key}))
                except FirecracerError as exc:
                    raise RunFailed("boot", str(exc)) from None
                if _wait_line(vm, ProbeReady, 0, timeout) is None:
                    raise RunFailed("ready", f"the probe printed no READY line within {timeout:g} s"
                                             f"{_death(vm)}")
                boot_ms = (time.monotonic() - t0) * 1e3
                try:
                    s = vm.snapshot(snap)
                except FirecracerError as exc:
                    raise RunFailed("snapshot", str(exc)) from None
                return {"boot_to_ready_ms": boot_ms, "snapshot_ms": s.timings_ms.get("create"),
                        **compress_if_asked(self.spec.strategies, snap)}
        finally:
            keep_logs(vm.run_dir, workdir / "boot")
            shutil.rmtree(vm.run_dir, ignore_errors=True)

    # -- run ---------------------------------------------------------------------------------------
    def run(self, state: ProbeState, run: Run, rundir: Path) -> RunOutcome:
        if run.strategy.needs_trace:  # the prefetch and readahead kinds replay one recorded restore
            state.prefetch_trace = ensure_prefetch_trace(
                state.workdir, state.prefetch_trace,
                lambda d: self._restore(state, RestoreRun(Strategy("ondemand"), d, record=True)))
        return self._restore(state, RestoreRun(run.strategy, rundir, trace=state.prefetch_trace))

    def _restore(self, state: ProbeState, rr: RestoreRun) -> RunOutcome:
        """One restore (:class:`RestoreRun`) whose first answer is the probe's result line: it walks its
        working set once, so the restore's page faults are that walk's."""
        timeout = self.spec.timeout_s
        timings, metrics = rr.timings, rr.metrics
        with rr.vm(self.fc, state.snapdir, state.mem, timeout=timeout, check=False,
                   vm_timings=("spawn", "page_server_start"),
                   purpose=f"experiment {self.spec.name}: {rr.rundir.name}") as vm:
            faults0 = _page_faults(vm.pid)
            vm.resume()
            t_resumed = time.perf_counter()
            since = vm.console.size()
            vm.send_serial(b"t")
            t_sent = time.perf_counter()
            try:
                got = _wait_line(vm, ProbeResult, since, timeout)
            except FirecracerError as exc:  # the page server died: named with its last log line
                raise RunFailed(rr.prefix + "first-response", str(exc)) from None
            if got is None:
                raise RunFailed(rr.prefix + "first-response",
                                f"no PROBE RESULT within {timeout:g} s{_death(vm)}"
                                f"{log_note(rr.run_dir / 'uffd.log')}")
            result, t_first_byte, t_line = got
            timings.update(load_snapshot=vm.timings_ms["load_snapshot"],
                           resume=(t_resumed - rr.t_loaded) * 1e3,
                           first_byte=rr.since_load(vm, t_first_byte),
                           first_response=rr.since_load(vm, t_line), request=(t_line - t_sent) * 1e3)
            metrics.update(errors=result.errors, probe_pages=result.pages, probe_cycles=result.cycles,
                           fc_page_faults=_page_faults(vm.pid) - faults0)
        # leaving the block killed Firecracker and stopped the page server (trace + metrics written)
        if not rr.uffd:
            metrics["faults"] = metrics["fc_page_faults"]
            metrics["fault_source"] = "Firecracker process minflt+majflt from resume to the result"
        rr.read_server_metrics()
        if metrics.get("errors"):
            raise RunFailed(rr.prefix + "verify", f"the probe found {metrics['errors']} wrong words in "
                                                  f"{metrics['probe_pages']} pages")
        if rr.uffd and not rr.trace_out.exists():
            note = log_note(rr.rundir / "vm" / "uffd.log")
            raise RunFailed(rr.prefix + "collect", f"the page server wrote no trace{note}")
        pages = workingset.from_trace(rr.trace_out) if rr.uffd else None
        RecordingFacts(source="firecracker", created=now_iso(), vmm={"firecracker": self._fc_version},
                       guest={"kernel": "probe", "mem_size_mib": self.spec.guest.mem_size_mib},
                       strategy=rr.strategy, timings_ms=timings, metrics=metrics,
                       extra={"probe": {"elf": str(state.elf), "working_set_pages": len(state.pages)}},
                       ).write(rr.rundir / "recording.json")
        return RunOutcome(timings_ms=timings, metrics=metrics, pages=pages)


def _wait_line(vm: MicroVM, kind: type, since: int, timeout: float) -> tuple[Any, float, float] | None:
    """Poll the console (0.5 ms) from byte ``since`` for a probe line of ``kind``.

    Returns (parsed line, perf_counter when its first byte was seen, when the whole line was seen), or
    None on timeout or when Firecracker died. Fine polling keeps the timing error well under a ms.

    :raises FirecrackerError: the page server died (Firecracker is killed; the message names the server
        and its last log line) — noticed through its pidfd within a poll, not at the timeout.
    """
    deadline = time.monotonic() + timeout
    reader = vm.console.reader(since)
    while True:
        lines = reader.poll()
        for line, t_first, t_done in lines:
            parsed = parse_line(line)
            if isinstance(parsed, kind):
                return parsed, t_first, t_done
        if reader.grew:  # more may be on its way: read again at once
            continue
        vm.check_page_server("while the guest ran")
        if time.monotonic() > deadline or not vm.alive():
            return None
        time.sleep(0.0005)


def _death(vm: MicroVM) -> str:
    return "" if vm.alive() else f" ({vm.guest_death()})"


def _page_faults(pid: int | None) -> int:
    """minflt + majflt of a process so far (a restored guest's first touches show up here)."""
    if pid is None:
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[7]) + int(fields[9])  # stat fields 10 (minflt) and 12 (majflt)
