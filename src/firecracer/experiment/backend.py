"""The narrow interface between the study runner and whatever executes a run.

A backend turns a *variant* into a restorable state (boot, readiness, warm-up, prepare, collect,
snapshot — once per variant and results directory) and then executes single *runs* against it
(restore with a strategy, first request, collect the trace, kill). The runner knows nothing about VMs:
it orders runs, records outcomes and keeps going when one fails.

Backends: :mod:`.backends.probe` (probe guest under Firecracker, works on PVM hosts),
:mod:`.backends.jvm` (JVM image under Firecracker, bare-metal KVM hosts) and
:mod:`.backends.hostreplay` (no VM: replays the working set against a file; for testing the machinery).
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError
from firecracer.experiment.plan import Run
from firecracer.experiment.spec import Spec, Variant

S = TypeVar("S")


class RunFailed(FirecracerError):
    """A run (or a variant's preparation) failed in a named phase; recorded, and the study goes on."""

    def __init__(self, phase: str, why: str) -> None:
        self.phase = phase
        self.why = why
        super().__init__(f"{phase}: {why}")


@dataclass
class RunOutcome:
    """What a successful run measured.

    ``timings_ms``: SnapStart-style phases, e.g. ``load_snapshot`` (API latency), ``resume``,
    ``first_byte`` and ``first_response`` of the first request (both from the start of the restore),
    ``page_server_ms``. ``metrics``: ``faults``, ``pages``, ``bytes``, ``service_ms`` and backend
    specifics. ``pages``: page numbers (gpa >> 12) the guest touched first, in order, when the run has
    a trace. ``categories``: restored bytes per NMT category, when the recording has NMT.
    """

    timings_ms: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    pages: npt.NDArray[np.uint64] | None = None
    categories: dict[str, int] | None = None
    recording: Path | None = None


class Backend(abc.ABC, Generic[S]):
    """Executes the runs of one study. One instance per study invocation."""

    #: stored in every row; ``host-replay`` rows are never presented as VM results.
    name: str = ""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def check(self) -> None:
        """Raise ``FirecracerError`` naming what this host lacks, before any run starts."""

    @abc.abstractmethod
    def versions(self) -> dict[str, Any]:
        """Versions recorded with every run (firecracer, Firecracker, kernel, JDK …)."""

    @abc.abstractmethod
    def variant(self, variant: Variant, workdir: Path) -> AbstractContextManager[S]:
        """Prepare a variant (boot … snapshot) in ``workdir``, reusing a finished one found there.

        Raise :class:`RunFailed` (phase ``boot``, ``ready``, ``warmup``, ``prepare``, ``snapshot`` …)
        when it cannot be prepared; every run of the variant is then recorded as failed with that reason.
        Leaving the context releases whatever is still running.
        """

    @abc.abstractmethod
    def run(self, state: S, run: Run, rundir: Path) -> RunOutcome:
        """Restore ``state`` with ``run.strategy``, time the first request, collect; kill everything.

        Writes the run's recording into ``rundir``. Raises :class:`RunFailed` (or any error) on failure;
        must leave nothing running on any exit path, Ctrl-C included.
        """


def describe_exception(exc: BaseException) -> str:
    """One line for the ``reason`` column: the message, with the type when the message alone is vague."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FirecracerError) and msg:
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__

