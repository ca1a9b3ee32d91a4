"""Reports over an ``Attribution``: per process, mapping, NMT category and region; sharing, fragmentation,
huge pages, restore order; and the UffdVisualizer-compatible ``totals``.

Units: sizes in kB (pages × page size / 1024), percentages 0–100 rounded to 0.1, ``first_touch`` is the
index of the trace row that first restored any page of the group (``None`` if none), ``rank`` orders
groups by it (1 = touched first). ``rss`` is present pages at collection time; ``restored`` is the part
of them the restore trace served (the seed's "uffd" column). ``pss`` divides each page by the number of
collected processes mapping it.

Public API (stable): ``Table`` (``name``, ``title``, ``columns``, ``rows``; ``to_dicts()``),
``tables(att) -> dict[str, Table]`` with keys ``processes``, ``mappings``, ``nmt_categories``,
``nmt_regions``, ``owner_classes``, ``fragmentation``, ``restore_order``, ``restore_timeline``;
``totals(att) -> dict``
(``physical_pages``, ``processes``, ``uffd_events``, ``pages_loaded``, ``pages_zeroed``, ``nmt_regions``
computed with the original UffdVisualizer's rules, plus our own counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.join import CLASS_NAMES, Attribution, OwnerClass
from firecracer.analysis.memmap import KPF_HUGE, KPF_THP, is_process_recording

FLAG_FAULTING = 2        # trace.flags bit 1: the faulting page itself (docs/formats.md)

I64 = npt.NDArray[np.int64]
BIG = np.iinfo(np.int64).max
HUGE_PAGES = 512          # 4 KiB pages per 2 MiB block


@dataclass
class Table:
    """A named table of JSON scalars, rendered by the CLI (rich, JSON, CSV)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Rows as column → value dicts (the ``--json`` form)."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def _kb(pages: Any, ps: int) -> Any:
    return (np.asarray(pages, dtype=np.int64) * ps) // 1024


def _pct(a: float, b: float) -> float | None:
    return round(100.0 * float(a) / float(b), 1) if b else None


def _ranks(first: I64) -> list[int | None]:
    """Dense 1-based rank of each group's first touch; ``None`` for untouched groups."""
    touched = first < BIG
    order = np.argsort(np.where(touched, first, BIG), kind="stable")
    rank = np.zeros(len(first), dtype=np.int64)
    rank[order] = np.arange(1, len(first) + 1)
    return [int(r) if t else None for r, t in zip(rank.tolist(), touched.tolist(), strict=True)]


@dataclass
class _Group:
    rss: I64
    restored: I64
    first: I64
    pss: npt.NDArray[np.float64]
    shared: I64


@dataclass
class _RowFacts:
    restored: npt.NDArray[np.bool_]
    pss: npt.NDArray[np.float64]
    shared: npt.NDArray[np.bool_]


def _row_facts(att: Attribution) -> _RowFacts:
    """Per memmap row: restored?, PSS weight (1 / process mappers), shared?; computed once per att."""
    cached = getattr(att, "_row_facts", None)
    if isinstance(cached, _RowFacts):
        return cached
    nproc = att.phys_nproc[att.row_phys]
    pss = np.where(att.row_class == OwnerClass.PROCESS, 1.0 / np.maximum(nproc, 1), 1.0)
    facts = _RowFacts(att.row_first_touch >= 0, pss, att.phys_nrows[att.row_phys] > 1)
    object.__setattr__(att, "_row_facts", facts)
    return facts


def _group(att: Attribution, grp: I64, n: int) -> _Group:
    """Per-group sums over memmap rows (``grp`` = group index per row, -1 = in no group)."""
    f = _row_facts(att)
    ok = grp >= 0
    g = grp[ok]
    rss = np.bincount(g, minlength=n).astype(np.int64)
    rest = f.restored[ok]
    restored = np.bincount(g[rest], minlength=n).astype(np.int64)
    first = np.full(n, BIG, dtype=np.int64)
    np.minimum.at(first, g[rest], att.row_first_touch[ok][rest])
    pss = np.bincount(g, weights=f.pss[ok], minlength=n).astype(np.float64)
    shared = np.bincount(g[f.shared[ok]], minlength=n).astype(np.int64)
    return _Group(rss, restored, first, pss, shared)


def _ft(v: int) -> int | None:
    return None if v >= BIG else int(v)


def processes_table(att: Attribution) -> Table:
    """One row per owner section (process, kernel, page cache, free)."""
    mm, ps = att.recording.memmap, att.page_size
    n = len(mm.owner_pid)
    g = _group(att, mm.page_owner.astype(np.int64), n)
    nmaps = np.bincount(mm.map_owner, minlength=n)
    virt = np.bincount(mm.map_owner, weights=(mm.map_end - mm.map_start).astype(np.float64), minlength=n)
    ranks = _ranks(g.first)
    exe = mm.owner_exe
    rows = [[int(mm.owner_pid[i]), exe[i], int(nmaps[i]), int(virt[i]) // 1024, int(_kb(g.rss[i], ps)),
             int(g.pss[i] * ps / 1024), int(_kb(g.shared[i], ps)), int(_kb(g.restored[i], ps)),
             _pct(g.restored[i], g.rss[i]), _ft(int(g.first[i])), ranks[i]] for i in range(n)]
    return Table("processes", "Owners (processes, kernel, page cache, free)",
                 ["pid", "exe", "mappings", "virtual_kb", "rss_kb", "pss_kb", "shared_kb", "restored_kb",
                  "restored_pct", "first_touch", "rank"], rows)


def mappings_table(att: Attribution) -> Table:
    """One row per mapping (``v`` line / maps entry / kernel segment)."""
    mm, ps = att.recording.memmap, att.page_size
    n = len(mm.map_owner)
    g = _group(att, mm.page_map.astype(np.int64), n)
    ranks = _ranks(g.first)
    virt = ((mm.map_end - mm.map_start) // np.uint64(1024)).astype(np.int64)
    pct = np.round(100.0 * g.restored / np.maximum(g.rss, 1), 1)
    cols = [mm.owner_pid[mm.map_owner].tolist(), [f"{v:#x}" for v in mm.map_start.tolist()],
            [f"{v:#x}" for v in mm.map_end.tolist()], mm.map_name, virt.tolist(), _kb(g.rss, ps).tolist(),
            _kb(g.restored, ps).tolist(), [p if r else None for p, r in zip(pct.tolist(), g.rss.tolist(),
                                                                           strict=True)],
            [None if f >= BIG else f for f in g.first.tolist()], ranks]
    rows = [list(r) for r in zip(*cols, strict=True)] if n else []
    return Table("mappings", "Mappings", ["pid", "start", "end", "name", "virtual_kb", "rss_kb",
                                          "restored_kb", "restored_pct", "first_touch", "rank"], rows)


def nmt_regions_table(att: Attribution) -> Table:
    """One row per NMT reserved region of the JVM (the seed's virtual / rss / uffd columns)."""
    ps, regs = att.page_size, att.nmt_regions
    n = len(regs)
    g = _group(att, att.row_nmt_region.astype(np.int64), n)
    ranks = _ranks(g.first)
    rows = [[f"{r.start:#x}", f"{r.end:#x}", r.category, r.reserved_bytes // 1024, r.committed_bytes // 1024,
             int(_kb(g.rss[i], ps)), int(_kb(g.restored[i], ps)), _pct(g.restored[i], g.rss[i]),
             _ft(int(g.first[i])), ranks[i]] for i, r in enumerate(regs)]
    return Table("nmt_regions", "NMT reserved regions of the JVM",
                 ["start", "end", "category", "virtual_kb", "committed_kb", "rss_kb", "restored_kb",
                  "restored_pct", "first_touch", "rank"], rows)


def nmt_categories_table(att: Attribution) -> Table:
    """One row per NMT category that has virtual memory (heap, metaspace, class space, code, …)."""
    ps = att.page_size
    cats = att.nmt_categories
    if att.nmt_arrays is None or not cats:
        return Table("nmt_categories", "NMT categories", [], [])
    rc = att.nmt_arrays.region_cat.astype(np.int64)
    row_cat = np.where(att.row_nmt_region >= 0, rc[np.maximum(att.row_nmt_region, 0)] if rc.size else -1, -1)
    g = _group(att, row_cat.astype(np.int64), len(cats))
    ranks = _ranks(g.first)
    nreg = np.bincount(rc, minlength=len(cats))
    reserved = np.zeros(len(cats), dtype=np.int64)
    committed = np.zeros(len(cats), dtype=np.int64)
    for r in att.nmt_regions:
        ci = cats.index(r.category)
        reserved[ci] += r.reserved_bytes
        committed[ci] += r.committed_bytes
    rows = [[c, int(nreg[i]), int(reserved[i]) // 1024, int(committed[i]) // 1024, int(_kb(g.rss[i], ps)),
             int(_kb(g.restored[i], ps)), _pct(g.restored[i], g.rss[i]),
             _pct(g.restored[i] * ps, committed[i]), _ft(int(g.first[i])), ranks[i]]
            for i, c in enumerate(cats) if nreg[i]]
    return Table("nmt_categories", "NMT categories of the JVM (virtual memory)",
                 ["category", "regions", "reserved_kb", "committed_kb", "rss_kb", "restored_kb",
                  "restored_pct_of_rss", "restored_pct_of_committed", "first_touch", "rank"], rows)


def _trace_groups(att: Attribution) -> list[tuple[list[str], I64]]:
    """Groupings of the trace rows: by owner class, and by NMT category of the JVM's pages (-1 = none)."""
    out = [([f"class:{c}" for c in CLASS_NAMES], att.trace_class.astype(np.int64))]
    cats = att.nmt_categories
    if cats and att.nmt_arrays is not None:
        rc = att.nmt_arrays.region_cat.astype(np.int64)
        grp = np.full(len(att.trace_class), -1, dtype=np.int64)
        has = att.trace_nmt_region >= 0
        grp[has] = rc[att.trace_nmt_region[has]]
        out.append(([f"nmt:{c}" for c in cats], grp))
    return out


def owner_classes_table(att: Attribution) -> Table:
    """Restored pages by primary owner class; ``attributed_pct`` is the share with any owner."""
    ps = att.page_size
    n = len(CLASS_NAMES)
    first = att.trace_first
    restored = np.bincount(att.trace_class[first], minlength=n)
    present = np.bincount(att.phys_class, minlength=n)
    total = int(first.sum())
    rows = [[CLASS_NAMES[i], int(_kb(present[i], ps)), int(_kb(restored[i], ps)), int(restored[i]),
             _pct(restored[i], total)] for i in range(n)]
    return Table("owner_classes", "Restored pages by owner class",
                 ["class", "present_kb", "restored_kb", "restored_pages", "share_pct"], rows)


def runs(pages: npt.NDArray[np.uint64], ps: int) -> npt.NDArray[np.int64]:
    """Lengths of runs of physically contiguous pages in a sorted, distinct gpa array."""
    if pages.size == 0:
        return np.zeros(0, dtype=np.int64)
    pn = (pages // np.uint64(ps)).astype(np.int64)
    brk = np.flatnonzero(np.diff(pn) != 1) + 1
    return np.diff(np.concatenate(([0], brk, [len(pn)]))).astype(np.int64)


def _frag_row(label: str, pages: npt.NDArray[np.uint64], kflags: npt.NDArray[np.uint64] | None,
              ps: int) -> list[Any]:
    """``pages`` sorted and distinct (subsets of ``Attribution.phys`` are)."""
    r = runs(pages, ps)
    huge = None
    if kflags is not None and kflags.size and kflags.any():
        bits = np.uint64((1 << KPF_THP) | (1 << KPF_HUGE))
        huge = _pct(int(((kflags & bits) != 0).sum()), kflags.size)
    full2m = None
    if pages.size and ps == 4096:
        blk = pages // np.uint64(HUGE_PAGES * ps)            # sorted, so blocks are contiguous runs
        edges = np.concatenate(([0], np.flatnonzero(blk[1:] != blk[:-1]) + 1, [blk.size]))
        cnt = np.diff(edges)
        full2m = _pct(int(cnt[cnt == HUGE_PAGES].sum()), pages.size)
    return [label, int(pages.size), int(r.size), float(np.median(r)) if r.size else None,
            int(r.max()) if r.size else None, huge, full2m]


def fragmentation_table(att: Attribution) -> Table:
    """Physical contiguity per owner class / NMT category, for present and for restored pages.

    ``huge_pct`` = pages with kpageflags THP or HUGE (native memmaps only); ``full_2m_pct`` = pages lying
    in a 2 MiB-aligned physical block that the group fills completely (works for seed data too). The row
    "restored, in service order" counts runs of consecutive pages in the order they were served (REAP saw
    runs of 2–3 pages), i.e. how much one ioctl per run could have batched.
    """
    ps = att.page_size
    mm = att.recording.memmap
    out: list[list[Any]] = []
    restored = att.phys_first_touch >= 0
    traced = att.trace is not None and len(att.trace) > 0
    kfl = mm.page_kflags[att.phys_row] if mm.n_pages else np.zeros(0, dtype=np.uint64)
    for c in (OwnerClass.PROCESS, OwnerClass.KERNEL, OwnerClass.PAGECACHE, OwnerClass.FREE):
        sel = np.flatnonzero(att.phys_class == c)
        if sel.size:
            rsel = sel[restored[sel]]
            out.append(_frag_row(f"class:{CLASS_NAMES[c]}", att.phys[sel], kfl[sel], ps))
            if traced:
                out.append(_frag_row(f"restored class:{CLASS_NAMES[c]}", att.phys[rsel], kfl[rsel], ps))
    if att.nmt_arrays is not None and att.nmt_categories and att.nmt_arrays.region_cat.size:
        rc = att.nmt_arrays.region_cat
        reg = att.row_nmt_region[att.phys_row] if mm.n_pages else np.zeros(0, dtype=np.int32)
        jvm = np.flatnonzero(reg >= 0)
        cat = rc[reg[jvm]]
        for ci, name in enumerate(att.nmt_categories):
            sel = jvm[cat == ci]
            if sel.size:
                rsel = sel[restored[sel]]
                out.append(_frag_row(f"nmt:{name}", att.phys[sel], kfl[sel], ps))
                if traced:
                    out.append(_frag_row(f"restored nmt:{name}", att.phys[rsel], kfl[rsel], ps))
    if traced:
        out.append(_frag_row("restored (all)", att.restored_gpas(), None, ps))
        assert att.trace is not None
        seq = att.trace.gpa[att.trace_first] // np.uint64(ps)      # first touches, in service order
        brk = np.flatnonzero(np.diff(seq.astype(np.int64)) != 1) + 1
        r = np.diff(np.concatenate(([0], brk, [seq.size]))) if seq.size else np.zeros(0, dtype=np.int64)
        out.append(["restored, in service order", int(seq.size), int(r.size),
                    float(np.median(r)) if r.size else None, int(r.max()) if r.size else None, None, None])
    return Table("fragmentation", "Physical fragmentation and huge-page coverage",
                 ["group", "pages", "runs", "median_run", "max_run", "huge_pct", "full_2m_pct"], out)


def restore_order_table(att: Attribution) -> Table:
    """How quickly each group is touched: first page, and when 50 % / 90 % / all of its pages came.

    Groups are the owner classes and, overlapping them, the JVM's NMT categories.
    """
    ps = att.page_size
    tr = att.trace
    if tr is None or not len(tr):
        return Table("restore_order", "Restore order", [], [])
    idx = np.flatnonzero(att.trace_first)
    t0 = int(tr.t_ns[0]) if len(tr) else 0
    total = len(tr)
    rows: list[list[Any]] = []
    for names, grp in _trace_groups(att):
        g = grp[idx]
        order = np.argsort(g, kind="stable")
        gs, ids = g[order], idx[order]
        bounds = np.searchsorted(gs, np.arange(len(names) + 1))
        for k, name in enumerate(names):
            sel = ids[bounds[k]:bounds[k + 1]]
            if not sel.size:
                continue
            q = [int(sel[min(len(sel) - 1, int(np.ceil(f * len(sel))) - 1)]) for f in (0.5, 0.9, 1.0)]
            rows.append([name, int(sel.size), int(_kb(sel.size, ps)), int(sel[0]),
                         round((int(tr.t_ns[sel[0]]) - t0) / 1e6, 3), q[0], q[1], q[2],
                         _pct(q[0] + 1, total), _pct(q[1] + 1, total)])
    rows.sort(key=lambda r: r[3])
    return Table("restore_order", "Restore order (trace indices of first touches)",
                 ["group", "pages", "kb", "first", "first_ms", "p50", "p90", "last", "p50_pct_of_trace",
                  "p90_pct_of_trace"], rows)


def restore_timeline(att: Attribution, bins: int = 20) -> Table:
    """Cumulative restored kB per owner class and NMT category at ``bins`` equal steps of trace time
    (trace index when the trace has no times, e.g. seed imports): the viewer's and report's chart."""
    tr = att.trace
    if tr is None or not len(tr) or bins < 1:
        return Table("restore_timeline", "Restored kB over time", [], [])
    idx = np.flatnonzero(att.trace_first)
    t = tr.t_ns.astype(np.float64)
    timed = bool(t.max() > t.min())
    x = (t - t.min()) / 1e6 if timed else np.arange(len(tr), dtype=np.float64)
    edges = np.linspace(0.0, float(x.max()), bins + 1)[1:]
    cols: list[str] = ["t_ms" if timed else "trace_index"]
    series: list[list[int]] = []
    for names, grp in _trace_groups(att):
        g = grp[idx]
        for k, name in enumerate(names):
            sel = idx[g == k]
            if sel.size:
                cols.append(name)
                series.append((np.searchsorted(np.sort(x[sel]), edges, side="right") * att.page_size
                               // 1024).tolist())
    rows = [[round(float(e), 3), *(s[i] for s in series)] for i, e in enumerate(edges.tolist())]
    return Table("restore_timeline", "Restored kB over time (cumulative, first touches)", cols, rows)


def totals(att: Attribution) -> dict[str, Any]:
    """Counts, the first six as the original UffdVisualizer computes them (SEED.md §5.1–5.2).

    ``physical_pages``: distinct physical addresses in the memmap; ``processes``: owner sections incl.
    kernel and page cache; ``uffd_events``: trace rows (each becomes one ``UFFD_EVENT_PAGEFAULT`` line in
    the seed export); ``pages_loaded`` / ``pages_zeroed``: rows not zero-filled / zero-filled;
    ``nmt_regions``: reserved regions printed with a call stack.
    """
    rec = att.recording
    tr = rec.trace
    n = len(tr) if tr is not None else 0
    zeroed = int(tr.is_zero().sum()) if tr is not None else 0
    first = int(att.trace_first.sum())
    attributed = int((att.trace_first & (att.trace_phys >= 0)).sum())
    out: dict[str, Any] = {
        "physical_pages": int(att.phys.size),
        "processes": len(rec.memmap.owner_pid),
        "uffd_events": n,
        "pages_loaded": n - zeroed,
        "pages_zeroed": zeroed,
        "nmt_regions": rec.nmt.seed_region_count if rec.nmt is not None else 0,
        "mappings": len(rec.memmap.map_owner),
        "page_rows": rec.memmap.n_pages,
        "page_size": att.page_size,
        "restored_pages": first,
        "restored_kb": first * att.page_size // 1024,
        "attributed_pct": _pct(attributed, first),
        "shared_pages": int((att.phys_nrows > 1).sum()),
        "nmt_pid": rec.nmt_pid,
        # "criu-image": a process restore, its pages laid out by virtual address (analysis.process)
        "address_space": "criu-image" if is_process_recording(rec.meta) else "guest-physical",
    }
    if tr is not None:
        out["faults"] = int(tr.meta.get("faults", int((tr.fault >= 0).sum())))
        faulting = (tr.flags & np.uint8(FLAG_FAULTING)) != 0
        fp = np.sort(tr.gpa[faulting])                        # pages the guest itself touched
        out["faulted_pages"] = int((fp[1:] != fp[:-1]).sum()) + 1 if fp.size else 0
        out["strategy"] = tr.meta.get("strategy")
        out["trace_ms"] = round((int(tr.t_ns.max()) - int(tr.t_ns.min())) / 1e6, 3) if n else 0.0
    return out


def tables(att: Attribution) -> dict[str, Table]:
    """All tables for one recording, in display order."""
    return {t.name: t for t in (
        owner_classes_table(att), processes_table(att), nmt_categories_table(att), nmt_regions_table(att),
        mappings_table(att), fragmentation_table(att), restore_order_table(att), restore_timeline(att))}
