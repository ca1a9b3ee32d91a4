"""Where a job that needs "a KVM that boots Linux guests" runs: natively when this host has one, else in
the lab. One answer for every command that asks (``experiment run``, ``demo``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from firecracer import host
from firecracer.lab.assets import LabError, Progress
from firecracer.lab.machine import LabMachine, LabResult, LabSpec


def why_lab() -> str | None:
    """Why Linux guests must go to the lab here (``None``: they boot natively, or we are in L1)."""
    if host.in_lab():
        return None
    native = host.check_linux_guests()
    return None if native.ok else native.detail


def lab_or_error(why: str) -> None:
    """Raise the one line that says neither native KVM nor the lab can run the job."""
    lab = host.check_lab()
    if not lab.ok:
        raise LabError(f"{why}, and the lab cannot run here either: {lab.detail}")


def run_cli(args: Sequence[str], *, shares: Sequence[Path] = (), cwd: Path | None = None,
            spec: LabSpec | None = None, progress: Progress | None = None,
            stdout: Callable[[bytes], None] | None = None,
            stderr: Callable[[bytes], None] | None = None) -> LabResult:
    """``firecracer ARGS…`` in one L1, with ``shares`` writable (created if missing)."""
    for s in shares:
        Path(s).mkdir(parents=True, exist_ok=True)
    base = spec or LabSpec()
    spec = LabSpec(base.mem_mib, base.cpus, tuple(Path(s).resolve() for s in (*base.shares, *shares)),
                   base.timeout_s, base.cpu_model, base.kernel_args)
    machine = LabMachine(spec, progress=progress)
    return machine.run([sys.executable, "-m", "firecracer", *args], cwd=cwd, stdout=stdout, stderr=stderr)
