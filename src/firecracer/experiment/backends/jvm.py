"""``jvm``: the JVM image under Firecracker, on hosts whose KVM boots Linux guests (bare metal).

The steps it must follow (issue #9): per variant — boot the image with the variant's JVM options, wait for
the guest agent and the service (``workload.ready_timeout_s``), ``workload.warmup_requests`` requests,
agent ``prepare`` (``workload.prepare``), collect memmap + NMT into the variant directory, Full snapshot;
per run — restore (File, or Uffd with the page server and the run's strategy; prefetch records its trace on
a first restore), time the first request over vsock (first byte and full response), collect the trace,
attribute restored pages to NMT categories (``firecracer.analysis``), kill.

Not available in this build: it needs the guest agent client (guest branch) and ``MicroVM`` (vmm branch),
which are merged by the integrator; until then :meth:`JvmBackend.check` says so instead of pretending.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from firecracer.errors import NotImplementedYet
from firecracer.experiment.backend import Backend, RunOutcome
from firecracer.experiment.plan import Run
from firecracer.experiment.spec import Variant


class JvmBackend(Backend[Any]):
    """See module doc."""

    name = "jvm"

    def check(self) -> None:
        raise NotImplementedYet(
            "the 'jvm' experiment backend is not implemented in this build (it needs the guest agent "
            "and MicroVM layers, and a host whose KVM boots Linux guests); nothing was run. The 'probe' "
            "backend runs the same matrix with the probe guest")

    def versions(self) -> dict[str, Any]:
        return {}

    def variant(self, variant: Variant, workdir: Path) -> AbstractContextManager[Any]:
        self.check()
        raise AssertionError("unreachable")

    def run(self, state: Any, run: Run, rundir: Path) -> RunOutcome:
        self.check()
        raise AssertionError("unreachable")
