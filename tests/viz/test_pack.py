"""Packing for the page: the blob round-trips, its statistics equal analysis's tables, the HTML is inert."""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from firecracer.analysis import attribute, load_recording, tables
from firecracer.viz.html import ViewOptions, build_html
from firecracer.viz.pack import pack


def _unpack(meta: dict[str, Any], blobs: list[bytes]) -> dict[str, np.ndarray]:
    raws = [zlib.decompress(b) for b in blobs]
    out = {}
    for name, (dt, off, n, delta, part) in meta["arrays"].items():
        a = np.frombuffer(raws[part], dtype=np.dtype(dt).newbyteorder("<"), count=n, offset=off).copy()
        if delta:
            a = np.cumsum(a.astype(np.uint64)).astype(np.uint32) if a.dtype == np.uint32 else np.cumsum(a)
        out[name] = a
    return out


def test_blob_round_trips(syn_rec: Path) -> None:
    pk = pack(attribute(load_recording(syn_rec)))
    got = _unpack(pk.meta, pk.blobs)
    assert set(got) == set(pk.arrays)
    for name, arr in pk.arrays.items():
        assert np.array_equal(got[name], arr), name
    assert pk.meta["slots"] == (256 << 20) // 4096
    assert all(off % 8 == 0 for _, off, _, _, _ in pk.meta["arrays"].values())
    assert pk.meta["arrays"]["row_phys"][4] == 0 and pk.meta["arrays"]["row_vpi"][4] == 1


def test_tree_statistics_equal_the_analysis_tables(syn_rec: Path) -> None:
    att = attribute(load_recording(syn_rec))
    pk = pack(att)
    tabs = tables(att)
    m = tabs["mappings"].to_dicts()
    assert [r["rss_kb"] for r in m] == (pk.arrays["map_rss"].astype(np.int64) * 4).tolist()
    assert [r["restored_kb"] for r in m] == (pk.arrays["map_rest"].astype(np.int64) * 4).tolist()
    procs = tabs["processes"].to_dicts()
    assert [r["rss_kb"] for r in procs] == [o["rss"] // 1024 for o in pk.meta["owners"]]
    assert [r["restored_kb"] for r in procs] == [o["rest"] // 1024 for o in pk.meta["owners"]]
    regs = tabs["nmt_regions"].to_dicts()
    assert [r["rss_kb"] for r in regs] == [g["rss"] // 1024 for g in pk.meta["nmt"]["regions"]]
    assert [r["restored_kb"] for r in regs] == [g["rest"] // 1024 for g in pk.meta["nmt"]["regions"]]
    # owner and mapping row ranges cover the rows with the right owner
    mm = att.recording.memmap
    for i, o in enumerate(pk.meta["owners"]):
        assert o["re"] - o["rs"] == int((mm.page_owner == i).sum())
    spans = pk.arrays["map_re"].astype(np.int64) - pk.arrays["map_rs"]
    assert spans.tolist() == np.bincount(mm.page_map[mm.page_map >= 0], minlength=len(spans)).tolist()


def test_chart_series_end_at_restored_totals(syn_rec: Path) -> None:
    att = attribute(load_recording(syn_rec))
    ch = pack(att).meta["chart"]
    assert ch["x"] == "ms" and len(ch["t"]) == 240
    total_mb = sum(s["values"][-1] for s in ch["series"])
    assert abs(total_mb - int(att.trace_first.sum()) * 4096 / 2**20) < 1e-3
    heap = next(s for s in ch["series"] if s["name"] == "NMT Java Heap")
    assert heap["values"] == sorted(heap["values"])


def test_html_is_self_contained_and_inert(syn_rec: Path) -> None:
    att = attribute(load_recording(syn_rec))
    evil = "</script><script>alert(1)</script><!--"
    html = build_html([pack(att, label=evil)], ViewOptions(title=evil, colors={"loadsel": "#ff0000"}))
    assert evil not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    assert html.count("<script") == 5     # options, meta, two blobs, the viewer
    metas = json.loads(re.search(r'id="fc-meta">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert metas[0]["label"] == evil
    opts = json.loads(re.search(r'id="fc-opts">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert opts["colors"]["loadsel"] == "#ff0000" and opts["colors"]["selshared"] == "#4d7a97"
    blob = re.search(r'id="fc-blob-0-0">([A-Za-z0-9+/=]+)</script>', html)
    assert blob is not None and zlib.decompress(base64.b64decode(blob.group(1)))
