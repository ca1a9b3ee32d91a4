"""Execute a study: plan → skip what the store already has → per variant, prepare then run, record.

The runner never prints: it reports through an ``on_event`` callback (the CLI draws a rich progress
bar from it). A failing run or variant is recorded as ``failed`` with its phase and reason, and the
study goes on. Ctrl-C (KeyboardInterrupt) stops the study after the backend has cleaned up; the run in
flight is not recorded, so a re-run does it again and skips every recorded one.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firecracer import __version__, host
from firecracer.errors import FirecracerError
from firecracer.experiment.attribution import restored_by_category
from firecracer.experiment.backend import Backend, RunFailed, RunOutcome, describe_exception
from firecracer.experiment.plan import Run, Shard, group_by_variant, plan_runs
from firecracer.experiment.spec import Spec, Variant
from firecracer.experiment.store import ResultsLock, ResultStore, RunRecord, now_iso


@dataclass(frozen=True)
class Event:
    """Progress: ``kind`` is ``start`` (study; ``total``/``skipped`` set), ``variant`` (preparing;
    on a cluster ``host`` says which machine), ``run`` (starting a run), ``done`` (a run was recorded;
    ``record`` set), ``lost`` (a cluster worker died running ``variant``: ``total`` runs of it unrecorded,
    ``reason`` says what happened and whether they are queued again) or ``end``."""

    kind: str
    run: Run | None = None
    record: RunRecord | None = None
    total: int = 0
    skipped: int = 0
    variant: str = ""
    host: str = ""
    reason: str = ""


@dataclass(frozen=True)
class StudySummary:
    """What one invocation did: runs planned for this shard, skipped (already recorded), ok, failed."""

    planned: int
    skipped: int
    ok: int
    failed: int
    results_dir: Path
    failed_runs: tuple[str, ...] = ()  # ids of the runs that failed in this invocation
    failed_before: int = 0  # runs of this plan recorded as failed by an earlier invocation (skipped)


def make_backend(spec: Spec) -> Backend[Any]:
    """The backend the spec names (imported lazily: the probe/jvm ones need the vmm and uffd layers)."""
    if spec.backend == "host-replay":
        from firecracer.experiment.backends.hostreplay import HostReplayBackend
        return HostReplayBackend(spec)
    if spec.backend == "probe":
        from firecracer.experiment.backends.probe import ProbeBackend
        return ProbeBackend(spec)
    from firecracer.experiment.backends.jvm import JvmBackend
    return JvmBackend(spec)


def host_facts() -> dict[str, str]:
    """Where the runs ran; ``environment`` says "lab (QEMU TCG, emulated SVM)" for lab runs, whose
    timings are TCG timings (``timings_comparable_to_kvm``: "no") while their counts are real."""
    return {"hostname": socket.gethostname(), "kernel": platform.release(), "machine": platform.machine(),
            "cpus": str(os.cpu_count() or 0), "environment": host.host_label(),
            "timings_comparable_to_kvm": "yes" if host.timings_comparable_to_kvm() else "no"}


def pending_runs(spec: Spec, store: ResultStore, shard: Shard | None,
                 retry_failed: bool) -> tuple[list[Run], int]:
    """Runs still to do (in order) and how many of the shard's runs are already recorded."""
    runs = plan_runs(spec, shard)
    have = store.statuses()
    todo = [r for r in runs if r.run_id not in have or (retry_failed and have[r.run_id] == "failed")]
    return todo, len(runs) - len(todo)


def run_study(spec: Spec, results_dir: Path | str, *, backend: Backend[Any] | None = None,
              shard: Shard | None = None, retry_failed: bool = False,
              on_event: Callable[[Event], None] | None = None) -> StudySummary:
    """Run every pending run of ``spec`` (or of one shard) into ``results_dir``; see module doc."""
    results_dir = Path(results_dir)
    emit = on_event or (lambda e: None)
    be = backend if backend is not None else make_backend(spec)
    be.check()
    ok = failed = 0
    failed_ids: list[str] = []
    with ResultsLock(results_dir), ResultStore.open(results_dir, create=True) as store:
        store.bind_study(spec.name, spec.digest, spec.text, str(spec.path), spec.backend)
        todo, skipped = pending_runs(spec, store, shard, retry_failed)
        emit(Event("start", total=len(todo) + skipped, skipped=skipped))
        versions = {"firecracer": __version__, **be.versions()}
        host = host_facts()
        for variant, runs in group_by_variant(todo):
            emit(Event("variant", variant=variant.name))
            for rec in run_variant(spec, be, variant, runs, results_dir, shard=shard, host=host,
                                   versions=versions, on_run=lambda r: emit(Event("run", run=r))):
                store.record(rec)
                if rec.ok:
                    ok += 1
                else:
                    failed += 1
                    failed_ids.append(rec.run_id)
                emit(Event("done", run=next(r for r in runs if r.run_id == rec.run_id), record=rec))
            if not spec.keep_snapshots and all(r.run_id in store.statuses() for r in runs):
                shutil.rmtree(results_dir / "variants" / variant.name, ignore_errors=True)
        emit(Event("end"))
        done_now = {r.run_id for r in todo}
        statuses = store.statuses()
        failed_before = sum(1 for r in plan_runs(spec, shard)
                            if r.run_id not in done_now and statuses.get(r.run_id) == "failed")
    return StudySummary(planned=len(todo) + skipped, skipped=skipped, ok=ok, failed=failed,
                        results_dir=results_dir, failed_runs=tuple(failed_ids), failed_before=failed_before)


def run_variant(spec: Spec, be: Backend[Any], variant: Variant, runs: list[Run], results_dir: Path, *,
                shard: Shard | None, host: dict[str, str], versions: dict[str, Any],
                on_run: Callable[[Run], None] = lambda r: None) -> Iterator[RunRecord]:
    """Prepare ``variant`` in ``results_dir/variants/<name>`` and execute ``runs`` (all of that variant)
    into ``results_dir/runs/<id>``, yielding each run's row as it is done; the caller records it.

    A variant that cannot be prepared yields every run as failed with the reason. Ctrl-C (or closing the
    generator) leaves the backend's variant context, which releases whatever still runs. Used by
    :func:`run_study` here and by a cluster worker (:mod:`firecracer.experiment.cluster`).
    """
    spec_all = spec.as_dict()
    vdir = results_dir / "variants" / variant.name
    t_var = (time.monotonic(), now_iso())
    try:
        vdir.mkdir(parents=True, exist_ok=True)
        cm = be.variant(variant, vdir)
        state = cm.__enter__()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the variant cannot be prepared: every run of it fails, go on
        phase = exc.phase if isinstance(exc, RunFailed) else "prepare"
        for run in runs:
            yield make_record(spec_all, spec, run, shard, host, versions, be.name, t_var, None,
                          phase=phase, reason=f"variant not prepared: {describe_exception(exc)}")
        return
    try:
        for run in runs:
            on_run(run)
            rundir = results_dir / "runs" / run.run_id
            t0 = (time.monotonic(), now_iso())
            try:
                _fresh_dir(rundir)  # leftovers of an interrupted or failed attempt go
                outcome = be.run(state, run, rundir)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                phase = exc.phase if isinstance(exc, RunFailed) else "run"
                rec = make_record(spec_all, spec, run, shard, host, versions, be.name, t0, None,
                              phase=phase, reason=describe_exception(exc), rundir=rundir,
                              results_dir=results_dir)
            else:
                if outcome.categories is None:
                    outcome.categories, why = _categories(rundir, vdir)
                    if why:
                        outcome.metrics["attribution_error"] = why
                if spec.viewer:
                    why = _viewer(rundir, f"{spec.name}: {run.run_id}")
                    if why:
                        outcome.metrics["viewer_error"] = why
                rec = make_record(spec_all, spec, run, shard, host, versions, be.name, t0, outcome,
                              rundir=rundir, results_dir=results_dir)
            yield rec
    finally:
        cm.__exit__(None, None, None)


def _fresh_dir(d: Path) -> None:
    """An empty directory at ``d``, whatever was there (a directory, a file or a symlink)."""
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        d.unlink()
    elif d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


def _categories(rundir: Path, vdir: Path) -> tuple[dict[str, int] | None, str | None]:
    """NMT attribution of the run's restored pages when the recording has what it needs.

    A malformed memmap/NMT does not fail a run whose restore worked: the reason is returned (and stored
    in the run's metrics as ``attribution_error``) and the categories stay empty.
    """
    try:
        return restored_by_category(rundir, vdir), None
    except FirecracerError as exc:
        return None, describe_exception(exc)


def _viewer(rundir: Path, title: str) -> str | None:
    """Write the run's viewer page (``rundir/report.html``, firecracer.viz) when it has a trace or memmap.

    Returns why it could not (kept in the run's metrics as ``viewer_error``), else None.
    """
    if not any((rundir / f).exists() for f in ("trace.npz", "memmap.npz")):
        return None
    try:
        from firecracer.analysis.recording import load_recording
        from firecracer.viz.html import ViewOptions, write_report

        write_report([load_recording(rundir)], rundir / "report.html", ViewOptions(title=title))
    except (FirecracerError, OSError, ValueError) as exc:
        return describe_exception(exc)
    return None


def make_record(spec_all: dict[str, Any], spec: Spec, run: Run, shard: Shard | None, host: dict[str, str],
                versions: dict[str, Any], backend: str, t0: tuple[float, str], outcome: RunOutcome | None, *,
                phase: str | None = None, reason: str | None = None, rundir: Path | None = None,
                results_dir: Path | None = None) -> RunRecord:
    """Build the row (a failed one when ``outcome`` is None): the run's full spec (study + this variant +
    strategy + repetition) and versions."""
    run_spec = {**{k: v for k, v in spec_all.items() if k != "variants"},
                "variant": run.variant.as_dict(), "strategy": run.strategy.name,
                "repetition": run.repetition, "spec_digest": spec.digest,
                **({"request": str(run.request)} if run.several_requests else {})}
    wall = time.monotonic() - t0[0]
    rec_path: str | None = None
    if rundir is not None and results_dir is not None and rundir.is_dir() and any(rundir.iterdir()):
        rec_path = str(rundir.relative_to(results_dir))
    return RunRecord(
        run_id=run.run_id, idx=run.index, variant=run.variant.name, strategy=run.strategy.name,
        repetition=run.repetition, status="ok" if outcome is not None else "failed",
        phase=phase, reason=reason, started=t0[1], finished=now_iso(), wall_s=wall,
        host=host["hostname"], shard=str(shard) if shard else None, backend=backend,
        spec=run_spec, versions={**versions, "host": host},
        timings=dict(outcome.timings_ms) if outcome else {},
        metrics=dict(outcome.metrics) if outcome else {},
        categories=outcome.categories if outcome else None,
        pages=outcome.pages if outcome else None,
        recording=rec_path,
    )
