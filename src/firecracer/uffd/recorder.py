"""What a session installed, as runs (not pages), and the trace and metrics made from them at the end.

The hot paths append one tuple per ioctl (or one native record array per batch of single faults, or
one (N, 8) array per bulk install); rows are expanded to per-page trace columns with numpy only when the
trace is written.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from firecracer.errors import FirecracerError
from firecracer.fcversion import firecracker_version
from firecracer.uffd.faultclass import taxonomy
from firecracer.uffd.trace import FLAG_ZERO, Action, Trace, gpa_of, make_trace

if TYPE_CHECKING:
    from firecracer.uffd.session import Session


class Recorder:
    """Installed runs (not pages), expanded to trace rows with numpy at the end."""

    __slots__ = ("blocks", "chunks", "runs")

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, int, int, int, int, int, int]] = []
        self.chunks: list[np.ndarray[Any, Any]] = []  # native fast-path records (native.REC_DTYPE)
        self.blocks: list[np.ndarray[Any, np.dtype[np.int64]]] = []  # bulk installs, already (N, 8)

    def as_array(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """All runs as an (N, 8) int64 array (t_ns, hva, off, n, flags, action, fault, svc)."""
        parts = [np.array(self.runs, dtype=np.int64).reshape(-1, 8)]
        for c in self.chunks:
            a = np.zeros((len(c), 8), dtype=np.int64)
            a[:, 0], a[:, 1], a[:, 2] = c["t_ns"], c["hva"], c["off"]
            a[:, 3] = 1
            a[:, 4], a[:, 5], a[:, 6], a[:, 7] = c["flags"], Action.LOAD, c["fault"], c["svc"]
            parts.append(a)
        parts.extend(self.blocks)
        return np.concatenate(parts)

    def add(self, t_ns: int, hva: int, off: int, n: int, flags: int, action: int, fault: int,
            svc: int) -> None:
        self.runs.append((t_ns, hva, off, n, flags, action, fault, svc))


def expand_runs(arr: np.ndarray[Any, np.dtype[np.int64]], ps: int) -> dict[str, Any]:
    """Run records (``Recorder.as_array``; user addresses and offsets fit in 63 bits) → trace columns."""
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    n = arr[:, 3]
    rep = np.repeat(np.arange(arr.shape[0]), n)
    within = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)) * ps
    col = arr[rep]
    return {
        "t_ns": col[:, 0].astype(np.uint64), "hva": (col[:, 1] + within).astype(np.uint64),
        "file_off": (col[:, 2] + within).astype(np.uint64),
        "flags": col[:, 4].astype(np.uint8), "action": col[:, 5].astype(np.uint8),
        "fault": col[:, 6].astype(np.int32),
        "service_ns": np.minimum(col[:, 7], 0xFFFFFFFF).astype(np.uint32),
    }


def peer_version(peer_exe: str) -> str | None:
    """The Firecracker version of a peer's executable (``--version``), None if it is not Firecracker."""
    if not peer_exe or "firecracker" not in peer_exe.rsplit("/", 1)[-1]:
        return None
    try:
        return str(firecracker_version(peer_exe.removesuffix(" (deleted)")))
    except FirecracerError:
        return None


def session_trace(s: Session, *, vmm: str = "firecracker", version: str | None = None) -> Trace:
    """Session ``s``'s trace (rows sorted by time); Firecracker's version is asked of the peer's binary."""
    cols = expand_runs(np.concatenate([s.rec.as_array(), s.bg_rec.as_array()]), s.ps)
    cols["gpa"] = gpa_of(cols["file_off"], s.mem.size)
    meta: dict[str, Any] = {
        "page_size": s.ps, "strategy": str(s.strategy),
        "regions": [r.as_dict() for r in s.regions], "vmm": vmm, "mem_file": str(s.mem.path),
        "faults": s.nfaults, "events": dict(s.events), "removes": s.removes,
        "handshake": s.hs.generation, "peer_pid": s.hs.peer_pid, "mem": s.mem.identity,
        "fault_taxonomy": taxonomy(s.kinds, s.latency_ns, s.peer_gone_by_class, native=s.native),
    }
    version = version or peer_version(s.peer_exe)
    if version:
        meta["firecracker_version"] = version
    if s.peer_exe:
        meta["peer_exe"] = s.peer_exe
    return make_trace(cols, meta)


def session_metrics(s: Session) -> dict[str, Any]:
    """Counts, bytes and latency percentiles of session ``s`` (one session of the metrics JSON)."""
    runs = np.concatenate([s.rec.as_array(), s.bg_rec.as_array()])
    counts = np.bincount(runs[:, 5], weights=runs[:, 3], minlength=len(Action)) if len(runs) else \
        np.zeros(len(Action))
    pages = Counter({a.name.lower(): int(counts[a.value]) for a in Action})
    zero_pages = int(runs[(runs[:, 4] & FLAG_ZERO) != 0, 3].sum())
    total = sum(pages.values())
    lat = np.array(s.latency_ns, dtype=np.float64) / 1e3
    pct = ({f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)} |
           {"mean": round(float(lat.mean()), 1), "max": round(float(lat.max()), 1)}) if lat.size else {}
    inst = s.installer
    out: dict[str, Any] = {
        "session": s.index, "strategy": str(s.strategy), "peer_pid": s.hs.peer_pid,
        "handshake": s.hs.generation, "page_size": s.ps, "regions": len(s.regions),
        "mem_bytes": s.mem.size, "faults": s.nfaults, "stale_faults": s.stale,
        "events": dict(s.events),
        "pages": {a.name.lower(): pages.get(a.name.lower(), 0) for a in Action},
        "pages_total": total, "pages_zero": zero_pages,
        "bytes_copied": (total - zero_pages) * s.ps, "bytes_zeroed": zero_pages * s.ps,
        "ioctls": inst.ioctls, "eexist": inst.eexist, "eagain": inst.eagain,
        "latency_us": pct, "handshake_to_last_fault_ms": round(s.last_fault_ns / 1e6, 3),
        "ended": s.ended, "error": s.error, "native_fast_path": s.native,
        "fault_taxonomy": taxonomy(s.kinds, s.latency_ns, s.peer_gone_by_class, native=s.native),
    }
    extra = s.strategy.metrics(s)
    if extra is not None:
        out["prefetch"] = extra
    return out
