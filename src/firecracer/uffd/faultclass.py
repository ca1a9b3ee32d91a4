"""Per-fault taxonomy of a session (E2B-style): what kind of page each fault asked for, how it ended, and how
long it took, per kind.

Why: a fault count alone hides where a restore's time goes. A data page costs a copy from the memory file,
a hole only a zero fill, an already-resident page (a racing vCPU or a prefetch won) nothing but a wake-up,
and a removed page (balloon ``MADV_DONTNEED``) a zero fill again; EEXIST and EAGAIN are the races. The
hot loops pay one ``bytearray.append`` per fault (or one ``extend`` per batch of the C fast path) for a
``kind`` byte beside the latency they already keep; everything else is numpy at the end.

Page class (at the moment the event is read, from the page's state and the memory file):
``data`` (missing, has data in the memory file), ``zero`` (missing, a hole), ``resident`` (already
installed: another vCPU's fault, fault-around or a prefetch got there first), ``removed`` (after a
REMOVE event). Outcome: ``installed`` (first try), ``eexist`` (the install found the faulting page already
there: a racing installer won), ``eagain`` (installed after at least one EAGAIN retry), ``woken`` (resident:
nothing to install, the waiter is woken), ``peer_gone`` (the peer's memory vanished during the install).

Limits: the C fast path (``uffd.native``) serves only missing data pages of region 0 at the first try, so
its faults are ``data``/``installed`` by construction; a fast-path ioctl that fails (EEXIST, EAGAIN) hands
the event to the Python path, which classifies its retry (a first EAGAIN there is not seen, the retry is).
Latency is the one the session already measures: event read → install (and wake) done; a wakeup that
read several faults gives each the batch's latency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASSES = ("data", "zero", "resident", "removed")
OUTCOMES = ("installed", "eexist", "eagain", "woken")
DATA, ZERO, RESIDENT, REMOVED = range(4)
INSTALLED, EEXIST, EAGAIN, WOKEN = range(4)
#: ``kind`` byte of a fault: class × 4 + outcome (``DATA_INSTALLED`` = 0, what the fast paths append).
DATA_INSTALLED = 0
RESIDENT_WOKEN = RESIDENT * 4 + WOKEN
#: Latency buckets: 0 = below 1 µs, k ≥ 1 = [2^(k-1), 2^k) µs; the last one holds everything above.
NBUCKETS = 28


def bucket_label(k: int) -> str:
    """``<1``, ``1``, ``2-3``, ``4-7`` … µs; the last bucket is open-ended."""
    if k == 0:
        return "<1"
    lo = 1 << (k - 1)
    if k == NBUCKETS - 1:
        return f">={lo}"
    return str(lo) if k == 1 else f"{lo}-{(lo << 1) - 1}"


def log2_buckets(latency_ns: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Bucket index of each latency (ns) in log2 µs buckets (see :data:`NBUCKETS`)."""
    us = np.asarray(latency_ns, dtype=np.int64) // 1000
    k = np.zeros(us.shape, dtype=np.int64)
    pos = us > 0
    k[pos] = np.floor(np.log2(us[pos])).astype(np.int64) + 1
    out: np.ndarray[Any, np.dtype[np.int64]] = np.minimum(k, NBUCKETS - 1)
    return out


def taxonomy(kinds: bytearray | bytes, latency_ns: list[int], peer_gone: list[int], *,
             native: bool) -> dict[str, Any]:
    """The metrics block: per class, faults per outcome and a log2-µs latency histogram.

    ``kinds`` and ``latency_ns`` are per fault in the same order (a session that ended in an error may
    have classified a few faults whose latency was never taken: those count, but are not in a histogram);
    ``peer_gone``: faults per class whose install found the peer gone.
    """
    k = np.frombuffer(bytes(kinds), dtype=np.uint8).astype(np.int64)
    lat = np.asarray(latency_ns[:len(k)], dtype=np.int64)
    counts = np.bincount(k, minlength=16)[:16].reshape(4, 4)
    hist = np.zeros((4, NBUCKETS), dtype=np.int64)
    if lat.size:
        cls = k[:lat.size] >> 2
        np.add.at(hist, (cls, log2_buckets(lat)), 1)
    classes: dict[str, Any] = {}
    for c, name in enumerate(CLASSES):
        total = int(counts[c].sum()) + int(peer_gone[c])
        if not total:
            continue
        row: dict[str, Any] = {o: int(counts[c, i]) for i, o in enumerate(OUTCOMES) if counts[c, i]}
        if peer_gone[c]:
            row["peer_gone"] = int(peer_gone[c])
        row["total"] = total
        nz = np.flatnonzero(hist[c])
        row["latency_us_log2"] = {bucket_label(int(b)): int(hist[c, b]) for b in nz}
        classes[name] = row
    return {"classes": classes, "faults": len(k) + int(sum(peer_gone)),
            "fast_path_classified_by_construction": native}
