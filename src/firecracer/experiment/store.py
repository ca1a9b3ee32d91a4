"""Results in SQLite: one row per finished run, with the run's full spec and the versions that made it.

A results directory holds ``results.sqlite`` (this store), ``runs/<run_id>/`` (each run's recording)
and ``variants/<name>/`` (snapshots). A row is written in one transaction when a run ends, ok or failed,
so an interrupted study loses at most the run in flight, and re-running skips every run with a row.
Shards of one study write separate databases; :func:`merge` combines them (same spec digest required).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer import __version__
from firecracer.errors import FirecracerError, FormatError

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id     TEXT PRIMARY KEY,
  idx        INTEGER NOT NULL,
  variant    TEXT NOT NULL,
  strategy   TEXT NOT NULL,
  repetition INTEGER NOT NULL,
  status     TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
  phase      TEXT,
  reason     TEXT,
  started    TEXT NOT NULL,
  finished   TEXT NOT NULL,
  wall_s     REAL NOT NULL,
  host       TEXT NOT NULL,
  shard      TEXT,
  backend    TEXT NOT NULL,
  spec       TEXT NOT NULL,
  versions   TEXT NOT NULL,
  timings    TEXT NOT NULL,
  metrics    TEXT NOT NULL,
  categories TEXT,
  pages      BLOB,
  recording  TEXT
);
"""

_COLUMNS = ("run_id", "idx", "variant", "strategy", "repetition", "status", "phase", "reason", "started",
            "finished", "wall_s", "host", "shard", "backend", "spec", "versions", "timings", "metrics",
            "categories", "pages", "recording")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def pack_pages(pages: npt.NDArray[np.uint64] | None) -> bytes | None:
    """Page numbers (gpa >> 12) in first-touch order → compact blob (zlib of little-endian uint64)."""
    if pages is None:
        return None
    return zlib.compress(np.ascontiguousarray(pages, dtype="<u8").tobytes(), 6)


def unpack_pages(blob: bytes | None) -> npt.NDArray[np.uint64] | None:
    if blob is None:
        return None
    raw = zlib.decompress(blob)
    if len(raw) % 8:
        raise FirecracerError("results store: a page set blob is not a whole number of uint64")
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


@dataclass
class RunRecord:
    """One run's outcome as stored. ``timings`` are milliseconds; ``metrics`` counts and bytes."""

    run_id: str
    idx: int
    variant: str
    strategy: str
    repetition: int
    status: str
    started: str
    finished: str
    wall_s: float
    host: str
    backend: str
    spec: dict[str, Any]
    versions: dict[str, Any]
    phase: str | None = None
    reason: str | None = None
    shard: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    categories: dict[str, int] | None = None
    pages: npt.NDArray[np.uint64] | None = None
    recording: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def _row(self) -> tuple[Any, ...]:
        return (self.run_id, self.idx, self.variant, self.strategy, self.repetition, self.status, self.phase,
                self.reason, self.started, self.finished, self.wall_s, self.host, self.shard, self.backend,
                json.dumps(self.spec, sort_keys=True), json.dumps(self.versions, sort_keys=True),
                json.dumps(self.timings), json.dumps(self.metrics),
                None if self.categories is None else json.dumps(self.categories),
                pack_pages(self.pages), self.recording)

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> RunRecord:
        return cls(
            run_id=row["run_id"], idx=row["idx"], variant=row["variant"], strategy=row["strategy"],
            repetition=row["repetition"], status=row["status"], phase=row["phase"], reason=row["reason"],
            started=row["started"], finished=row["finished"], wall_s=row["wall_s"], host=row["host"],
            shard=row["shard"], backend=row["backend"], spec=json.loads(row["spec"]),
            versions=json.loads(row["versions"]), timings=json.loads(row["timings"]),
            metrics=json.loads(row["metrics"]),
            categories=None if row["categories"] is None else json.loads(row["categories"]),
            pages=unpack_pages(row["pages"]), recording=row["recording"])


@dataclass(frozen=True)
class StudyInfo:
    """What the ``study`` table says: name, spec digest, the spec text and when it was created."""

    name: str
    digest: str
    spec_text: str
    spec_path: str
    backend: str
    created: str
    firecracer: str


class ResultStore:
    """The SQLite file of one results directory (or shard)."""

    def __init__(self, results_dir: Path, conn: sqlite3.Connection) -> None:
        self.dir = results_dir
        self._conn = conn

    @classmethod
    def open(cls, results_dir: Path | str, *, create: bool = False) -> ResultStore:
        """Open ``RESULTS/results.sqlite``; with ``create`` make the directory and schema if absent."""
        results_dir = Path(results_dir)
        db = results_dir / DB_NAME
        if not db.exists():
            if not create:
                raise FirecracerError(f"{results_dir}: no {DB_NAME} here (not a results directory)")
            results_dir.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(db, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.executescript(_SCHEMA)
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise FormatError(db, 0, f"not a usable SQLite results database: {exc}") from None
        store = cls(results_dir, conn)
        have = store._get("schema_version")
        if have is not None and int(have) != SCHEMA_VERSION:
            conn.close()
            raise FormatError(db, 0, f"results schema version {have}, this firecracer reads {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db_path(self) -> Path:
        return self.dir / DB_NAME

    def _get(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn:
            yield self._conn

    def bind_study(self, name: str, digest: str, spec_text: str, spec_path: str, backend: str) -> StudyInfo:
        """Record the study this directory holds, or check it is the same one (same spec digest)."""
        info = self.study()
        if info is not None:
            if info.digest != digest:
                raise FirecracerError(
                    f"{self.db_path}: holds results of study {info.name!r} from a different spec "
                    f"(digest {info.digest}, this spec {digest}); use another results directory")
            return info
        with self._tx() as c:
            for k, v in (("schema_version", str(SCHEMA_VERSION)), ("name", name), ("digest", digest),
                         ("spec_text", spec_text), ("spec_path", spec_path), ("backend", backend),
                         ("created", now_iso()), ("firecracer", __version__)):
                c.execute("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", (k, v))
        info = self.study()
        assert info is not None
        return info

    def study(self) -> StudyInfo | None:
        rows = dict(self._conn.execute("SELECT key, value FROM study").fetchall())
        if "digest" not in rows:
            return None
        return StudyInfo(name=rows["name"], digest=rows["digest"], spec_text=rows["spec_text"],
                         spec_path=rows.get("spec_path", ""), backend=rows.get("backend", ""),
                         created=rows.get("created", ""), firecracer=rows.get("firecracer", ""))

    def record(self, rec: RunRecord) -> None:
        """Insert (or replace, when retrying a failed run) one run's row, atomically."""
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._tx() as c:
            c.execute(f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})", rec._row())

    def statuses(self) -> dict[str, str]:
        """run_id → 'ok' | 'failed' for every recorded run."""
        return {r[0]: r[1] for r in self._conn.execute("SELECT run_id, status FROM runs")}

    def runs(self) -> list[RunRecord]:
        cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs ORDER BY idx")
        return [RunRecord._from_row(r) for r in cur]


def merge(dest: Path | str, sources: Iterable[Path | str], *, copy_recordings: bool = True) -> dict[str, int]:
    """Combine shard results directories into ``dest`` (created if needed).

    All sources must hold the same study (spec digest). A run present in several places keeps an ``ok``
    row over a ``failed`` one, else the first seen. Recordings (``runs/<id>/``) are copied along so the
    report's links work. Returns counts: ``added``, ``replaced``, ``kept``.
    """
    dest = Path(dest)
    counts = {"added": 0, "replaced": 0, "kept": 0}
    srcs = [Path(s) for s in sources]
    if not srcs:
        raise FirecracerError("merge: no shard directories given")
    with closing(ResultStore.open(dest, create=True)) as out:
        for src in srcs:
            if src.resolve() == dest.resolve():
                raise FirecracerError(f"merge: {src} is the destination itself")
            with closing(ResultStore.open(src)) as inp:
                info = inp.study()
                if info is None:
                    raise FirecracerError(f"{inp.db_path}: holds no study")
                out.bind_study(info.name, info.digest, info.spec_text, info.spec_path, info.backend)
                have = out.statuses()
                for rec in inp.runs():
                    prev = have.get(rec.run_id)
                    if prev is not None and not (prev == "failed" and rec.ok):
                        counts["kept"] += 1
                        continue
                    if copy_recordings and rec.recording:
                        s, d = src / rec.recording, dest / rec.recording
                        if s.is_dir() and not d.exists():
                            shutil.copytree(s, d, symlinks=True)
                    out.record(rec)
                    counts["replaced" if prev else "added"] += 1
    return counts
