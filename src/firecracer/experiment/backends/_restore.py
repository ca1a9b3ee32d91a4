"""One restore of a variant's snapshot for a run: what the jvm and probe backends share.

Both start a fresh Firecracker on the snapshot (File, Uffd with the study's page server, or File with a
readahead), time the first answer from the guest, keep the VM's logs with the run and read the page
server's metrics. Only the guest's first answer differs (an HTTP request over vsock, the probe's serial
line), so that is what each backend writes inside :meth:`RestoreRun.vm`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError
from firecracer.experiment.backend import RunFailed
from firecracer.experiment.backends._common import drop_cache, keep_logs, log_note, server_metrics, vm_name
from firecracer.experiment.spec import Strategy
from firecracer.paths import state_dir
from firecracer.vmm.config import MemBackend
from firecracer.vmm.machine import MicroVM
from firecracer.vmm.readahead import Readahead


class RestoreRun:
    """One restore for run directory ``rundir`` with the study's ``strategy``.

    ``trace``: the recorded restore the prefetch and readahead kinds replay; ``record``: this restore is
    that recording (its phases say so, and the page server keeps the working-set file). ``timings`` and
    ``metrics`` collect what the backend and this class measure, for ``recording.json`` and the store.
    """

    def __init__(self, strategy: Strategy, rundir: Path, *, trace: Path | None = None,
                 record: bool = False) -> None:
        self.study_strategy = strategy
        #: what ``MicroVM.restore`` and ``recording.json`` get: ``ondemand``, ``prefetch:TRACE`` …
        self.strategy = strategy.with_trace(trace) if strategy.needs_trace and trace else strategy.server_name
        self.uffd = strategy.uses_uffd
        self.readahead = Readahead.parse(self.strategy) if strategy.is_readahead else None
        self.rundir = rundir
        self.record = record
        self.prefix = "record " if record else ""
        self.name = vm_name()  # its run directory is in the state dir: 'vm ls' shows it while it runs
        self.run_dir = state_dir() / "vms" / self.name
        self.trace_out = rundir / "trace.npz"
        self.metrics_out = rundir / "uffd-metrics.json"
        self.timings: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        #: perf_counter right after the snapshot was loaded (the guest is still paused)
        self.t_loaded = 0.0

    @contextlib.contextmanager
    def vm(self, firecracker: Path | None, snapdir: Path, mem: Path, *, purpose: str, timeout: float,
           check: bool = True, vm_timings: tuple[str, ...] = ()) -> Iterator[MicroVM]:
        """Restore (paused), yield the VM for the backend's first request, then record what Firecracker
        measured and the readahead did (and the VM's own ``vm_timings``, e.g. ``spawn``); the VM is
        killed, its page server stopped (trace and metrics written) and its logs kept in ``rundir/vm``
        however the block ends.

        :raises RunFailed: phase ``restore`` (with the page server's last log line when it said why).
        """
        try:
            drop_cache(mem)
            try:
                vm = MicroVM.restore(snapdir, firecracker=firecracker, name=self.name,
                                     backend=MemBackend.UFFD if self.uffd else MemBackend.FILE, resume=False,
                                     strategy=self.strategy if self.uffd else None,
                                     trace=self.trace_out if self.uffd else None,
                                     metrics=self.metrics_out if self.uffd else None, check=check,
                                     working_set=self.record, purpose=purpose, readahead=self.readahead,
                                     compressed=self.study_strategy.compressed)
            except FirecracerError as exc:
                note = "" if "page server" in str(exc) else log_note(self.run_dir / "uffd.log")
                raise RunFailed(self.prefix + "restore", f"{exc}{note}") from None
            self.t_loaded = time.perf_counter()
            with vm:
                yield vm
                if vm.readahead is not None:
                    self.metrics["readahead"] = vm.readahead.wait(timeout).as_dict()
                for k in (*vm_timings, "readahead"):
                    if k in vm.timings_ms:
                        self.timings.setdefault(k, vm.timings_ms[k])
                with contextlib.suppress(FirecracerError):
                    lat = vm.flush_metrics().get("latencies_us", {})
                    if isinstance(lat, dict) and lat.get("load_snapshot"):
                        self.metrics["fc_load_snapshot_us"] = lat["load_snapshot"]
        finally:
            keep_logs(self.run_dir, self.rundir / "vm")
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def since_load(self, vm: MicroVM, t: float) -> float:
        """Milliseconds from the start of the restore to ``t`` (a perf_counter after the load): the load,
        a readahead that ran before it, and the time since."""
        before = vm.timings_ms["load_snapshot"] + vm.timings_ms.get("readahead", 0.0)
        return before + (t - self.t_loaded) * 1e3

    def read_server_metrics(self) -> None:
        """Add the page server's counts (faults, pages, latency …) and its install time, once it stopped."""
        if not self.uffd:
            return
        self.metrics.update(server_metrics(self.metrics_out, self.trace_out))
        if "install" in self.metrics:
            self.timings["install"] = self.metrics.pop("install")
