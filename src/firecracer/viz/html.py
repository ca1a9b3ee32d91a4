"""One self-contained HTML file: the template, its CSS and JS, and the packed recordings, all inlined.

No CDN, no network: the page works from ``file://``, a mail attachment, or ``--serve``. Each recording's
arrays travel as one base64 zlib blob in a ``<script type="application/octet-stream">`` element (never
parsed as JS), its JSON meta in a ``<script type="application/json">`` element.

Public API: ``ViewOptions``, ``build_html(packs, options, compare=None) -> str``,
``build_report(recordings, options, labels) -> Report`` (attribute + pack + page), ``save_html``,
``write_report(recordings, out, options, labels) -> Path``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firecracer import __version__
from firecracer.analysis import attribute, compare
from firecracer.errors import FirecracerError
from firecracer.fsio import atomic_write
from firecracer.viz.pack import Packed, pack
from firecracer.viz.png import PALETTE

if TYPE_CHECKING:
    from firecracer.analysis.join import Attribution
    from firecracer.analysis.recording import Recording


@dataclass
class ViewOptions:
    """What the seed's system properties set, plus ours.

    ``scale``: pixels per page at first (seed ``uffdVisualizer.scale``, 2); ``width``: pages per row
    (``uffdVisualizer.width``, 512); ``phys_bytes``: physical memory shown (``uffdVisualizer.physicalMemory``;
    default: the recording's guest RAM); ``colors``: name → ``#rrggbb`` overrides (names in viewer.js
    ``COL``); ``select``: tree key selected at load; ``position``: ``"end"`` (default) opens with the whole
    restore drawn (Play animates it from the start), ``"start"`` with no restored page drawn yet.
    """

    scale: float = 2
    width: int = 512
    phys_bytes: int | None = None
    title: str | None = None
    select: str | None = None
    position: str = "end"
    colors: dict[str, str] = field(default_factory=dict)


def _asset(name: str) -> str:
    return resources.files("firecracer.viz").joinpath("static", name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can end it early)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def build_html(packs: list[Packed], options: ViewOptions | None = None,
               compare: list[dict[str, Any]] | None = None) -> str:
    """The viewer page for one recording, or two side by side (``compare`` = comparison tables)."""
    if not 1 <= len(packs) <= 2:
        raise ValueError("the viewer shows one recording, or two to compare")
    opts = options or ViewOptions()
    o = {k: v for k, v in asdict(opts).items() if v not in (None, {})}
    o["colors"] = {**PALETTE, **opts.colors}      # one palette for the page and the PNG export
    if compare:
        o["compare"] = compare
    title = opts.title or "firecracer: " + " vs ".join(str(p.meta["label"]) for p in packs)
    blobs = "\n".join(
        f'<script type="application/octet-stream" id="fc-blob-{i}-{k}">'
        f'{base64.b64encode(b).decode("ascii")}</script>'
        for i, p in enumerate(packs) for k, b in enumerate(p.blobs))
    html = _asset("viewer.html")
    # fixed placeholders, replaced once each, data last so no user text is ever re-scanned
    html = html.replace("/*CSS*/", _asset("viewer.css"), 1).replace("/*JS*/", _asset("viewer.js"), 1)
    html = html.replace("__VERSION__", __version__, 1)
    html = html.replace("__TITLE__", title.replace("&", "&amp;").replace("<", "&lt;"), 1)
    html = html.replace("__OPTS__", _script_json(o), 1)
    head, tail = html.split("__META__", 1)
    head2, tail2 = tail.split("__BLOBS__", 1)
    return "".join((head, _script_json([p.meta for p in packs]), head2, blobs, tail2))


@dataclass
class Report:
    """A built page and what went into it (``atts`` for PNG export, ``packs[i].meta["totals"]``)."""

    html: str
    packs: list[Packed]
    atts: list[Attribution]


def build_report(recordings: list[Recording], options: ViewOptions | None = None,
                 labels: list[str | None] | None = None) -> Report:
    """Attribute each recording (``firecracer.analysis``), pack it, and build the page."""
    atts = [attribute(r) for r in recordings]
    labs = labels or [None] * len(atts)
    packs = [pack(a, lab) for a, lab in zip(atts, labs, strict=True)]
    cmp = None
    if len(atts) == 2:
        cmp = [{"title": t.title, "columns": t.columns, "rows": t.rows}
               for t in compare(atts[0], atts[1]).values()]
    return Report(build_html(packs, options, cmp), packs, atts)


def save_html(html: str, out: str | Path) -> Path:
    """Write the page atomically (a reader never sees half a file; a full disk leaves no temporary file).

    :raises FirecracerError: the directory cannot be made or the file cannot be written (one line).
    """
    p = Path(out)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FirecracerError(f"{p}: cannot write the report there ({exc.strerror or exc})") from None
    return atomic_write(p, html, "report")


def write_report(recordings: list[Recording], out: str | Path, options: ViewOptions | None = None,
                 labels: list[str | None] | None = None) -> Path:
    """``build_report`` and write the HTML file ``out``; returns its path."""
    return save_html(build_report(recordings, options, labels).html, out)
