"""The page server's metrics JSON (``firecracer uffd serve --metrics``, a study's ``uffd-metrics.json``).

``ServerMetrics`` is its one reader and writer: the server writes it when it stops, the experiment
backends and benchmarks read it. The fields every reader needs are typed and validated; every other
key of a session (``events``, ``ioctls``, ``peer_pid``, blocks a newer server adds …) rides in ``extra``
and is written back unchanged, so an older reader keeps working with a newer server's file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.errors import FormatError
from firecracer.fsio import atomic_write, read_json

#: bytes a metrics file may have
LIMIT = 64 << 20


def _need(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: str | Path,
          default: Any = None, required: bool = False) -> Any:
    """``doc[key]`` if it has type ``kind`` (``default`` when absent and not required)."""
    if key not in doc or doc[key] is None:
        if required:
            raise FormatError(path, 0, f"{where}{key} is missing")
        return default
    val = doc[key]
    if isinstance(val, bool) and kind in (int, float, (int, float)):
        raise FormatError(path, 0, f"{where}{key} must be a number, not a boolean")
    if not isinstance(val, kind):
        raise FormatError(path, 0, f"{where}{key} must be {getattr(kind, '__name__', 'a number')}, "
                                   f"not {type(val).__name__}")
    return val


@dataclass
class SessionMetrics:
    """One hand-off's counts: faults, pages by action, bytes, latency, the strategy's install facts."""

    session: int = 0
    strategy: str = ""
    faults: int = 0
    pages: dict[str, int] = field(default_factory=dict)
    pages_total: int = 0
    bytes_copied: int = 0
    bytes_zeroed: int = 0
    latency_us: dict[str, float] = field(default_factory=dict)
    handshake_to_last_fault_ms: float | None = None
    ended: str | None = None
    error: str | None = None
    #: what the strategy reported of its installs (JSON key ``prefetch``, for prefetch and eager alike)
    install: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("session", "strategy", "faults", "pages", "pages_total", "bytes_copied", "bytes_zeroed",
             "latency_us", "handshake_to_last_fault_ms", "ended", "error", "prefetch")

    @classmethod
    def from_dict(cls, doc: object, path: str | Path, index: int) -> SessionMetrics:
        where = f"sessions[{index}]."
        if not isinstance(doc, dict):
            raise FormatError(path, 0, f"sessions[{index}] must be an object")
        num = (int, float)
        return cls(
            session=_need(doc, "session", int, where, path, index),
            strategy=_need(doc, "strategy", str, where, path, ""),
            faults=_need(doc, "faults", int, where, path, required=True),
            pages=_need(doc, "pages", dict, where, path, {}),
            pages_total=_need(doc, "pages_total", int, where, path, 0),
            bytes_copied=_need(doc, "bytes_copied", int, where, path, 0),
            bytes_zeroed=_need(doc, "bytes_zeroed", int, where, path, 0),
            latency_us=_need(doc, "latency_us", dict, where, path, {}),
            handshake_to_last_fault_ms=_need(doc, "handshake_to_last_fault_ms", num, where, path),
            ended=_need(doc, "ended", str, where, path),
            error=_need(doc, "error", str, where, path),
            install=_need(doc, "prefetch", dict, where, path, {}),
            extra={k: v for k, v in doc.items() if k not in cls._KEYS})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "session": self.session, "strategy": self.strategy, "faults": self.faults, "pages": self.pages,
            "pages_total": self.pages_total, "bytes_copied": self.bytes_copied,
            "bytes_zeroed": self.bytes_zeroed, "latency_us": self.latency_us,
            "handshake_to_last_fault_ms": self.handshake_to_last_fault_ms, "ended": self.ended,
            "error": self.error, **self.extra}
        if self.install:
            out["prefetch"] = self.install
        return out

    @property
    def bytes_served(self) -> int:
        return self.bytes_copied + self.bytes_zeroed

    @property
    def install_ms(self) -> float | None:
        """Milliseconds the strategy spent installing pages ahead of faults (prefetch's ``install_ms``,
        eager's ``eager_ms``), None for strategies that install nothing ahead."""
        val = self.install.get("install_ms", self.install.get("eager_ms"))
        return float(val) if isinstance(val, int | float) and not isinstance(val, bool) else None


@dataclass
class ServerMetrics:
    """A server run: ``ok``, the first fatal ``error``, one ``SessionMetrics`` per hand-off, traces."""

    ok: bool = True
    error: str | None = None
    sessions: list[SessionMetrics] = field(default_factory=list)
    traces: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: object, path: str | Path = "<metrics>") -> ServerMetrics:
        """Validate a parsed metrics document; :raises FormatError: naming ``path`` and the key."""
        if not isinstance(doc, dict):
            raise FormatError(path, 0, "page server metrics must be a JSON object")
        sessions = _need(doc, "sessions", list, "", path, [])
        return cls(ok=_need(doc, "ok", bool, "", path, required=True),
                   error=_need(doc, "error", str, "", path),
                   sessions=[SessionMetrics.from_dict(s, path, i) for i, s in enumerate(sessions)],
                   traces=[str(t) for t in _need(doc, "traces", list, "", path, [])],
                   extra={k: v for k, v in doc.items() if k not in ("ok", "error", "sessions", "traces")})

    @classmethod
    def read(cls, path: str | Path) -> ServerMetrics:
        return cls.from_dict(read_json(path, limit=LIMIT, what="page server metrics"), path)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "sessions": [s.to_dict() for s in self.sessions],
                "traces": self.traces, **self.extra}

    def write(self, path: str | Path) -> Path:
        return atomic_write(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n",
                            "page server metrics")

    @property
    def first(self) -> SessionMetrics | None:
        """The first hand-off (a restore has one)."""
        return self.sessions[0] if self.sessions else None
