"""Results in SQLite: one row per finished run, with the run's full spec and the versions that made it.

A results directory holds ``results.sqlite`` (this store), ``runs/<run_id>/`` (each run's recording)
and ``variants/<name>/`` (snapshots). A row is written in one transaction when a run ends, ok or failed,
so an interrupted study loses at most the run in flight, and re-running skips every run with a row.
Shards of one study write separate databases; :func:`merge` combines them (same spec digest required).

One writer per results directory: :class:`ResultsLock` (``flock`` on ``RESULTS/.lock``, which names
the holder's pid) makes a second ``experiment run`` (or a merge into it) refuse at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sqlite3
import sys
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

    @property
    def request(self) -> str | None:
        """The first request after the restore, when the study named several (``workload.paths``)."""
        q = self.spec.get("request")
        return q if isinstance(q, str) else None

    @property
    def cell(self) -> str:
        """The report's column for this run: the strategy, and the first request when there are several."""
        return f"{self.strategy} {self.request}" if self.request else self.strategy

    def _row(self) -> tuple[Any, ...]:
        return (self.run_id, self.idx, self.variant, self.strategy, self.repetition, self.status, self.phase,
                self.reason, self.started, self.finished, self.wall_s, self.host, self.shard, self.backend,
                json.dumps(self.spec, sort_keys=True), json.dumps(self.versions, sort_keys=True),
                json.dumps(self.timings), json.dumps(self.metrics),
                None if self.categories is None else json.dumps(self.categories),
                pack_pages(self.pages), self.recording)

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> RunRecord:
        try:
            return cls._parse_row(row)
        except (ValueError, TypeError, KeyError, zlib.error, FirecracerError) as exc:
            run_id = str(row["run_id"]) if "run_id" in row.keys() else "?"  # noqa: SIM118 (Row: keys)
            raise _RowError(run_id, exc) from None

    @classmethod
    def _parse_row(cls, row: sqlite3.Row) -> RunRecord:
        return cls(
            run_id=row["run_id"], idx=row["idx"], variant=row["variant"], strategy=row["strategy"],
            repetition=row["repetition"], status=row["status"], phase=row["phase"], reason=row["reason"],
            started=row["started"], finished=row["finished"], wall_s=row["wall_s"], host=row["host"],
            shard=row["shard"], backend=row["backend"], spec=json.loads(row["spec"]),
            versions=json.loads(row["versions"]), timings=json.loads(row["timings"]),
            metrics=json.loads(row["metrics"]),
            categories=None if row["categories"] is None else json.loads(row["categories"]),
            pages=unpack_pages(row["pages"]), recording=row["recording"])


class _RowError(Exception):
    def __init__(self, run_id: str, exc: BaseException) -> None:
        self.run_id, self.exc = run_id, exc
        super().__init__(f"run {run_id!r}: malformed row ({type(exc).__name__}: {exc})")


class ResultsLock:
    """An exclusive ``flock`` on ``RESULTS/.lock`` for as long as one command writes the directory.

    The file holds the holder's pid and command line, so whoever is refused can be told who writes.
    The kernel drops the lock when the holder dies, however it dies (a stale file is harmless). Taking it
    again in the process that holds it is allowed (the CLI locks before it draws anything, then the runner).
    """

    _held: dict[str, int] = {}  # noqa: RUF012 (process-wide: which directories this process holds)

    def __init__(self, results_dir: Path | str, *, what: str = "experiment run") -> None:
        self.path = Path(results_dir) / ".lock"
        self.what = what
        self.fd = -1
        self._key = ""

    def __enter__(self) -> ResultsLock:
        self._key = os.path.abspath(self.path)
        if self._key in ResultsLock._held:
            ResultsLock._held[self._key] += 1
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise FirecracerError(f"{self.path.parent}: cannot use this results directory "
                                  f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise FirecracerError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
            raise FirecracerError(f"{self.path.parent}: another command is writing this results directory "
                                  f"({holder or 'holder unknown'}); wait for it to finish, or use another "
                                  "results directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:6]) or self.what}\n".encode(), 0)
        self.fd = fd
        ResultsLock._held[self._key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._key in ResultsLock._held:
            ResultsLock._held[self._key] -= 1
            if ResultsLock._held[self._key] > 0:
                return
            del ResultsLock._held[self._key]
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
        self.record_many([rec])

    def record_many(self, recs: list[RunRecord]) -> None:
        """Insert (or replace) several rows in one transaction: all of them or none."""
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._tx() as c:
            c.executemany(f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})",
                          [rec._row() for rec in recs])

    def statuses(self) -> dict[str, str]:
        """run_id → 'ok' | 'failed' for every recorded run."""
        return {r[0]: r[1] for r in self._conn.execute("SELECT run_id, status FROM runs")}

    def runs(self) -> list[RunRecord]:
        """Every recorded run, in plan order.

        :raises FormatError: a row cannot be read back (names the database and the run).
        """
        try:
            cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs ORDER BY idx")
            return [RunRecord._from_row(r) for r in cur]
        except _RowError as exc:
            raise FormatError(self.db_path, 0, str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise FormatError(self.db_path, 0, f"cannot read the runs table: {exc}") from None


def merge(dest: Path | str, sources: Iterable[Path | str], *, copy_recordings: bool = True) -> dict[str, int]:
    """Combine shard results directories into ``dest`` (created if needed).

    All sources must hold the same study (spec digest) as each other and as ``dest`` if it has one; every
    source is read and checked before anything is written, and a mismatch names the offending source.
    A run present in several places keeps an ``ok`` row over a ``failed`` one, else the first seen.
    Recordings (``runs/<id>/``) are copied along so the report's links work. A new ``dest`` is built
    beside it and renamed into place; into an existing one the rows go in one transaction. So a failed
    merge leaves no partial merge behind. Returns counts: ``added``, ``replaced``, ``kept``.
    """
    dest = Path(dest)
    counts = {"added": 0, "replaced": 0, "kept": 0}
    srcs = [Path(s) for s in sources]
    if not srcs:
        raise FirecracerError("merge: no shard directories given")
    loaded: list[tuple[Path, StudyInfo, list[RunRecord]]] = []
    for src in srcs:
        if dest.exists() and src.resolve() == dest.resolve():
            raise FirecracerError(f"merge: {src} is the destination itself")
        with closing(ResultStore.open(src)) as inp:
            info = inp.study()
            if info is None:
                raise FirecracerError(f"{inp.db_path}: holds no study")
            loaded.append((src, info, inp.runs()))
    first_src, first, _ = loaded[0]
    for src, info, _ in loaded[1:]:
        if info.digest != first.digest:
            raise FirecracerError(f"{src}: holds study {info.name!r} from another spec (digest "
                                  f"{info.digest}) than {first_src} (study {first.name!r}, digest "
                                  f"{first.digest}); nothing was merged")
    fresh = not (dest / DB_NAME).exists()
    if not fresh:
        with closing(ResultStore.open(dest)) as have:
            held = have.study()
        if held is not None and held.digest != first.digest:
            raise FirecracerError(f"{first_src}: holds study {first.name!r} (digest {first.digest}), but "
                                  f"{dest} holds study {held.name!r} (digest {held.digest}); nothing was "
                                  "merged")
    if fresh and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FirecracerError(f"{dest}: exists and is not a results directory; merge into a new or "
                              "empty one")
    target = dest.parent / f".{dest.name}.merging-{os.getpid()}" if fresh else dest
    copied: list[Path] = []
    try:
        with ResultsLock(target, what="experiment merge"), \
                closing(ResultStore.open(target, create=True)) as out:
            out.bind_study(first.name, first.digest, first.spec_text, first.spec_path, first.backend)
            have_status = out.statuses()
            chosen: dict[str, tuple[Path, RunRecord]] = {}
            for src, _, rows in loaded:
                for rec in rows:
                    prev = (chosen[rec.run_id][1].status if rec.run_id in chosen
                            else have_status.get(rec.run_id))
                    if prev is not None and not (prev == "failed" and rec.ok):
                        counts["kept"] += 1
                        continue
                    counts["replaced" if prev else "added"] += 1
                    chosen[rec.run_id] = (src, rec)
            if copy_recordings:
                for src, rec in chosen.values():
                    if not rec.recording:
                        continue
                    s, d = src / rec.recording, target / rec.recording
                    if s.is_dir() and not d.exists():
                        tmp = d.with_name(f".{d.name}.merging")
                        shutil.rmtree(tmp, ignore_errors=True)
                        tmp.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copytree(s, tmp, symlinks=True)
                        copied.append(tmp)
                for tmp in copied:
                    os.replace(tmp, tmp.with_name(tmp.name[1:].removesuffix(".merging")))
            out.record_many([rec for _, rec in chosen.values()])
        if fresh:  # nobody else knows the temporary directory: its lock file can go
            (target / ".lock").unlink(missing_ok=True)
            if dest.exists():
                dest.rmdir()
            os.rename(target, dest)
    except BaseException:
        for tmp in copied:
            shutil.rmtree(tmp, ignore_errors=True)
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return counts
