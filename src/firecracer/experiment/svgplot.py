"""Tiny inline-SVG charts for the study report: strip plots, (stacked) bars, heatmaps. No dependencies.

Each function returns one ``<svg>`` element as a string with ``class="plot"`` and ``data-marks`` = the
number of data marks drawn, so a test (or a reader of the DOM) can tell a drawn plot from an empty one.
Values are plotted as given; the caller chooses units and says them in the axis label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")

_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values from at most ``lo`` to at least ``hi`` (1, 2, 2.5, 5 × 10^k steps)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def fmt(v: float) -> str:
    """Short human number for labels."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}"


class _Frame:
    """Plot area with a linear y axis from 0 (or the data minimum) to a nice maximum."""

    def __init__(self, width: int, height: int, ymax: float, ylabel: str, left: int = 58,
                 bottom: int = 62, top: int = 26, right: int = 12) -> None:
        self.w, self.h = width, height
        self.l, self.b, self.t, self.r = left, bottom, top, right
        ticks = nice_ticks(0.0, ymax if ymax > 0 else 1.0)
        self.ticks = ticks
        self.ymax = ticks[-1]
        self.ylabel = ylabel

    @property
    def pw(self) -> float:
        return self.w - self.l - self.r

    @property
    def ph(self) -> float:
        return self.h - self.t - self.b

    def y(self, v: float) -> float:
        return self.t + self.ph * (1 - v / self.ymax)

    def axes(self, title: str) -> list[str]:
        out = [f'<text x="{self.l}" y="15" {_FONT} font-weight="bold">{escape(title)}</text>']
        for t in self.ticks:
            yy = self.y(t)
            out.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{yy:.1f}" y2="{yy:.1f}" '
                       'stroke="#e3e3e3"/>')
            out.append(f'<text x="{self.l - 5}" y="{yy + 4:.1f}" text-anchor="end" {_FONT}>{fmt(t)}</text>')
        out.append(f'<line x1="{self.l}" x2="{self.l}" y1="{self.t}" y2="{self.t + self.ph}" stroke="#555"/>')
        out.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{self.t + self.ph}" '
                   f'y2="{self.t + self.ph}" stroke="#555"/>')
        cy = self.t + self.ph / 2
        out.append(f'<text transform="translate(13 {cy:.0f}) rotate(-90)" text-anchor="middle" '
                   f'{_FONT}>{escape(self.ylabel)}</text>')
        return out


def _svg(width: int, height: int, body: list[str], marks: int, label: str) -> str:
    return (f'<svg class="plot" data-marks="{marks}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">' + "".join(body) + "</svg>")


def _group_labels(frame: _Frame, groups: Sequence[str], slot: float) -> list[str]:
    out = []
    for gi, g in enumerate(groups):
        cx = frame.l + slot * (gi + 0.5)
        out.append(f'<text x="{cx:.1f}" y="{frame.t + frame.ph + 34}" text-anchor="middle" {_FONT} '
                   f'font-weight="bold">{escape(g)}</text>')
        if gi:
            x = frame.l + slot * gi
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.t}" y2="{frame.t + frame.ph + 40}" '
                       'stroke="#ccc" stroke-dasharray="3 3"/>')
    return out


def legend(names: Sequence[str], colors: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    cx = x
    for n, c in zip(names, colors, strict=True):
        out.append(f'<rect x="{cx:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{c}"/>')
        out.append(f'<text x="{cx + 14:.1f}" y="{y:.1f}" {_FONT}>{escape(n)}</text>')
        cx += 22 + 6.5 * len(n)
    return out


def strip_plot(title: str, groups: Sequence[str], series: Sequence[str],
               values: dict[tuple[str, str], list[float]], ylabel: str, width: int = 860,
               height: int = 330) -> str:
    """Every value as a dot, per group (x) and series (colour), with a median bar and min–max whisker."""
    allv = [v for vs in values.values() for v in vs]
    frame = _Frame(width, height, max(allv) * 1.08 if allv else 1.0, ylabel)
    body = frame.axes(title)
    slot = frame.pw / max(len(groups), 1)
    sub = slot / max(len(series), 1)
    marks = 0
    for gi, g in enumerate(groups):
        for si, s in enumerate(series):
            vs = sorted(values.get((g, s), []))
            if not vs:
                continue
            cx = frame.l + slot * gi + sub * (si + 0.5)
            c = color(si)
            body.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{frame.y(vs[0]):.1f}" '
                        f'y2="{frame.y(vs[-1]):.1f}" stroke="{c}" stroke-opacity="0.5"/>')
            med = vs[len(vs) // 2] if len(vs) % 2 else (vs[len(vs) // 2 - 1] + vs[len(vs) // 2]) / 2
            hw = min(sub * 0.35, 16)
            body.append(f'<line class="median" x1="{cx - hw:.1f}" x2="{cx + hw:.1f}" y1="{frame.y(med):.1f}" '
                        f'y2="{frame.y(med):.1f}" stroke="{c}" stroke-width="3"/>')
            for k, v in enumerate(vs):
                jitter = ((k % 5) - 2) * min(sub * 0.06, 3)
                body.append(f'<circle class="mark" cx="{cx + jitter:.1f}" cy="{frame.y(v):.1f}" r="3.2" '
                            f'fill="{c}" fill-opacity="0.75"><title>{escape(g)} · {escape(s)}: '
                            f'{fmt(v)}</title></circle>')
                marks += 1
            body.append(f'<text x="{cx:.1f}" y="{frame.t + frame.ph + 14}" text-anchor="middle" '
                        f'font-family="system-ui, sans-serif" font-size="9">{escape(s)}</text>')
    body += _group_labels(frame, groups, slot)
    body += legend(series, [color(i) for i in range(len(series))], frame.l, height - 6)
    return _svg(width, height, body, marks, title)


def bar_chart(title: str, groups: Sequence[str], series: Sequence[str],
              values: dict[tuple[str, str], float], ylabel: str, width: int = 860, height: int = 300) -> str:
    """Grouped bars: one bar per (group, series), value labels on top."""
    allv = list(values.values())
    frame = _Frame(width, height, max(allv) * 1.12 if allv else 1.0, ylabel)
    body = frame.axes(title)
    slot = frame.pw / max(len(groups), 1)
    sub = slot / max(len(series), 1)
    marks = 0
    for gi, g in enumerate(groups):
        for si, s in enumerate(series):
            if (g, s) not in values:
                continue
            v = values[(g, s)]
            x = frame.l + slot * gi + sub * si + sub * 0.12
            y = frame.y(v)
            bw = sub * 0.76
            body.append(f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                        f'height="{frame.t + frame.ph - y:.1f}" fill="{color(si)}"><title>{escape(g)} · '
                        f'{escape(s)}: {fmt(v)}</title></rect>')
            body.append(f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                        f'font-family="system-ui, sans-serif" font-size="9">{fmt(v)}</text>')
            marks += 1
    body += _group_labels(frame, groups, slot)
    body += legend(series, [color(i) for i in range(len(series))], frame.l, height - 6)
    return _svg(width, height, body, marks, title)


def stacked_bars(title: str, bars: Sequence[str], parts: Sequence[str],
                 values: dict[tuple[str, str], float], ylabel: str, width: int = 860,
                 height: int = 320) -> str:
    """One bar per label in ``bars``, stacked from ``parts`` (colour per part)."""
    totals = [sum(values.get((b, p), 0.0) for p in parts) for b in bars]
    frame = _Frame(width, height, max(totals) * 1.1 if totals else 1.0, ylabel, bottom=80, right=70)
    body = frame.axes(title)
    slot = frame.pw / max(len(bars), 1)
    marks = 0
    for bi, b in enumerate(bars):
        base = 0.0
        x = frame.l + slot * bi + slot * 0.15
        bw = slot * 0.7
        for pi, p in enumerate(parts):
            v = values.get((b, p), 0.0)
            if v <= 0:
                continue
            y0, y1 = frame.y(base), frame.y(base + v)
            body.append(f'<rect class="mark" x="{x:.1f}" y="{y1:.1f}" width="{bw:.1f}" '
                        f'height="{y0 - y1:.1f}" '
                        f'fill="{color(pi)}"><title>{escape(b)} · {escape(p)}: {fmt(v)}</title></rect>')
            base += v
            marks += 1
        cx = x + bw / 2
        body.append(f'<text transform="translate({cx:.1f} {frame.t + frame.ph + 8}) rotate(35)" '
                    f'font-family="system-ui, sans-serif" font-size="9">{escape(b)}</text>')
    body += legend(parts, [color(i) for i in range(len(parts))], frame.l, height - 6)
    return _svg(width, height, body, marks, title)


def heatmap(title: str, labels: Sequence[str], matrix: Sequence[Sequence[float]], cell: int = 34) -> str:
    """Square matrix of values in [0, 1] (e.g. Jaccard), white → dark blue, value printed in each cell."""
    n = len(labels)
    left, top = 44, 30
    width = left + n * cell + 10
    height = top + n * cell + 10
    body = [f'<text x="2" y="15" {_FONT} font-weight="bold">{escape(title)}</text>']
    marks = 0
    for i in range(n):
        body.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4:.1f}" text-anchor="end" '
                    f'{_FONT}>{escape(labels[i])}</text>')
        body.append(f'<text x="{left + i * cell + cell / 2:.1f}" y="{top - 4}" text-anchor="middle" '
                    f'{_FONT}>{escape(labels[i])}</text>')
        for j in range(n):
            v = max(0.0, min(1.0, matrix[i][j]))
            shade = int(255 - 200 * v)
            fill = f"rgb({shade},{int(255 - 150 * v)},255)"
            body.append(f'<rect class="mark" x="{left + j * cell}" y="{top + i * cell}" width="{cell - 1}" '
                        f'height="{cell - 1}" fill="{fill}"><title>{escape(labels[i])} vs '
                        f'{escape(labels[j])}: {v:.3f}</title></rect>')
            body.append(f'<text x="{left + j * cell + cell / 2:.1f}" y="{top + i * cell + cell / 2 + 3:.1f}" '
                        f'text-anchor="middle" font-family="system-ui, sans-serif" font-size="9" '
                        f'fill="{"#fff" if v > 0.6 else "#222"}">{v:.2f}</text>')
            marks += 1
    return _svg(max(width, 8 * len(title) + 10), height, body, marks, title)


def line_plot(title: str, lines: dict[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str,
              width: int = 540, height: int = 300) -> str:
    """Step lines through ``(x, y)`` points (e.g. a CDF: x = ms, y = fraction), one colour per line."""
    pts = [p for ps in lines.values() for p in ps]
    xmax = max((x for x, _ in pts), default=1.0)
    ymax = max((y for _, y in pts), default=1.0)
    frame = _Frame(width, height, ymax, ylabel, bottom=48)
    xt = nice_ticks(0.0, xmax if xmax > 0 else 1.0)
    sx = frame.pw / xt[-1]
    body = frame.axes(title)
    for t in xt:
        xx = frame.l + t * sx
        body.append(f'<text x="{xx:.1f}" y="{frame.t + frame.ph + 14}" text-anchor="middle" {_FONT}>'
                    f"{fmt(t)}</text>")
    body.append(f'<text x="{frame.l + frame.pw / 2:.1f}" y="{frame.t + frame.ph + 28}" text-anchor="middle" '
                f"{_FONT}>{escape(xlabel)}</text>")
    marks = 0
    for i, (name, ps) in enumerate(lines.items()):
        if not ps:
            continue
        d = [f"M{frame.l:.1f},{frame.y(0):.1f}"]
        for x, y in ps:
            d.append(f"H{frame.l + x * sx:.1f}V{frame.y(y):.1f}")
        body.append(f'<path class="mark" d="{"".join(d)}" fill="none" stroke="{color(i)}" stroke-width="1.5">'
                    f"<title>{escape(name)}</title></path>")
        marks += 1
    body += legend(list(lines), [color(i) for i in range(len(lines))], frame.l, height - 4)
    return _svg(width, height, body, marks, title)
