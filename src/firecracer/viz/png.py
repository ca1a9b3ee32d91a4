"""PNG export (Pillow) of the physical view and of the per-category restore chart, for papers.

Same colours as the HTML viewer (``PALETTE``, passed to the page too, so both agree): one cell of
``scale`` × ``scale`` pixels per page, ``width`` pages per row, pages coloured by owner class, the
highlighted owner's pages dark (steel blue when shared), and every restored page on top: orange when
highlighted, yellow when owned by someone else, blue when no owner is known (the seed's colours).

Public API: ``PALETTE``, ``physical_image(att, ...) -> PIL.Image``, ``chart_image(att, ...)``,
``write_pngs(att, out, ...) -> list[Path]`` (``OUT.png`` and ``OUT-categories.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from firecracer.analysis.join import Attribution, OwnerClass
from firecracer.viz.pack import chart_series

PALETTE: dict[str, str] = {
    "background": "#d3d3d3", "memory": "#808080", "kernel": "#8878a8", "pagecache": "#78a088",
    "free": "#e4e4e4", "traceonly": "#a0a0a0", "shared": "#98a7b4", "selected": "#404040",
    "selshared": "#4d7a97", "loadsel": "#ffc800", "load": "#ffff00", "nomap": "#0000ff",
    "outside": "#f7f7f5",
}
SERIES_COLORS = ["#4d7a97", "#c0762a", "#6a9a3a", "#8e5ea2", "#b8485a", "#3a8f8f", "#9a8a2a", "#5a5a9a",
                 "#777777", "#c25fa0"]
MAX_PIXELS = 1 << 28


def _rgb(name: str) -> tuple[int, int, int]:
    v = int(PALETTE[name].lstrip("#"), 16)
    return (v >> 16, (v >> 8) & 255, v & 255)


def highlight_rows(att: Attribution, pid: int | None = None,
                   nmt_category: str | None = None) -> npt.NDArray[np.bool_]:
    """Memmap rows to highlight: an NMT category of the JVM, else a pid (default: the NMT pid)."""
    mm = att.recording.memmap
    if nmt_category is not None:
        if att.nmt_arrays is None or nmt_category not in att.nmt_categories:
            return np.zeros(mm.n_pages, dtype=bool)
        ci = att.nmt_categories.index(nmt_category)
        rc = att.nmt_arrays.region_cat
        reg = att.row_nmt_region
        return (reg >= 0) & (rc[np.maximum(reg, 0)] == ci) if rc.size else np.zeros(mm.n_pages, dtype=bool)
    if pid is None:
        pid = att.recording.nmt_pid
    if pid is None:
        return np.zeros(mm.n_pages, dtype=bool)
    return np.asarray(mm.owner_pid[mm.page_owner] == pid) if mm.n_pages else np.zeros(0, dtype=bool)


def physical_image(att: Attribution, width: int = 512, scale: int = 2, phys_bytes: int | None = None,
                   highlight: npt.NDArray[np.bool_] | None = None, restored: bool = True) -> Image.Image:
    """The physical view as an RGB image (``width`` pages per row, ``scale`` pixels per page)."""
    mm, ps = att.recording.memmap, att.page_size
    pfn = (att.phys // np.uint64(ps)).astype(np.int64)
    tr_pfn = (att.trace.gpa // np.uint64(ps)).astype(np.int64) if att.trace is not None else \
        np.zeros(0, np.int64)
    total = phys_bytes or int(mm.meta.get("phys_mem_bytes") or 0)
    slots = (phys_bytes // ps if phys_bytes else
             max(total // ps, int(pfn.max(initial=-1)) + 1, int(tr_pfn.max(initial=-1)) + 1, 1))
    rows = -(-slots // width)
    if rows * width * scale * scale > MAX_PIXELS:
        raise ValueError(f"{rows * scale} x {width * scale} pixels is too large; lower --scale or --width")
    img = np.empty((rows * width, 3), dtype=np.uint8)
    img[:] = _rgb("background")
    img[slots:] = _rgb("outside")
    keep = pfn < slots
    p, idx = pfn[keep], np.flatnonzero(keep)
    cls_col = {OwnerClass.PROCESS: "memory", OwnerClass.KERNEL: "kernel", OwnerClass.PAGECACHE: "pagecache",
               OwnerClass.FREE: "free", OwnerClass.NONE: "traceonly"}
    pc = att.phys_class[idx]
    for c, name in cls_col.items():
        img[p[pc == c]] = _rgb(name)
    shared = (att.phys_nrows[idx] > 1) & (pc == OwnerClass.PROCESS)
    img[p[shared]] = _rgb("shared")
    hl_phys = np.zeros(len(att.phys), dtype=bool)
    if highlight is not None and highlight.any():
        hl_phys[np.unique(att.row_phys[highlight])] = True
        h = hl_phys[idx]
        img[p[h & (att.phys_nrows[idx] > 1)]] = _rgb("selshared")
        img[p[h & (att.phys_nrows[idx] <= 1)]] = _rgb("selected")
    if restored and tr_pfn.size:
        t = tr_pfn[tr_pfn < slots]
        ph = att.trace_phys[tr_pfn < slots]
        img[t[ph < 0]] = _rgb("nomap")
        own = ph >= 0
        img[t[own & ~hl_phys[np.maximum(ph, 0)]]] = _rgb("load")
        img[t[own & hl_phys[np.maximum(ph, 0)]]] = _rgb("loadsel")
    grid = img.reshape(rows, width, 3)
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    if scale >= 4:     # a one-pixel gap between pages, as the page (and the seed's drawRect) draws them
        grid[scale - 1::scale, :] = _rgb("outside")
        grid[:, scale - 1::scale] = _rgb("outside")
    return Image.fromarray(np.ascontiguousarray(grid), "RGB")


def chart_image(att: Attribution, size: tuple[int, int] = (900, 420),
                title: str | None = None) -> Image.Image:
    """Cumulative restored MiB over time per category (owner class, or NMT category for the JVM)."""
    ch = chart_series(att)
    w, h = size
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    left, right, top, bottom = 64, 230, 44 if title else 24, 44
    pw, ph = w - left - right, h - top - bottom
    if title:
        d.text((left, 8), title, fill="#222", font=font)
    d.rectangle((left, top, left + pw, top + ph), outline="#bbb")
    series: list[dict[str, Any]] = ch["series"]
    if not series:
        d.text((left + 10, top + 10), "no restore trace", fill="#444", font=font)
        return im
    tmax = float(ch["t"][-1]) or 1.0
    vmax = max(float(s["values"][-1]) for s in series) or 1.0
    for k in range(5):
        y = top + ph - k / 4 * ph
        x = left + k / 4 * pw
        d.line((left, y, left + pw, y), fill="#eee")
        d.text((left - 6, y), f"{k / 4 * vmax:.{2 if vmax < 4 else 1}f}", fill="#333", font=small,
               anchor="rm")
        lab = f"{k / 4 * tmax:.1f}" if ch["x"] == "ms" else f"{int(k / 4 * tmax):,}"
        d.text((x, top + ph + 6), lab, fill="#333", font=small, anchor="mt")
    d.text((left + pw / 2, h - 6), "ms since the first fault" if ch["x"] == "ms" else "trace events",
           fill="#333", font=small, anchor="mb")
    d.text((left, top - 4), "restored MiB", fill="#333", font=small, anchor="lb")
    for i, s in enumerate(series):
        col = SERIES_COLORS[i % len(SERIES_COLORS)]
        pts = [(left, top + ph)] + [(left + float(t) / tmax * pw, top + ph - float(v) / vmax * ph)
                                    for t, v in zip(ch["t"], s["values"], strict=True)]
        d.line(pts, fill=col, width=2)
        y = top + 6 + i * 17
        d.rectangle((left + pw + 12, y, left + pw + 22, y + 10), fill=col)
        d.text((left + pw + 28, y + 5), f"{s['name']}  {float(s['total']):.1f} MiB", fill="#222", font=small,
               anchor="lm")
    return im


def write_pngs(att: Attribution, out: str | Path, width: int = 512, scale: int = 2,
               phys_bytes: int | None = None, highlight_pid: int | None = None,
               nmt_category: str | None = None) -> list[Path]:
    """Write ``OUT.png`` (physical view) and ``OUT-categories.png`` (chart); returns both paths."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    hl = highlight_rows(att, highlight_pid, nmt_category)
    physical_image(att, width, scale, phys_bytes, hl).save(p, optimize=True)
    chart = p.with_name(p.stem + "-categories.png")
    chart_image(att, title=f"Restored MiB per category: {att.recording.label}").save(chart, optimize=True)
    return [p, chart]
