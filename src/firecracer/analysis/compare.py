"""Two recordings side by side: per-category differences and working-set similarity.

Jaccard indices compare the *restored* page sets, by group (all, owner class, NMT category):

* ``jaccard_gpa`` over guest-physical pages: meaningful when both restores come from the same snapshot
  (repetitions, or one snapshot restored with two strategies);
* ``jaccard_gva`` over (executable, guest-virtual page) of the process that owns each page: comparable
  across snapshots of the same workload (the seed boots with ``norandmaps``, so addresses are stable).

Public API (stable): ``compare(att_a, att_b) -> dict[str, Table]`` with ``categories`` and
``similarity``; ``jaccard(a, b)``; ``jaccard_matrix(atts, group="all")`` for repetitions of one
experiment (guest-physical restored sets, pairwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.join import CLASS_NAMES, Attribution, OwnerClass
from firecracer.analysis.memmap import is_process_recording
from firecracer.analysis.tables import Table, nmt_categories_table, owner_classes_table


def _distinct(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Sorted distinct values (sort-based: faster than numpy's hash unique for large uint64 arrays)."""
    s = np.sort(a)
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    keep[1:] = s[1:] != s[:-1]
    return s[keep]


def jaccard(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float | None:
    """|A ∩ B| / |A ∪ B| of two arrays taken as sets; ``None`` when both are empty."""
    ua, ub = _distinct(a), _distinct(b)
    union = np.union1d(ua, ub).size
    return round(np.intersect1d(ua, ub, assume_unique=True).size / union, 4) if union else None


def _restored_rows(att: Attribution) -> npt.NDArray[np.int64]:
    """Primary memmap row of each distinct restored page (-1 if unattributed)."""
    return att.trace_row[att.trace_first]


def _groups(att: Attribution) -> dict[str, npt.NDArray[np.bool_]]:
    """Group name → mask over the distinct restored pages (``trace_first`` rows)."""
    first = att.trace_first
    cls = att.trace_class[first]
    out: dict[str, npt.NDArray[np.bool_]] = {"all": np.ones(int(first.sum()), dtype=bool)}
    for c in OwnerClass:
        out[f"class:{CLASS_NAMES[c]}"] = cls == c
    if att.nmt_arrays is not None:
        reg = att.trace_nmt_region[first]
        rc = att.nmt_arrays.region_cat
        for ci, name in enumerate(att.nmt_arrays.categories):
            out[f"nmt:{name}"] = (reg >= 0) & (rc[np.maximum(reg, 0)] == ci) if rc.size else reg < -1
    return out


def _gva_keys(att: Attribution, exe_ids: dict[str, int]) -> npt.NDArray[np.uint64]:
    """(exe id, gva page) packed into one uint64 per distinct restored page (unattributed → unique)."""
    mm = att.recording.memmap
    rows = _restored_rows(att)
    keys = np.zeros(rows.size, dtype=np.uint64)
    ok = rows >= 0
    exe = mm.owner_exe
    owner_ids = np.array([exe_ids.setdefault(e, len(exe_ids)) for e in exe], dtype=np.uint64)
    if ok.any():
        own = mm.page_owner[rows[ok]]
        keys[ok] = (owner_ids[own] << np.uint64(48)) ^ (mm.page_vaddr[rows[ok]] >> np.uint64(12))
    # pages without an owner keep their gpa, tagged so they never collide with owned keys
    gp = att.trace.gpa[att.trace_first] if att.trace is not None else np.zeros(0, dtype=np.uint64)
    keys[~ok] = (np.uint64(0xFFFF) << np.uint64(48)) | (gp[~ok] >> np.uint64(12))
    return keys


def compare(a: Attribution, b: Attribution) -> dict[str, Table]:
    """Per-category deltas and Jaccard similarity of the restored sets (A = first, B = second)."""
    la, lb = a.recording.label, b.recording.label
    rows: list[list[Any]] = []
    for ta, tb, key in ((owner_classes_table(a), owner_classes_table(b), "class"),
                        (nmt_categories_table(a), nmt_categories_table(b), "category")):
        da = {r["class" if key == "class" else "category"]: r for r in ta.to_dicts()}
        db = {r["class" if key == "class" else "category"]: r for r in tb.to_dicts()}
        for name in list(dict.fromkeys([*da, *db])):
            ra, rb = da.get(name, {}), db.get(name, {})
            rka, rkb = int(ra.get("restored_kb", 0)), int(rb.get("restored_kb", 0))
            pre = "present_kb" if key == "class" else "rss_kb"
            pa, pb = int(ra.get(pre, 0)), int(rb.get(pre, 0))
            if not (rka or rkb or pa or pb):
                continue
            prefix = "class" if key == "class" else "nmt"
            rows.append([f"{prefix}:{name}", pa, pb, pb - pa, rka, rkb, rkb - rka])
    cats = Table("categories", f"Per-category differences (A = {la}, B = {lb})",
                 ["group", "rss_kb_a", "rss_kb_b", "rss_kb_delta", "restored_kb_a", "restored_kb_b",
                  "restored_kb_delta"], rows)

    ga, gb = _groups(a), _groups(b)
    gpa_a = a.trace.gpa[a.trace_first] if a.trace is not None else np.zeros(0, dtype=np.uint64)
    gpa_b = b.trace.gpa[b.trace_first] if b.trace is not None else np.zeros(0, dtype=np.uint64)
    ids: dict[str, int] = {}
    gva_a, gva_b = _gva_keys(a, ids), _gva_keys(b, ids)
    same_space = is_process_recording(a.recording.meta) == is_process_recording(b.recording.meta)
    sim: list[list[Any]] = []
    for name in dict.fromkeys([*ga, *gb]):
        ma = ga.get(name, np.zeros(gpa_a.size, dtype=bool))
        mb = gb.get(name, np.zeros(gpa_b.size, dtype=bool))
        if not (ma.any() or mb.any()):
            continue
        if same_space:
            inter: int | None = np.intersect1d(gpa_a[ma], gpa_b[mb]).size
            jg = jaccard(gpa_a[ma], gpa_b[mb])
        else:  # a VM restore's guest-physical pages and a process restore's image pages: no common key
            inter, jg = None, None
        sim.append([name, int(ma.sum()), int(mb.sum()), inter, jg, jaccard(gva_a[ma], gva_b[mb])])
    similarity = Table("similarity", "Working-set similarity of the restored pages",
                       ["group", "pages_a", "pages_b", "common_gpa", "jaccard_gpa", "jaccard_gva"], sim)
    return {"categories": cats, "similarity": similarity}


def jaccard_matrix(atts: list[Attribution], group: str = "all") -> list[list[float | None]]:
    """Pairwise Jaccard of the restored guest-physical page sets of ``group`` (``all``, ``class:…``,
    ``nmt:…``), e.g. across repetitions of one restore: how stable the working set is."""
    sets = []
    for att in atts:
        g = _groups(att).get(group)
        gpa = att.trace.gpa[att.trace_first] if att.trace is not None else np.zeros(0, dtype=np.uint64)
        sets.append(_distinct(gpa[g]) if g is not None else np.zeros(0, dtype=np.uint64))
    return [[jaccard(a, b) for b in sets] for a in sets]
