"""How predictable the first request's working set is across the restores of one snapshot.

One question, one answer: given several restore traces of the *same* snapshot, would a trace recorded on
one restore have told us what another touches, and in which order? The numbers are the ones the field
quotes (fcvm: pairwise Jaccard over clones, "next fault = next page", 2 MiB block coverage; REAP:
identical pages across invocations), so ours can be set beside theirs:

* pairwise Jaccard of the page sets, grouped by whether the two restores answered the same first request;
* pages in all restores / in any; fault-time CDF (when 50/90/99 % of the faults had happened);
* sequentiality (next fault = next page, in guest-physical and in memory-file order), run lengths of the
  page set in file order (what a file-order prefetch installs per ioctl), touched pages per 2 MiB block;
* prefetch precision/recall when restore *i*'s trace drives restore *j*:
  precision = |WS_i ∩ T_j| / |WS_i|, recall = |WS_i ∩ T_j| / |T_j|.

The page set of a restore is its *faulting* pages (``FLAG_FAULTING`` rows): only for ``ondemand`` (and
imported seed logs) is that everything the guest touched; fault-around and prefetch restores fault only
where their installs left a gap, so their sets are marked ``complete: false`` and say less.
Traces are read through :func:`firecracer.uffd.trace.load_trace` (the trace owner); page work is numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError, FormatError
from firecracer.formats import RecordingFacts
from firecracer.uffd.trace import FLAG_FAULTING, Trace, load_trace

#: Strategies whose faulting pages are every page the guest touched.
COMPLETE_STRATEGIES = ("ondemand", "seed", "")
#: Fault-time quantiles reported (percent of the faults).
QUANTILES = (50, 90, 99)
BLOCK = 2 << 20  # 2 MiB: a huge page, fcvm's replay step


class PredictabilityError(FirecracerError):
    """The inputs cannot be compared (too few, another snapshot, no faults); the message names the file."""


@dataclass(frozen=True)
class Restore:
    """One restore's trace, where it came from and which first request it answered (None: not recorded)."""

    label: str
    path: Path
    trace: Trace
    request: str | None = None

    @property
    def complete(self) -> bool:
        """Whether its faulting pages are all the pages the guest touched (no install hid a fault)."""
        return self.trace.strategy.split(":")[0] in COMPLETE_STRATEGIES

    def faulting(self) -> npt.NDArray[np.bool_]:
        mask: npt.NDArray[np.bool_] = (self.trace.flags & FLAG_FAULTING) != 0
        return mask


def request_of(facts: RecordingFacts | None, trace: Trace) -> str | None:
    """The first request a restore answered: ``recording.json``'s ``first_request`` (its ``text``, else
    its ``path``: a GET), else the trace's ``meta.request``; None when neither says."""
    fr = facts.first_request if facts is not None else None
    for cand in ((fr or {}).get("text"), (fr or {}).get("path"), trace.meta.get("request")):
        if isinstance(cand, str) and cand:
            return cand
    return None


def load_restore(path: str | Path) -> Restore:
    """A recording directory (``trace.npz`` + ``recording.json``) or a ``trace.npz`` file.

    Raises ``FormatError`` naming the file for a damaged trace, ``PredictabilityError`` for a directory
    without a trace.
    """
    p = Path(path)
    facts: RecordingFacts | None = None
    if p.is_dir():
        tp = p / "trace.npz"
        if not tp.is_file():
            raise PredictabilityError(f"{p}: no trace.npz in this recording (a File-backend restore records "
                                      "no faults)")
        rj = p / "recording.json"
        if rj.is_file():
            facts = RecordingFacts.read(rj)
        label = p.name
    else:
        tp = p
        label = p.parent.name if p.name == "trace.npz" else p.name.removesuffix(".npz")
    trace = load_trace(tp)
    return Restore(label, tp, trace, request_of(facts, trace))


def _snapshot_key(r: Restore) -> tuple[Any, ...]:
    """What must agree for two traces to be restores of one snapshot: snapshot id (when both have one),
    memory size and page size."""
    mem = r.trace.meta.get("mem")
    size = mem.get("size") if isinstance(mem, dict) else None
    if not isinstance(size, int):
        size = sum(int(x.get("size", 0)) for x in r.trace.regions) or None
    return (mem.get("id") if isinstance(mem, dict) else None, size, r.trace.page_size)


def check_same_snapshot(restores: Sequence[Restore]) -> None:
    """Raise ``PredictabilityError`` naming the first file that is not a restore of the first one's
    snapshot (another snapshot id, memory size or page size) or that faulted no page at all."""
    if len(restores) < 2:
        named = f" ({restores[0].path})" if restores else ""
        raise PredictabilityError(f"predictability compares restores: give at least two traces of one "
                                  f"snapshot, got {len(restores)}{named}")
    ref = restores[0]
    rid, rsize, rps = _snapshot_key(ref)
    for r in restores:
        if not r.faulting().any():
            raise PredictabilityError(f"{r.path}: the trace has no faulting page (strategy "
                                      f"{r.trace.strategy or '?'}): nothing to compare")
        oid, osize, ops = _snapshot_key(r)
        if rid and oid and rid != oid:
            raise PredictabilityError(f"{r.path}: recorded on snapshot {oid}, but {ref.path} on {rid}: "
                                      "predictability compares restores of one snapshot")
        if rsize and osize and rsize != osize:
            raise PredictabilityError(f"{r.path}: a {osize:,}-byte guest memory, but {ref.path} has "
                                      f"{rsize:,} bytes: not restores of one snapshot")
        if ops != rps:
            raise PredictabilityError(f"{r.path}: {ops}-byte pages, but {ref.path} has {rps}-byte pages")


# ---------------------------------------------------------------------------------------------------
# per restore

def page_set(r: Restore) -> npt.NDArray[np.uint64]:
    """Distinct faulting pages (memory-file page numbers), sorted."""
    t = r.trace
    shift = np.uint64(t.page_size.bit_length() - 1)
    out: npt.NDArray[np.uint64] = np.unique(t.file_off[r.faulting()] >> shift)
    return out


def jaccard(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    """|A ∩ B| / |A ∪ B| of two sorted distinct page arrays (1.0 for two empty sets)."""
    union = len(np.union1d(a, b))
    return 1.0 if union == 0 else len(np.intersect1d(a, b, assume_unique=True)) / union


def log2_histogram(values: npt.NDArray[Any]) -> dict[str, int]:
    """Counts in power-of-two buckets ``1``, ``2-3``, ``4-7`` …, keyed by the bucket's range (only
    non-empty buckets up to the largest)."""
    v = np.asarray(values, dtype=np.int64)
    v = v[v > 0]
    if not v.size:
        return {}
    k = np.floor(np.log2(v)).astype(np.int64)
    counts = np.bincount(k)
    return {(f"{1 << i}" if i == 0 else f"{1 << i}-{(2 << i) - 1}"): int(c) for i, c in enumerate(counts)}


def _runs(pages: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Lengths of the maximal runs of consecutive numbers in sorted distinct ``pages``."""
    if not pages.size:
        return np.zeros(0, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(pages.astype(np.int64)) != 1)
    edges = np.concatenate([[-1], breaks, [pages.size - 1]])
    lengths: npt.NDArray[np.int64] = np.diff(edges).astype(np.int64)
    return lengths


def _dist(x: npt.NDArray[Any]) -> dict[str, float]:
    if not x.size:
        return {}
    return {"mean": round(float(x.mean()), 2), "p50": round(float(np.percentile(x, 50)), 2),
            "p90": round(float(np.percentile(x, 90)), 2), "max": float(x.max())}


def restore_facts(r: Restore) -> dict[str, Any]:
    """What one restore's faults look like: counts, fault-time quantiles, sequentiality, runs, blocks."""
    t = r.trace
    shift = np.uint64(t.page_size.bit_length() - 1)
    f = r.faulting()
    # first fault of each page, in arrival order (a page re-faulted after a REMOVE counts once)
    offs = t.file_off[f]
    _, first = np.unique(offs, return_index=True)
    order = np.sort(first)
    file_pg = (offs[order] >> shift).astype(np.int64)
    gpa_pg = (t.gpa[f][order] >> shift).astype(np.int64)
    tns = t.t_ns[f][order].astype(np.int64)
    n = file_pg.size
    pages = np.unique(file_pg).astype(np.uint64)
    timed = bool(t.meta.get("timed", True)) and bool(tns.size and tns[-1] > 0)
    quant = {f"p{q}_ms": round(float(np.percentile(tns, q, method="inverted_cdf")) / 1e6, 3)
             for q in QUANTILES} if timed else {}
    steps = max(n - 1, 0)
    seq_gpa = int((np.diff(gpa_pg) == 1).sum()) if steps else 0
    seq_file = int((np.diff(file_pg) == 1).sum()) if steps else 0
    per_block = 1 << max(0, 21 - int(shift))
    # distinct guest-physical pages per touched 2 MiB block (a 2 MiB page is a block of its own)
    blk_counts = np.unique(np.unique(gpa_pg) >> max(0, 21 - int(shift)), return_counts=True)[1]
    runs = _runs(pages)
    return {
        "label": r.label, "path": str(r.path), "request": r.request, "strategy": t.strategy,
        "complete": r.complete, "faults": int(f.sum()), "pages": int(pages.size),
        "rows": len(t), "timed": timed, "fault_time": quant,
        "sequential": {"next_page_gpa": round(seq_gpa / steps, 4) if steps else None,
                       "next_page_file": round(seq_file / steps, 4) if steps else None, "steps": steps},
        "runs": {"count": int(runs.size), **_dist(runs), "histogram": log2_histogram(runs)},
        "blocks_2m": {"touched": int(blk_counts.size), "pages_per_block": per_block, **_dist(blk_counts),
                      "histogram": log2_histogram(blk_counts)},
        # the page server's per-fault classes (uffd.faultclass), when the trace was recorded with them
        "fault_taxonomy": t.meta.get("fault_taxonomy"),
    }


def fault_cdf(r: Restore, points: int = 64) -> list[tuple[float, float]]:
    """``(ms since the hand-off, fraction of faults so far)`` at ``points`` evenly spaced fractions (for
    a plot); empty for an untimed trace."""
    t = r.trace
    tns = np.sort(t.t_ns[r.faulting()].astype(np.int64))
    if not tns.size or tns[-1] == 0:
        return []
    fr = np.linspace(0, 1, points + 1)[1:]
    idx = np.minimum((fr * tns.size).astype(np.int64), tns.size - 1)
    return [(round(float(tns[i]) / 1e6, 3), round(float(q), 4)) for i, q in zip(idx, fr, strict=True)]


# ---------------------------------------------------------------------------------------------------
# across restores

def _summary(vals: list[float]) -> dict[str, Any]:
    if not vals:
        return {"pairs": 0}
    a = np.array(vals)
    return {"pairs": len(vals), "min": round(float(a.min()), 4), "median": round(float(np.median(a)), 4),
            "mean": round(float(a.mean()), 4), "max": round(float(a.max()), 4)}


def predictability(restores: Sequence[Restore]) -> dict[str, Any]:
    """The report (JSON-able) for restores of one snapshot; see the module docstring.

    Raises ``PredictabilityError`` (naming the file) for fewer than two restores, restores of different
    snapshots, or a restore without faulting pages.
    """
    check_same_snapshot(restores)
    sets = [page_set(r) for r in restores]
    n = len(restores)
    labels = [r.label for r in restores]
    jac = [[1.0] * n for _ in range(n)]
    same: list[float] = []
    diff: list[float] = []
    known = all(r.request is not None for r in restores)
    for i, j in itertools.combinations(range(n), 2):
        v = round(jaccard(sets[i], sets[j]), 4)
        jac[i][j] = jac[j][i] = v
        (same if restores[i].request == restores[j].request else diff).append(v)
    prec = [[1.0] * n for _ in range(n)]
    rec = [[1.0] * n for _ in range(n)]
    p_same: list[tuple[float, float]] = []
    p_diff: list[tuple[float, float]] = []
    for i, j in itertools.permutations(range(n), 2):
        hit = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
        prec[i][j] = round(hit / len(sets[i]), 4)
        rec[i][j] = round(hit / len(sets[j]), 4)
        (p_same if restores[i].request == restores[j].request else p_diff).append((prec[i][j], rec[i][j]))
    inter = sets[0]
    union = sets[0]
    for s in sets[1:]:
        inter = np.intersect1d(inter, s, assume_unique=True)
        union = np.union1d(union, s)
    requests = sorted({r.request or "" for r in restores})
    notes: list[str] = []
    if not known:
        notes.append("some restores do not say which first request they answered (no first_request in "
                     "recording.json, no meta.request in the trace): they are grouped as one request, ''")
    partial = [r.label for r in restores if not r.complete]
    if partial:
        notes.append(f"{', '.join(partial)}: not ondemand restores; their faults are only what their "
                     "installs left, not their whole working set")
    return {
        "format": "firecracer-predictability", "version": 1,
        "restores": [restore_facts(r) for r in restores],
        "snapshot": {"id": _snapshot_key(restores[0])[0], "mem_bytes": _snapshot_key(restores[0])[1],
                     "page_size": restores[0].trace.page_size},
        "requests": requests, "requests_known": known,
        "labels": labels,
        "jaccard": {"matrix": jac, "same_request": _summary(same), "different_request": _summary(diff),
                    "all": _summary(same + diff)},
        "pages": {"in_all": int(inter.size), "in_any": int(union.size),
                  "in_all_of_any": round(inter.size / union.size, 4) if union.size else None},
        # row i drives column j: precision[i][j] = |WS_i ∩ T_j| / |WS_i|, recall[i][j] = |WS_i ∩ T_j| / |T_j|
        "prefetch": {"precision": prec, "recall": rec,
                     "same_request": {"precision": _summary([p for p, _ in p_same]),
                                      "recall": _summary([q for _, q in p_same])},
                     "different_request": {"precision": _summary([p for p, _ in p_diff]),
                                           "recall": _summary([q for _, q in p_diff])}},
        "notes": notes,
    }


def predictability_of(paths: Sequence[str | Path]) -> tuple[dict[str, Any], list[Restore]]:
    """Load ``paths`` (recordings or traces) and report on them; errors name the file (``FormatError``
    for a damaged trace, ``PredictabilityError`` otherwise)."""
    restores = [load_restore(p) for p in paths]
    return predictability(restores), restores


__all__ = ["FormatError", "PredictabilityError", "Restore", "fault_cdf", "jaccard", "load_restore",
           "log2_histogram", "page_set", "predictability", "predictability_of", "request_of",
           "restore_facts"]
