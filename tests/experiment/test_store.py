"""The SQLite store: round trip, one study per directory, corrupt files, shard merges."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from firecracer.errors import FirecracerError, FormatError
from firecracer.experiment.store import DB_NAME, ResultStore, RunRecord, merge


def rec(run_id: str, status: str = "ok", idx: int = 0, **kw: object) -> RunRecord:
    base: dict[str, object] = dict(run_id=run_id, idx=idx, variant=run_id.split(".")[0], strategy="ondemand",
                                   repetition=1, status=status, started="s", finished="f", wall_s=0.5,
                                   host="h", backend="host-replay", spec={"k": 1},
                                   versions={"firecracer": "x"})
    base.update(kw)
    return RunRecord(**base)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    pages = np.array([7, 3, 2**40], dtype=np.uint64)
    with ResultStore.open(tmp_path / "r", create=True) as st:
        st.bind_study("s", "d1", "text", "spec.toml", "host-replay")
        st.record(rec("a.x.r1", timings={"first_response": 1.5}, metrics={"faults": 3}, pages=pages,
                      categories={"Java Heap": 4096}, recording="runs/a.x.r1"))
        st.record(rec("a.x.r2", status="failed", idx=1, phase="restore", reason="boom"))
    with ResultStore.open(tmp_path / "r") as st:
        info = st.study()
        assert info is not None and info.name == "s" and info.spec_text == "text"
        runs = st.runs()
        assert [r.run_id for r in runs] == ["a.x.r1", "a.x.r2"]
        assert runs[0].pages is not None and runs[0].pages.tolist() == pages.tolist()
        assert runs[0].timings == {"first_response": 1.5} and runs[0].categories == {"Java Heap": 4096}
        assert runs[1].reason == "boom" and runs[1].pages is None
        assert st.statuses() == {"a.x.r1": "ok", "a.x.r2": "failed"}


def test_one_study_per_directory(tmp_path: Path) -> None:
    with ResultStore.open(tmp_path, create=True) as st:
        st.bind_study("s", "d1", "t", "p", "probe")
        st.bind_study("s", "d1", "t", "p", "probe")  # same spec: fine
        with pytest.raises(FirecracerError, match="different spec"):
            st.bind_study("s", "d2", "t2", "p", "probe")


def test_missing_and_corrupt_databases(tmp_path: Path) -> None:
    with pytest.raises(FirecracerError, match="not a results directory"):
        ResultStore.open(tmp_path)
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FormatError, match=DB_NAME):
        ResultStore.open(tmp_path)


def _shard(d: Path, digest: str, *recs: RunRecord) -> Path:
    with ResultStore.open(d, create=True) as st:
        st.bind_study("s", digest, "t", "p", "host-replay")
        for r in recs:
            if r.recording:
                (d / r.recording).mkdir(parents=True)
                (d / r.recording / "trace.npz").write_bytes(b"x")
            st.record(r)
    return d


def test_merge_shards(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a", "d", rec("v.x.r1", idx=0, recording="runs/v.x.r1"),
               rec("v.x.r2", "failed", idx=1))
    b = _shard(tmp_path / "b", "d", rec("v.x.r2", idx=1), rec("v.x.r3", idx=2))
    counts = merge(tmp_path / "m", [a, b])
    assert counts == {"added": 3, "replaced": 1, "kept": 0}
    with ResultStore.open(tmp_path / "m") as st:
        assert st.statuses() == {"v.x.r1": "ok", "v.x.r2": "ok", "v.x.r3": "ok"}
    assert (tmp_path / "m" / "runs" / "v.x.r1" / "trace.npz").exists()
    # merging again keeps what is there
    assert merge(tmp_path / "m", [a])["kept"] == 2


def test_merge_refuses_other_studies(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a", "d1", rec("v.x.r1"))
    b = _shard(tmp_path / "b", "d2", rec("v.x.r2"))
    with pytest.raises(FirecracerError, match=rf"^{b}: holds study 's' from another spec \(digest d2\) than "
                                              rf"{a} .*nothing was merged"):
        merge(tmp_path / "m", [a, b])
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.merging-*"))  # no partial merge
    with pytest.raises(FirecracerError, match="destination itself"):
        merge(a, [a])


def test_rows_are_plain_sqlite(tmp_path: Path) -> None:
    """Other tools can read the results with sqlite3 alone."""
    _shard(tmp_path, "d", rec("v.x.r1", timings={"first_response": 2.0}))
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        row = c.execute("SELECT run_id, status, json_extract(timings, '$.first_response') "
                        "FROM runs").fetchone()
    assert row == ("v.x.r1", "ok", 2.0)
