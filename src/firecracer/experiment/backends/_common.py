"""Helpers shared by the Firecracker backends (probe, jvm): cold page cache, logs, page-server results."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firecracer.errors import FirecracerError
from firecracer.experiment.backend import RunFailed
from firecracer.experiment.spec import Strategy
from firecracer.fcversion import Version
from firecracer.uffd.metrics import ServerMetrics
from firecracer.uffd.trace import FLAG_FAULTING, load_trace
from firecracer.uffd.workingset import ws_path_for
from firecracer.vmm.binary import uffd_restore_problem
from firecracer.vmm.snapshot import Snapshot, compress_snapshot


def check_uffd_strategies(binary: Path, version: Version, strategies: Sequence[Strategy]) -> None:
    """Fail up front (one line) when the study has uffd strategies this Firecracker cannot run here."""
    problem = uffd_restore_problem(version)
    uffd = [s.name for s in strategies if s.uses_uffd]
    if uffd and problem:
        raise FirecracerError(f"{binary}: {problem}; this study's strategies {', '.join(uffd)} need the Uffd "
                              "backend (or keep only 'file')")


def vm_name() -> str:
    """A name for a run's VM: its run directory lives in the state directory while it runs (so ``vm ls``
    shows it and a leftover of a killed study is found and pruned there), then only its logs are kept."""
    return f"x-{uuid.uuid4().hex[:12]}"


def drop_cache(path: Path) -> None:
    """Evict the memory file from the page cache, so every restore starts cold (as in production)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def keep_logs(src: Path, dest: Path) -> None:
    """Copy the VM's logs (serial, Firecracker, page server, metrics) out of the short socket dir."""
    if not src.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.is_socket() and f.suffix in (".log", ".json", ".err"):
            with contextlib.suppress(OSError):
                shutil.copyfile(f, dest / f.name)


def log_note(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" (page server: {lines[-1].strip()[:300]})" if lines else ""


def server_metrics(metrics_out: Path, trace_out: Path) -> dict[str, Any]:
    """Faults, pages, bytes, service and install time from the page server's metrics and trace."""
    out: dict[str, Any] = {}
    sess = ServerMetrics.read(metrics_out).first if metrics_out.exists() else None
    if sess is not None:
        out.update(faults=sess.faults, pages=sess.pages_total, bytes=sess.bytes_served,
                   latency_us=sess.latency_us or None, fault_taxonomy=sess.extra.get("fault_taxonomy"),
                   handshake_to_last_fault_ms=sess.handshake_to_last_fault_ms,
                   prefetched=sess.install.get("installed"), misses=sess.install.get("misses"),
                   install=sess.install_ms)
    if trace_out.exists():
        t = load_trace(trace_out)
        faulting = (t.flags & FLAG_FAULTING) != 0
        out["service_ms"] = float(t.service_ns[faulting].astype(np.float64).sum()) / 1e6
        out.setdefault("faults", int(np.count_nonzero(faulting)))
        out.setdefault("pages", len(t))
    return {k: v for k, v in out.items() if v is not None}


def forget_prefetch_trace(workdir: Path) -> None:
    """Drop the variant's recorded prefetch trace (and working set) when its snapshot is made anew: they
    belong to the old snapshot, and prefetch would refuse them (another snapshot id) for every run."""
    final = workdir / "prefetch-trace.npz"
    final.unlink(missing_ok=True)
    ws_path_for(final).unlink(missing_ok=True)


def ensure_prefetch_trace(workdir: Path, have: Path | None, record: Callable[[Path], object]) -> Path:
    """REAP's record phase, once per variant: an ondemand restore (``record(dir)``) whose trace, with the
    working-set file the page server wrote beside it (:func:`page_server_argv` with ``working_set``), is
    what every prefetch run installs."""
    if have is not None:
        return have
    rec = workdir / "prefetch-recording"
    shutil.rmtree(rec, ignore_errors=True)
    rec.mkdir()
    record(rec)
    final = workdir / "prefetch-trace.npz"
    os.replace(rec / "trace.npz", final)
    if ws_path_for(rec / "trace.npz").exists():
        os.replace(ws_path_for(rec / "trace.npz"), ws_path_for(final))
    return final


def compress_if_asked(strategies: Sequence[Strategy], snapdir: Path) -> dict[str, Any]:
    """A study with ``-zstd`` strategies serves them from the variant's compressed snapshot: compress it
    once (``vm compress --keep-raw``: the other strategies still read the raw memory file); its facts
    (ratio, sizes, times) for the variant's record, or nothing when no strategy asks."""
    if not any(s.compressed for s in strategies):
        return {}
    try:
        snap = compress_snapshot(Snapshot.load(snapdir), keep_raw=True)
    except FirecracerError as exc:
        raise RunFailed("compress", str(exc)) from None
    return {"compressed": snap.compressed}
