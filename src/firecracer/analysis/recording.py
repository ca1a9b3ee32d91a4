"""A recording directory (``docs/formats.md``) loaded into memory, or assembled from seed files.

Public API (stable; the viewer and the experiment runner use it):

* ``Recording``: ``path``, ``meta`` (``recording.json`` validated and normalized by
  ``firecracer.formats.RecordingFacts``: ``host`` always an object), ``memmap`` (``Memmap``,
  empty when absent), ``trace`` (``Trace`` or ``None``), ``nmt`` (``NmtReport`` or ``None``),
  ``nmt_pid``, ``label``.
* ``Trace`` (re-exported from ``firecracer.uffd.trace``, which owns trace files and the seed uffd log):
  columns ``t_ns, hva, file_off, gpa, flags, action, fault, service_ns`` and ``meta``.
* ``load_recording(path) -> Recording``: a directory with ``recording.json`` and any of ``memmap.npz``
  (or seed ``memmap.txt``), ``trace.npz`` (or a seed ``uffd.log``), ``nmt.txt``. Missing pieces are
  ``None``/empty, malformed ones raise ``FormatError``.
* ``assemble_from_seed(memmap_txt, uffd_log, nmt_txt=None) -> Recording`` and
  ``save_recording(rec, dir)`` to write it as a native recording directory.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firecracer.analysis.memmap import Memmap, empty_memmap, load_memmap, save_memmap
from firecracer.analysis.nmt import NmtReport, parse_nmt
from firecracer.analysis.seedmemmap import parse_seed_memmap
from firecracer.errors import FormatError
from firecracer.formats import RecordingFacts, now_iso
from firecracer.uffd.trace import Action, Trace, import_seed_log, save_trace
from firecracer.uffd.trace import load_trace as _load

__all__ = ["ACTION_NAMES", "Recording", "Trace", "assemble_from_seed", "load_recording", "load_trace",
           "save_recording"]

# Trace files belong to the uffd stage: one reader, one seed-log parser (firecracer.uffd.trace).
ACTION_NAMES = tuple(a.name.lower() for a in Action)


def load_trace(path: str | Path) -> Trace:
    """``firecracer.uffd.trace.load_trace`` (validated ``trace.npz``); any decoding failure of a damaged
    file (zlib, struct) also becomes a ``FormatError``."""
    try:
        return _load(path)
    except (zlib.error, struct.error, KeyError, NotImplementedError, MemoryError) as exc:
        raise FormatError(path, 0, f"cannot read trace: {exc}") from exc


@dataclass
class Recording:
    """Everything analysis needs from one recording."""

    path: Path | None
    meta: dict[str, Any]
    memmap: Memmap
    trace: Trace | None = None
    nmt: NmtReport | None = None

    @property
    def label(self) -> str:
        """Short name for tables: ``meta.label`` or the directory name."""
        lab = self.meta.get("label")
        if isinstance(lab, str) and lab:
            return lab
        return self.path.name if self.path else "recording"

    @property
    def nmt_pid(self) -> int | None:
        """The JVM whose NMT report we have: the ``PID:`` line of nmt.txt, else ``meta.jvm.pid``."""
        if self.nmt is not None and self.nmt.pid is not None:
            return self.nmt.pid
        jvm = self.meta.get("jvm")
        if isinstance(jvm, dict) and isinstance(jvm.get("pid"), int):
            return int(jvm["pid"])
        return None


def load_recording(path: str | Path) -> Recording:
    """Load a recording directory; see the module docstring for what it may contain."""
    d = Path(path)
    if not d.is_dir():
        raise FormatError(d, 0, "not a recording directory")
    meta: dict[str, Any] = {}
    rj = d / "recording.json"
    if rj.exists() or rj.is_symlink():
        meta = RecordingFacts.read(rj).to_dict()
    if (d / "memmap.npz").exists():
        memmap = load_memmap(d / "memmap.npz")
    elif (d / "memmap.txt").exists():
        memmap = parse_seed_memmap(d / "memmap.txt")
    else:
        memmap = empty_memmap()
    trace = None
    if (d / "trace.npz").exists():
        trace = load_trace(d / "trace.npz")
    elif (d / "uffd.log").exists():                 # a seed uffd_handler log dropped into the directory
        trace = import_seed_log(d / "uffd.log")
    nmt = parse_nmt(d / "nmt.txt") if (d / "nmt.txt").exists() else None
    if not rj.exists() and memmap.n_pages == 0 and trace is None and nmt is None:
        raise FormatError(d, 0, "not a recording: no recording.json, memmap, trace or nmt.txt")
    return Recording(d, meta, memmap, trace, nmt)


def assemble_from_seed(memmap_txt: str | Path, uffd_log: str | Path | None,
                       nmt_txt: str | Path | None = None) -> Recording:
    """A recording from the seed's files: ``mem_mapping.sh`` output, uffd_handler log, jcmd NMT."""
    memmap = parse_seed_memmap(memmap_txt)
    trace = import_seed_log(uffd_log) if uffd_log is not None else None
    nmt = parse_nmt(nmt_txt) if nmt_txt is not None else None
    meta: dict[str, Any] = {
        "source": "seed-import", "created": now_iso(), "label": Path(memmap_txt).stem,
        "seed_files": {"memmap": str(memmap_txt), "uffd_log": str(uffd_log) if uffd_log else None,
                       "nmt": str(nmt_txt) if nmt_txt else None},
    }
    if nmt is not None and nmt.pid is not None:
        meta["jvm"] = {"pid": nmt.pid}
    return Recording(None, meta, memmap, trace, nmt)


def save_recording(rec: Recording, out: str | Path) -> Path:
    """Write ``rec`` as a native recording directory (recording.json, memmap.npz, trace.npz, nmt.txt)."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    RecordingFacts.from_dict(rec.meta, d / "recording.json").write(d / "recording.json")
    save_memmap(rec.memmap, d / "memmap.npz")
    if rec.trace is not None:
        save_trace(rec.trace, d / "trace.npz")
    seed = rec.meta.get("seed_files")
    nmt_src = seed.get("nmt") if isinstance(seed, dict) else None
    if rec.path is not None and (rec.path / "nmt.txt").exists():
        nmt_src = str(rec.path / "nmt.txt")
    if nmt_src and Path(nmt_src).resolve() != (d / "nmt.txt").resolve():
        shutil.copyfile(nmt_src, d / "nmt.txt")
    return d
