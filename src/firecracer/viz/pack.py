"""Build the viewer's embedded data from an ``Attribution`` (the join is analysis's; this only packs it).

The page receives, per recording, one JSON object (``meta``: owners, NMT regions, tree statistics,
tables, chart series, and a directory of arrays) and two binary blobs: the typed arrays below laid end
to end (8-byte aligned), zlib-compressed, base64-encoded in the HTML. Blob 0 holds what drawing,
selecting and the animation need; blob 1 (marked * below: gva page index, pagemap bits, kpageflags,
mapcount) only feeds the hover text and committed-range selection, and is decoded after the first
paint. The browser inflates them with ``DecompressionStream("deflate")`` and views each array in
place; arrays marked ``delta`` hold successive differences (mod 2^32) and are prefix-summed once on
load. Nothing is per page in JSON.

Arrays (``n_rows`` = memmap page rows, ``n_phys`` = distinct physical pages, ``n_tr`` = trace rows):

=============  ========  =======  ==============================================================
name           dtype     length   meaning
=============  ========  =======  ==============================================================
row_phys       uint32    n_rows   index into ``phys_*`` of the row's physical page
row_vpi *      uint32    n_rows   page index of the row's gva inside its mapping (delta)
row_nmt        int16     n_rows   NMT region (index into ``meta.nmt.regions``) or -1
row_pm *       uint8     n_rows   pagemap bits (1 exclusive, 2 file/shared-anon, 4 soft-dirty)
map_start      float64   n_maps   mapping start (gva; kernel segments: gpa), exact below 2^53
map_end        float64   n_maps   mapping end (exclusive)
map_rs, map_re uint32    n_maps   the mapping's rows are ``[map_rs, map_re)``
map_owner      int32     n_maps   owner index
map_name       int32     n_maps   index into ``meta.map_names``
map_perms      uint8     n_maps   r=1 w=2 x=4 shared=8
map_rss        uint32    n_maps   present pages
map_rest       uint32    n_maps   present pages the trace restored
phys_pfn       uint32    n_phys   gpa / page_size, ascending (delta)
phys_class     uint8     n_phys   primary owner class (``analysis.join.OwnerClass``)
phys_nrows     uint8     n_phys   owners (memmap rows) of the page, saturated at 255 (>1: shared)
phys_kfl *     uint8/16  n_phys   index into ``kfl_lo``/``kfl_hi``: the distinct /proc/kpageflags words
kfl_lo/hi *    uint32    n_kfl    distinct kpageflags words, low and high halves
phys_kcount *  uint8     n_phys   /proc/kpagecount (saturated at 255)
tr_pfn         uint32    n_tr     gpa / page_size of each served page, in service order
tr_t           uint32    n_tr     µs since the first row (delta)
tr_bits        uint8     n_tr     trace ``flags`` (bits 0–2) | ``action`` << 3
=============  ========  =======  ==============================================================

Rows are ordered by (owner, mapping, gva), so an owner's and a mapping's rows are contiguous ranges.

Public API: ``Packed`` (``meta``, ``blob``), ``pack(att, label=None) -> Packed``, ``chart_series(att)``
(cumulative restored MiB per category, shared with the PNG export), ``CHART_BINS``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.join import CLASS_NAMES, Attribution, OwnerClass
from firecracer.analysis.memmap import is_process_recording
from firecracer.analysis.recording import Recording
from firecracer.analysis.tables import tables, totals

CHART_BINS = 240
SUMMARY_TABLES = ("owner_classes", "nmt_categories", "processes", "nmt_regions", "fragmentation",
                  "restore_order")
MAX_U32 = 0xFFFFFFFF

I64 = npt.NDArray[np.int64]


@dataclass
class Packed:
    """One recording, ready to embed: ``meta`` is JSON-able, ``blobs`` the zlib-compressed arrays
    (``blobs[0]``: what the first paint needs; ``blobs[1]``: hover details, decoded right after)."""

    meta: dict[str, Any]
    blobs: list[bytes]
    raw_bytes: int = 0
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


class _Blob:
    """Arrays laid end to end with 8-byte alignment; ``directory`` tells the page where each one is."""

    def __init__(self) -> None:
        self.parts: list[list[bytes]] = [[], []]
        self.sizes = [0, 0]
        self.directory: dict[str, list[Any]] = {}
        self.arrays: dict[str, npt.NDArray[Any]] = {}

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def add(self, name: str, arr: npt.NDArray[Any], dtype: type, delta: bool = False, part: int = 0) -> None:
        a: npt.NDArray[Any] = np.ascontiguousarray(np.asarray(arr).astype(dtype, copy=False))
        self.arrays[name] = a
        if delta and a.size:
            d = np.empty_like(a)
            d[0] = a[0]
            np.subtract(a[1:], a[:-1], out=d[1:])       # wraps mod 2^32 for uint32, undone by the page
            a = d
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        self.directory[name] = [np.dtype(dtype).name, self.sizes[part], int(a.size), bool(delta), part]
        pad = (-len(data)) % 8
        self.parts[part].append(data + b"\0" * pad)
        self.sizes[part] += len(data) + pad

    def compressed(self) -> list[bytes]:
        return [zlib.compress(b"".join(p), 1) for p in self.parts]  # level 1: ~4x faster than 6, ~2 % larger


def _hex(v: int) -> str:
    return f"0x{v:016x}"


def _counts(idx: I64, n: int, weights: npt.NDArray[np.bool_] | None = None) -> I64:
    ok = idx >= 0
    if weights is not None:
        ok &= weights
    return np.bincount(idx[ok], minlength=n).astype(np.int64)[:n] if n else np.zeros(0, dtype=np.int64)


def _keys(labels: list[str]) -> list[str]:
    """Stable match keys for compare mode: the label plus its ordinal among equal labels."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        k = seen.get(lab, 0)
        seen[lab] = k + 1
        out.append(f"{lab}#{k}")
    return out


def chart_series(att: Attribution) -> dict[str, Any]:
    """Cumulative restored MiB per group (owner class, or NMT category for the JVM's pages) over time."""
    tr = att.trace
    if tr is None or not len(tr):
        return {"x": "ms", "t": [], "series": []}
    first = np.flatnonzero(att.trace_first)
    names = list(CLASS_NAMES)
    grp = att.trace_class[first].astype(np.int64)
    if att.nmt_arrays is not None and att.nmt_categories:
        reg = att.trace_nmt_region[first]
        has = reg >= 0
        grp[has] = len(names) + att.nmt_arrays.region_cat.astype(np.int64)[reg[has]]
        names += [f"NMT {c}" for c in att.nmt_categories]
    names[OwnerClass.NONE] = "no owner"
    t_ns = tr.t_ns.astype(np.float64)
    t = (t_ns[first] - t_ns.min()) / 1e6
    span = float(t.max()) if t.size else 0.0
    xkind = "ms"
    if span <= 0:
        t, span, xkind = first.astype(np.float64), float(max(1, len(tr) - 1)), "events"
    edges = np.linspace(0.0, span, CHART_BINS + 1)[1:]
    mb = att.page_size / float(1 << 20)
    series = []
    for g in np.unique(grp):
        tt = np.sort(t[grp == g])
        cum = np.searchsorted(tt, edges, side="right") * mb
        series.append({"name": names[int(g)], "values": [round(float(v), 4) for v in cum],
                       "total": round(float(tt.size * mb), 4)})
    series.sort(key=lambda s: -float(str(s["total"])))
    return {"x": xkind, "t": [round(float(e), 4) for e in edges], "series": series}


def no_memmap_reason(rec: Recording) -> str | None:
    """Why a recording has no memory map (None when it has one): the viewer says so instead of showing
    an empty owner tree."""
    if rec.memmap.n_pages:
        return None
    guest = rec.meta.get("guest")
    if isinstance(guest, dict) and guest.get("kernel") == "probe":
        return ("No memory map: this is a restore of the probe guest, a few hundred bytes of code with no "
                "operating system. There are no processes, kernel or page cache that could own its pages, "
                "so only the restore trace was recorded; restored pages are drawn as 'restored, no owner'.")
    return ("No memory map: this recording has no memmap.npz (no 'firecracer collect' ran for it), so no "
            "page has a known owner; restored pages are drawn as 'restored, no owner'. Collect the guest's "
            "memory into the recording directory to see owners here.")


def pack(att: Attribution, label: str | None = None) -> Packed:
    """Everything the page needs for one recording (see the module docstring for the layout)."""
    rec = att.recording
    mm = rec.memmap
    ps = att.page_size
    n_rows, n_maps, n_own = mm.n_pages, len(mm.map_owner), len(mm.owner_pid)

    # rows by (owner, mapping with "none" last, gva)
    map_key = np.where(mm.page_map >= 0, mm.page_map, n_maps).astype(np.int64)
    key = mm.page_owner.astype(np.int64) * (n_maps + 1) + map_key
    perm = np.lexsort((mm.page_vaddr, key)).astype(np.int64)
    skey = key[perm]
    own_rs = np.searchsorted(skey, np.arange(n_own, dtype=np.int64) * (n_maps + 1))
    own_re = np.searchsorted(skey, np.arange(1, n_own + 1, dtype=np.int64) * (n_maps + 1))
    own_us = np.searchsorted(skey, np.arange(n_own, dtype=np.int64) * (n_maps + 1) + n_maps)
    mkey = mm.map_owner.astype(np.int64) * (n_maps + 1) + np.arange(n_maps, dtype=np.int64)
    map_rs = np.searchsorted(skey, mkey, side="left")
    map_re = np.searchsorted(skey, mkey, side="right")

    pmap = mm.page_map[perm]
    vaddr = mm.page_vaddr[perm]
    base = np.where(pmap >= 0, mm.map_start[np.maximum(pmap, 0)] if n_maps else 0, vaddr).astype(np.uint64)
    vpi = ((vaddr - base) // np.uint64(ps)).astype(np.int64)
    if vpi.size and vpi.max() > MAX_U32:
        vpi = np.minimum(vpi, MAX_U32)     # mappings over 16 TiB: page index saturates (display only)
    restored_row = att.row_first_touch >= 0

    blob = _Blob()
    blob.add("row_phys", att.row_phys[perm], np.uint32)
    blob.add("row_vpi", vpi, np.uint32, delta=True, part=1)
    blob.add("row_nmt", att.row_nmt_region[perm], np.int16)
    blob.add("row_pm", mm.page_pm[perm], np.uint8, part=1)

    map_rss = _counts(mm.page_map.astype(np.int64), n_maps)
    map_rest = _counts(mm.page_map.astype(np.int64), n_maps, restored_row)
    names: dict[str, int] = {}
    name_idx = np.array([names.setdefault(nm, len(names)) for nm in mm.map_name], dtype=np.int32)
    blob.add("map_start", mm.map_start.astype(np.float64), np.float64)
    blob.add("map_end", mm.map_end.astype(np.float64), np.float64)
    blob.add("map_rs", map_rs, np.uint32)
    blob.add("map_re", map_re, np.uint32)
    blob.add("map_owner", mm.map_owner, np.int32)
    blob.add("map_name", name_idx, np.int32)
    blob.add("map_perms", mm.map_perms, np.uint8)
    blob.add("map_rss", map_rss, np.uint32)
    blob.add("map_rest", map_rest, np.uint32)

    pfn = (att.phys // np.uint64(ps)).astype(np.int64)
    prow = att.phys_row
    kfl = mm.page_kflags[prow] if n_rows else np.zeros(0, dtype=np.uint64)
    blob.add("phys_pfn", pfn, np.uint32, delta=True)
    blob.add("phys_class", att.phys_class, np.uint8)
    blob.add("phys_nrows", np.minimum(att.phys_nrows, 255), np.uint8)
    # kpageflags words repeat a lot (a few hundred combinations): a table plus a small index per page
    kvals, kidx = np.unique(kfl, return_inverse=True)
    kdt = np.uint8 if len(kvals) <= 256 else np.uint16 if len(kvals) <= 65536 else np.uint32
    blob.add("phys_kfl", kidx.reshape(-1), kdt, part=1)
    blob.add("kfl_lo", kvals & np.uint64(MAX_U32), np.uint32, part=1)
    blob.add("kfl_hi", kvals >> np.uint64(32), np.uint32, part=1)
    blob.add("phys_kcount", np.minimum(mm.page_kcount[prow] if n_rows else prow, 255), np.uint8, part=1)

    tr = att.trace
    trace_meta: dict[str, Any] = {"n": 0}
    max_pfn = int(pfn.max()) if pfn.size else 0
    if tr is not None and len(tr):
        tpfn = (tr.gpa // np.uint64(ps)).astype(np.int64)
        max_pfn = max(max_pfn, int(tpfn.max()))
        t_us = (tr.t_ns - tr.t_ns.min()) // np.uint64(1000)
        blob.add("tr_pfn", tpfn, np.uint32)
        blob.add("tr_t", np.minimum(t_us, MAX_U32), np.uint32, delta=True)
        blob.add("tr_bits", (tr.flags & np.uint8(7)) | (tr.action << np.uint8(3)), np.uint8)
        trace_meta = {"n": len(tr), "span_ms": round(float(t_us.max()) / 1000.0, 3),
                      "actions": tr.action_counts(), "strategy": tr.strategy,
                      "zeroed": int(tr.is_zero().sum()), "page_size": tr.meta.get("page_size", ps),
                      "split_from": tr.meta.get("split_from")}
    else:
        for nm, dt in (("tr_pfn", np.uint32), ("tr_t", np.uint32), ("tr_bits", np.uint8)):
            blob.add(nm, np.zeros(0, dtype=dt), dt)

    # physical extent: guest RAM size (or the highest page seen, for layouts with holes)
    phys_bytes = int(mm.meta.get("phys_mem_bytes") or 0)
    guest = rec.meta.get("guest")
    if not phys_bytes and isinstance(guest, dict) and isinstance(guest.get("mem_size_mib"), int):
        phys_bytes = int(guest["mem_size_mib"]) << 20
    slots = max(phys_bytes // ps, max_pfn + 1)

    # owners and their statistics (virtual = sum of mappings, as the seed's pmap node)
    exe = mm.owner_exe
    own_rss = _counts(mm.page_owner.astype(np.int64), n_own)
    own_rest = _counts(mm.page_owner.astype(np.int64), n_own, restored_row)
    own_virt = np.bincount(mm.map_owner, weights=(mm.map_end - mm.map_start).astype(np.float64),
                           minlength=n_own) if n_maps else np.zeros(n_own)
    map_first = np.searchsorted(mm.map_owner, np.arange(n_own)) if n_maps else np.zeros(n_own, np.int64)
    owner_labels = [mm.owner_label(i) for i in range(n_own)]
    okeys = _keys([f"o:{int(mm.owner_pid[i]) if int(mm.owner_pid[i]) <= 0 else ''}{exe[i]}"
                   for i in range(n_own)])
    owners = []
    for i in range(n_own):
        pid = int(mm.owner_pid[i])
        cls = (OwnerClass.PROCESS if pid > 0 else OwnerClass.KERNEL if pid == 0 else
               OwnerClass.PAGECACHE if pid == -1 else OwnerClass.FREE)
        owners.append({"pid": pid, "exe": exe[i] if i < len(exe) else "", "label": owner_labels[i],
                       "class": int(cls), "rs": int(own_rs[i]), "re": int(own_re[i]), "us": int(own_us[i]),
                       "virt": int(own_virt[i]), "rss": int(own_rss[i]) * ps, "rest": int(own_rest[i]) * ps,
                       "key": okeys[i], "nmaps": int((mm.map_owner == i).sum()) if n_maps else 0,
                       "map0": int(map_first[i])})
    # mapping keys are built by the page from owner key + name + ordinal (same rule as _keys)
    sorted_maps = bool(n_maps == 0 or (np.diff(mm.map_owner) >= 0).all())

    # NMT
    nmt: dict[str, Any] | None = None
    if att.nmt_arrays is not None and att.nmt_owner >= 0:
        na = att.nmt_arrays
        n_reg = len(att.nmt_regions)
        reg_rss = _counts(att.row_nmt_region.astype(np.int64), n_reg)
        reg_rest = _counts(att.row_nmt_region.astype(np.int64), n_reg, restored_row)
        jrows = np.flatnonzero(mm.page_owner == att.nmt_owner)
        jv = mm.page_vaddr[jrows]
        o = np.argsort(jv)
        jv = jv[o]
        jrest = restored_row[jrows][o]
        crest = np.concatenate(([0], np.cumsum(jrest)))
        regions: list[dict[str, Any]] = []
        rkeys = _keys([f"r:{r.category}" for r in att.nmt_regions])
        for ri, r in enumerate(att.nmt_regions):
            com = []
            for cs, ce in r.committed:
                a, b = np.searchsorted(jv, np.uint64(cs)), np.searchsorted(jv, np.uint64(ce))
                com.append([float(cs), float(ce), int(b - a) * ps, int(crest[b] - crest[a]) * ps])
            regions.append({"s": float(r.start), "e": float(r.end),
                            "cat": int(na.categories.index(r.category)),
                            "virt": r.reserved_bytes, "committed": r.committed_bytes,
                            "rss": int(reg_rss[ri]) * ps, "rest": int(reg_rest[ri]) * ps, "com": com,
                            "stack": r.has_stack, "key": rkeys[ri]})
        cats = []
        rc = na.region_cat.astype(np.int64)
        for ci, c in enumerate(na.categories):
            sel = np.flatnonzero(rc == ci)
            if not sel.size:
                continue
            members = [regions[int(x)] for x in sel]
            cats.append({"i": ci, "name": c, "regions": [int(x) for x in sel],
                         **{f: sum(int(m[f]) for m in members)
                            for f in ("virt", "committed", "rss", "rest")}})
        nmt = {"pid": rec.nmt_pid, "owner": att.nmt_owner, "categories": na.categories, "regions": regions,
               "cats": cats}

    tabs = tables(att)
    summary = {k: {"title": tabs[k].title, "columns": tabs[k].columns, "rows": tabs[k].rows}
               for k in SUMMARY_TABLES if k in tabs and tabs[k].columns}
    facts = {k: rec.meta[k] for k in ("source", "created", "vmm", "guest", "jvm", "strategy", "timings_ms",
                                      "host", "address_space") if k in rec.meta}
    meta: dict[str, Any] = {
        "label": label or rec.label, "path": str(rec.path) if rec.path else None, "facts": facts,
        "page_size": ps, "slots": int(slots), "phys_bytes": int(phys_bytes) or int(slots) * ps,
        "n_rows": n_rows, "n_maps": n_maps, "n_phys": len(att.phys), "sorted_maps": sorted_maps,
        "owners": owners, "map_names": list(names), "nmt": nmt, "trace": trace_meta,
        "totals": totals(att), "tables": summary, "chart": chart_series(att),
        "arrays": blob.directory, "classes": list(CLASS_NAMES), "no_memmap": no_memmap_reason(rec),
        # a process restore (CRIU) has no physical pages: its grid is the JVM's image, in address order
        "space": "process" if is_process_recording(rec.meta) else "physical",
    }
    return Packed(meta=meta, blobs=blob.compressed(), raw_bytes=blob.size, arrays=blob.arrays)
