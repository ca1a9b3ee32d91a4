"""The runner with the host-replay backend (no VM): records, resumes, goes on after failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from firecracer.experiment.backend import RunFailed, RunOutcome
from firecracer.experiment.backends.hostreplay import HostReplayBackend, HostState
from firecracer.experiment.plan import Run, Shard, plan_runs
from firecracer.experiment.runner import Event, run_study
from firecracer.experiment.spec import Spec
from firecracer.experiment.store import ResultStore, merge


class Counting(HostReplayBackend):
    """host-replay that remembers what it executed and fails the runs it is told to."""

    def __init__(self, spec: Spec, fail: dict[str, str] | None = None) -> None:
        super().__init__(spec)
        self.executed: list[str] = []
        self.fail = fail or {}

    def run(self, state: HostState, run: Run, rundir: Path) -> RunOutcome:
        self.executed.append(run.run_id)
        if run.run_id in self.fail:
            raise RunFailed("restore", self.fail[run.run_id])
        return super().run(state, run, rundir)


def test_study_runs_every_cell_and_records_spec_and_versions(make_spec: Callable[..., Spec],
                                                              tmp_path: Path) -> None:
    spec = make_spec(strategies=("file", "ondemand", "fault-around:16", "prefetch", "eager"))
    events: list[Event] = []
    summary = run_study(spec, tmp_path / "res", on_event=events.append)
    assert (summary.planned, summary.ok, summary.failed, summary.skipped) == (20, 20, 0, 0)
    assert events[0].kind == "start" and events[0].total == 20 and events[-1].kind == "end"
    with ResultStore.open(tmp_path / "res") as st:
        runs = {r.run_id: r for r in st.runs()}
    assert len(runs) == 20
    r = runs["big.ondemand.r2"]
    assert r.backend == "host-replay" and r.ok
    assert r.spec["variant"] == {"name": "big", "working_set_pages": 256, "mean_run_pages": 2.5, "seed": 2}
    assert r.spec["strategy"] == "ondemand" and r.spec["repetition"] == 2
    assert r.spec["spec_digest"] == spec.digest
    assert r.versions["firecracer"] and r.versions["host"]["kernel"]
    # deterministic counts: ondemand faults once per working-set page, none left for prefetch/eager
    assert r.metrics["faults"] == 256 and r.metrics["errors"] == 0 and r.metrics["bytes"] == 256 * 4096
    assert runs["big.prefetch.r1"].metrics["misses"] == 0
    assert runs["big.eager.r1"].metrics["bytes"] == 16 * 2**20
    fa = runs["big.fault-around16.r1"]
    assert fa.metrics["faults"] < 256 and fa.metrics["pages"] >= 256
    assert r.pages is not None and len(r.pages) == 256
    assert runs["big.file.r1"].pages is None  # no page server, no trace
    assert (tmp_path / "res" / "runs" / "big.ondemand.r2" / "trace.npz").exists()
    assert np.array_equal(np.sort(r.pages), np.sort(runs["big.ondemand.r1"].pages))  # type: ignore[arg-type]


def test_rerun_skips_finished_runs(make_spec: Callable[..., Spec], tmp_path: Path) -> None:
    spec = make_spec()
    first = Counting(spec)
    run_study(spec, tmp_path / "r", backend=first)
    assert len(first.executed) == 16
    again = Counting(spec)
    summary = run_study(spec, tmp_path / "r", backend=again)
    assert again.executed == [] and summary.skipped == 16 and summary.ok == 0


def test_interrupt_keeps_finished_runs_and_resume_does_the_rest(make_spec: Callable[..., Spec],
                                                                tmp_path: Path) -> None:
    spec = make_spec()

    class Interrupting(Counting):
        def run(self, state: HostState, run: Run, rundir: Path) -> RunOutcome:
            if len(self.executed) == 5:
                raise KeyboardInterrupt
            return super().run(state, run, rundir)

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path / "r", backend=Interrupting(spec))
    with ResultStore.open(tmp_path / "r") as st:
        done = st.statuses()
    assert len(done) == 5
    resumed = Counting(spec)
    run_study(spec, tmp_path / "r", backend=resumed)
    assert set(resumed.executed).isdisjoint(done) and len(resumed.executed) == 11


def test_failures_are_recorded_and_the_study_goes_on(make_spec: Callable[..., Spec], tmp_path: Path) -> None:
    from firecracer.uffd.trace import FLAG_FAULTING, make_trace, save_trace

    n = 4  # a valid trace when the spec is validated, garbage by the time the variant is prepared
    save_trace(make_trace({"t_ns": range(n), "hva": [0] * n, "file_off": [(300 + i) * 4096 for i in range(n)],
                           "gpa": [(300 + i) * 4096 for i in range(n)], "flags": [FLAG_FAULTING] * n,
                           "action": [0] * n, "fault": range(n), "service_ns": [0] * n}, {}),
               tmp_path / "garbage.npz")
    spec = make_spec(extra_variant='\n[[variant]]\nname = "broken"\ntrace = "garbage.npz"\n')
    (tmp_path / "garbage.npz").write_bytes(b"not a trace")
    be = Counting(spec, fail={"small.ondemand.r1": "page server died"})
    summary = run_study(spec, tmp_path / "r", backend=be)
    assert summary.failed == 1 + 8 and summary.ok == 24 - 9
    with ResultStore.open(tmp_path / "r") as st:
        runs = {r.run_id: r for r in st.runs()}
    bad = runs["small.ondemand.r1"]
    assert bad.status == "failed" and bad.phase == "restore" and bad.reason == "restore: page server died"
    broken = runs["broken.prefetch.r2"]
    assert broken.status == "failed" and "variant not prepared" in (broken.reason or "")
    assert "garbage.npz" in (broken.reason or "")
    assert runs["big.ondemand.r1"].ok  # later variants still ran
    # failed runs are not retried unless asked
    retry = Counting(spec)
    run_study(spec, tmp_path / "r", backend=retry)
    assert retry.executed == []
    retry2 = Counting(spec)
    summary = run_study(spec, tmp_path / "r", backend=retry2, retry_failed=True)
    assert retry2.executed == ["small.ondemand.r1"]  # broken's variant still cannot be prepared
    assert summary.ok == 1 and summary.failed == 8


def test_verification_errors_fail_the_run(make_spec: Callable[..., Spec], tmp_path: Path) -> None:
    """Corrupting the memory file between runs is caught by the pattern check, recorded as failed."""
    spec = make_spec(variants=(("small", 64),), strategies=("ondemand",), repetitions=3)

    class Corrupting(Counting):
        def run(self, state: HostState, run: Run, rundir: Path) -> RunOutcome:
            if run.repetition == 2:
                with open(state.mem, "r+b") as f:
                    f.seek(int(state.pages[0]) * 4096)
                    f.write(b"\0" * 8)
            return super().run(state, run, rundir)

    summary = run_study(spec, tmp_path / "r", backend=Corrupting(spec))
    assert summary.failed == 2 and summary.ok == 1
    with ResultStore.open(tmp_path / "r") as st:
        r2 = {r.run_id: r for r in st.runs()}["small.ondemand.r2"]
    assert r2.phase == "verify" and "1 of 64 pages had wrong contents" in (r2.reason or "")


def test_shards_then_merge_equal_one_study(make_spec: Callable[..., Spec], tmp_path: Path) -> None:
    spec = make_spec()
    for i in (1, 2, 3):
        run_study(spec, tmp_path / f"s{i}", shard=Shard(i, 3))
    merge(tmp_path / "all", [tmp_path / f"s{i}" for i in (1, 2, 3)])
    with ResultStore.open(tmp_path / "all") as st:
        got = st.statuses()
        shards = {r.shard for r in st.runs()}
    assert set(got) == {r.run_id for r in plan_runs(spec)} and set(got.values()) == {"ok"}
    assert shards == {"1/3", "2/3", "3/3"}
