"""A recording directory (``docs/formats.md``) loaded into memory, or assembled from seed files.

Public API (stable; the viewer and the experiment runner use it):

* ``Recording``: ``path``, ``meta`` (``recording.json``), ``memmap`` (``Memmap``, empty when absent),
  ``trace`` (``Trace`` or ``None``), ``nmt`` (``NmtReport`` or ``None``), ``nmt_pid``, ``label``.
* ``Trace``: the ``trace.npz`` arrays (``t_ns, hva, file_off, gpa, flags, action, fault, service_ns``)
  and ``meta``; ``ACTION_NAMES`` maps action codes to names.
* ``load_recording(path) -> Recording``: a directory with ``recording.json`` and any of ``memmap.npz``
  (or seed ``memmap.txt``), ``trace.npz``, ``nmt.txt``. Missing pieces are ``None``/empty, malformed
  ones raise ``FormatError``.
* ``assemble_from_seed(memmap_txt, uffd_log, nmt_txt=None) -> Recording`` and
  ``save_recording(rec, dir)`` to write it as a native recording directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.memmap import Memmap, empty_memmap, load_memmap, save_memmap
from firecracer.analysis.nmt import NmtReport, parse_nmt
from firecracer.analysis.seedmemmap import parse_seed_memmap
from firecracer.errors import FormatError

RECORDING_FORMAT = "firecracer-recording"
TRACE_FORMAT = "firecracer-trace"

ACTION_LOAD, ACTION_ZERO, ACTION_PREFETCH, ACTION_AROUND, ACTION_EAGER = range(5)
ACTION_NAMES = ("load", "zero", "prefetch", "around", "eager")
FLAG_WRITE = 1
FLAG_FAULTING = 2

TRACE_ARRAYS: dict[str, type[np.generic]] = {
    "t_ns": np.uint64, "hva": np.uint64, "file_off": np.uint64, "gpa": np.uint64,
    "flags": np.uint8, "action": np.uint8, "fault": np.int32, "service_ns": np.uint32}


@dataclass
class Trace:
    """Pages served during one restore, in service order (``trace.npz``)."""

    t_ns: npt.NDArray[np.uint64]
    hva: npt.NDArray[np.uint64]
    file_off: npt.NDArray[np.uint64]
    gpa: npt.NDArray[np.uint64]
    flags: npt.NDArray[np.uint8]
    action: npt.NDArray[np.uint8]
    fault: npt.NDArray[np.int32]
    service_ns: npt.NDArray[np.uint32]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def page_size(self) -> int:
        """Bytes per row (``meta.page_size``, default 4096)."""
        return int(self.meta.get("page_size", 4096))

    def __len__(self) -> int:
        return int(self.gpa.shape[0])

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Name → array for every column."""
        return {k: getattr(self, k) for k in TRACE_ARRAYS}


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


def load_trace(path: str | Path) -> Trace:
    """Read ``trace.npz`` (validated like ``load_memmap``)."""
    p = Path(path)
    import zipfile

    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = {"meta", *TRACE_ARRAYS} - set(npz.files)
            if missing:
                raise FormatError(p, 0, f"not a firecracer trace: missing arrays {sorted(missing)}")
            a = np.asarray(npz["meta"])
            raw = a.tobytes().rstrip(b"\0") if a.dtype.kind == "S" else bytes(a.astype(np.uint8).reshape(-1))
            try:
                meta = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise FormatError(p, 0, f"meta is not UTF-8 JSON: {exc}") from exc
            if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
                raise FormatError(p, 0, f"meta.format must be {TRACE_FORMAT!r}")
            cols: dict[str, npt.NDArray[Any]] = {}
            for name, dtype in TRACE_ARRAYS.items():
                arr = npz[name]
                if arr.ndim != 1 or arr.dtype.kind not in "iu":
                    raise FormatError(p, 0, f"array {name} must be a 1-D integer array")
                cols[name] = arr.astype(dtype, copy=False)
    except FormatError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise FormatError(p, 0, f"cannot read trace: {exc}") from exc
    n = {len(v) for v in cols.values()}
    if len(n) != 1:
        raise FormatError(p, 0, "trace arrays differ in length")
    ps = meta.get("page_size", 4096)
    if not isinstance(ps, int) or ps <= 0 or ps & (ps - 1):
        raise FormatError(p, 0, f"meta.page_size must be a power of two, got {ps!r}")
    if cols["action"].size and int(cols["action"].max()) >= len(ACTION_NAMES):
        raise FormatError(p, 0, f"unknown action code {int(cols['action'].max())}")
    return Trace(**cols, meta=meta)


def save_trace(trace: Trace, path: str | Path) -> None:
    """Write ``trace.npz`` in the native format."""
    meta = {**trace.meta, "format": TRACE_FORMAT, "version": 1}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez_compressed(Path(path), meta=blob, **trace.arrays())  # type: ignore[arg-type]


def load_recording(path: str | Path) -> Recording:
    """Load a recording directory; see the module docstring for what it may contain."""
    d = Path(path)
    if not d.is_dir():
        raise FormatError(d, 0, "not a recording directory")
    meta: dict[str, Any] = {}
    rj = d / "recording.json"
    if rj.exists():
        try:
            meta = json.loads(rj.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(rj, 0, f"not JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise FormatError(rj, 0, "recording.json must hold a JSON object")
    if (d / "memmap.npz").exists():
        memmap = load_memmap(d / "memmap.npz")
    elif (d / "memmap.txt").exists():
        memmap = parse_seed_memmap(d / "memmap.txt")
    else:
        memmap = empty_memmap()
    trace = load_trace(d / "trace.npz") if (d / "trace.npz").exists() else None
    nmt = parse_nmt(d / "nmt.txt") if (d / "nmt.txt").exists() else None
    if not rj.exists() and memmap.n_pages == 0 and trace is None and nmt is None:
        raise FormatError(d, 0, "not a recording: no recording.json, memmap, trace or nmt.txt")
    return Recording(d, meta, memmap, trace, nmt)


def assemble_from_seed(memmap_txt: str | Path, uffd_log: str | Path | None,
                       nmt_txt: str | Path | None = None) -> Recording:
    """A recording from the seed's files: ``mem_mapping.sh`` output, uffd_handler log, jcmd NMT."""
    memmap = parse_seed_memmap(memmap_txt)
    trace = _seed_trace(Path(uffd_log), memmap) if uffd_log is not None else None
    nmt = parse_nmt(nmt_txt) if nmt_txt is not None else None
    meta: dict[str, Any] = {
        "format": RECORDING_FORMAT, "version": 1, "source": "seed-import",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "label": Path(memmap_txt).stem,
        "seed_files": {"memmap": str(memmap_txt), "uffd_log": str(uffd_log) if uffd_log else None,
                       "nmt": str(nmt_txt) if nmt_txt else None},
    }
    if nmt is not None and nmt.pid is not None:
        meta["jvm"] = {"pid": nmt.pid}
    return Recording(None, meta, memmap, trace, nmt)


def _seed_trace(path: Path, memmap: Memmap) -> Trace:
    """Import a seed uffd log through ``firecracer.uffd.trace`` (the one parser of that format)."""
    try:
        from firecracer.uffd import trace as uffd_trace  # type: ignore[attr-defined, unused-ignore]
    except ImportError as exc:
        raise FormatError(path, 0, "importing seed uffd logs needs firecracer.uffd.trace") from exc
    imported = uffd_trace.import_seed_log(path)
    return _as_trace(imported)


def _as_trace(obj: Any) -> Trace:
    if isinstance(obj, Trace):
        return obj
    cols = {k: np.asarray(getattr(obj, k)).astype(d, copy=False) for k, d in TRACE_ARRAYS.items()}
    return Trace(**cols, meta=dict(getattr(obj, "meta", {})))


def save_recording(rec: Recording, out: str | Path) -> Path:
    """Write ``rec`` as a native recording directory (recording.json, memmap.npz, trace.npz, nmt.txt)."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": RECORDING_FORMAT, "version": 1, **rec.meta}
    (d / "recording.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
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
