"""Restore traces: one row per page the page server installed, in service order.

The native format is ``trace.npz`` exactly as ``docs/formats.md`` specifies (columns ``t_ns``, ``hva``,
``file_off``, ``gpa``, ``flags``, ``action``, ``fault``, ``service_ns`` and a JSON ``meta`` member).
Other stages read it with :func:`load_trace`, which validates every column and returns a :class:`Trace`.

The seed's text log (``tools/uffd`` in fireCRaCer) is an import/export format:

* old (what the original UffdVisualizer parses, so :func:`export_seed_log` writes it)::

    UFFD_EVENT_PAGEFAULT (r): 0x00007fffb3cc0000 0x00007fffb3cc0000  Loading: 0x0000000003cc1000 - \
0x0000000003cc2000

* new (since seed commit 4429647, a decimal thread id after the colon, one space before the action)::

    UFFD_EVENT_PAGEFAULT (w): 0 0x00007fffb3cc0000 0x00007fffb3cc0000 Zeroing: 0x0000000003cc1000 - \
0x0000000003cc2000

(each one line; split here only for width)

:func:`import_seed_log` accepts both (and ``UFFD_EVENT_REMOVE: start - end`` lines, kept in ``meta``).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FormatError
from firecracer.formats import TRACE_FORMAT as FORMAT
from firecracer.fsio import atomic_output, open_regular
from firecracer.ramlayout import AddressError, Layout

VERSION = 1

#: ``flags`` bit 0: the fault was a write (``UFFD_PAGEFAULT_FLAG_WRITE``).
FLAG_WRITE = 1
#: ``flags`` bit 1: this page is the faulting page itself (not a neighbour, prefetch or eager page).
FLAG_FAULTING = 2
#: ``flags`` bit 2 (extension, compatible with version 1): the page was zero-filled (a hole in the
#: memory file, or removed by the balloon), i.e. installed with ``UFFDIO_ZEROPAGE`` — this is how
#: around/prefetch/eager rows say "zero" since their ``action`` says why the page was installed.
FLAG_ZERO = 4


class Action(IntEnum):
    """Why (and for faults, how) a page was installed: the ``action`` column."""

    LOAD = 0  #: UFFDIO_COPY of the faulting page
    ZERO = 1  #: UFFDIO_ZEROPAGE of the faulting page
    PREFETCH = 2  #: installed from a recorded working set
    AROUND = 3  #: fault-around neighbour of a faulting page
    EAGER = 4  #: installed by the eager strategy (all of memory)


#: Column name → dtype, in the order of ``docs/formats.md``.
COLUMNS: dict[str, np.dtype[Any]] = {
    "t_ns": np.dtype(np.uint64),
    "hva": np.dtype(np.uint64),
    "file_off": np.dtype(np.uint64),
    "gpa": np.dtype(np.uint64),
    "flags": np.dtype(np.uint8),
    "action": np.dtype(np.uint8),
    "fault": np.dtype(np.int32),
    "service_ns": np.dtype(np.uint32),
}


@dataclass(frozen=True)
class Trace:
    """A restore trace: equal-length numpy columns (see ``COLUMNS``) plus the ``meta`` dict.

    ``meta`` holds at least ``format``, ``version``, ``page_size``, ``strategy`` and ``regions``
    (the handshake's ``base_host_virt_addr``/``size``/``offset``/``page_size``); see docs/formats.md.
    """

    t_ns: npt.NDArray[np.uint64]
    hva: npt.NDArray[np.uint64]
    file_off: npt.NDArray[np.uint64]
    gpa: npt.NDArray[np.uint64]
    flags: npt.NDArray[np.uint8]
    action: npt.NDArray[np.uint8]
    fault: npt.NDArray[np.int32]
    service_ns: npt.NDArray[np.uint32]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    @property
    def page_size(self) -> int:
        """Bytes per row (4096, or 2 MiB for hugetlbfs-backed guests)."""
        return int(self.meta.get("page_size", 4096))

    @property
    def strategy(self) -> str:
        """The strategy that served this restore (``ondemand``, ``fault-around:16`` …)."""
        return str(self.meta.get("strategy", ""))

    @property
    def regions(self) -> list[dict[str, int]]:
        """The handshake's regions (``base_host_virt_addr``, ``size``, ``offset``, ``page_size``)."""
        return list(self.meta.get("regions", []))

    def columns(self) -> dict[str, np.ndarray[Any, Any]]:
        """The columns by name, in format order."""
        return {name: getattr(self, name) for name in COLUMNS}

    def is_zero(self) -> npt.NDArray[np.bool_]:
        """Rows installed as zero pages (action ZERO, or the FLAG_ZERO extension bit)."""
        zero: npt.NDArray[np.bool_] = (self.action == Action.ZERO) | ((self.flags & FLAG_ZERO) != 0)
        return zero

    def working_set(self) -> npt.NDArray[np.uint64]:
        """Memory-file offsets of the pages the guest faulted on, unique, in first-fault order.

        These are the rows with ``FLAG_FAULTING`` (the pages a REAP-style prefetch must install);
        around/prefetch/eager rows are not evidence that the guest needed the page.
        """
        offs = self.file_off[(self.flags & FLAG_FAULTING) != 0]
        _, first = np.unique(offs, return_index=True)
        ws: npt.NDArray[np.uint64] = offs[np.sort(first)]
        return ws

    def action_counts(self) -> dict[str, int]:
        """Rows per action name (``load``, ``zero``, ``prefetch``, ``around``, ``eager``)."""
        counts = np.bincount(self.action, minlength=len(Action))
        return {a.name.lower(): int(counts[a.value]) for a in Action}


def empty_columns() -> dict[str, np.ndarray[Any, Any]]:
    """Zero-length columns of the right dtypes."""
    return {name: np.zeros(0, dtype=dt) for name, dt in COLUMNS.items()}


def make_trace(columns: dict[str, Any], meta: dict[str, Any]) -> Trace:
    """Build a ``Trace`` from column arrays (cast to the format dtypes) and meta (format/version added)."""
    cols: dict[str, Any] = {}
    n: int | None = None
    for name, dt in COLUMNS.items():
        arr = np.ascontiguousarray(np.asarray(columns[name]).astype(dt, copy=False))
        if arr.ndim != 1:
            raise ValueError(f"trace column {name} must be 1-D, got shape {arr.shape}")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"trace column {name} has {arr.shape[0]} rows, expected {n}")
        cols[name] = arr
    full_meta = {"format": FORMAT, "version": VERSION, "page_size": 4096, **meta}
    full_meta["format"] = FORMAT
    full_meta["version"] = VERSION
    return Trace(meta=full_meta, **cols)


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as an (uncompressed) ``.npz`` at ``path``; returns the path.

    Written to a temporary name then renamed, so a reader never sees half a file.
    """
    path = Path(path)
    meta = np.frombuffer(json.dumps(trace.meta, sort_keys=True).encode(), dtype=np.uint8).copy()
    arrays: dict[str, Any] = {**trace.columns(), "meta": meta}
    with atomic_output(path, "trace") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


#: Uncompressed bytes a trace may expand to, at least (a 16 GiB guest restored eagerly is ~170 MB).
_TRACE_EXPAND_MIN = 1 << 30


def load_trace(path: str | Path) -> Trace:
    """Read and validate a ``trace.npz``.

    Raises ``FormatError(path, 0, why)`` if it is not a regular file or not a zip/npz, would expand to
    far more than its size (a zip bomb), lacks ``meta`` or a column, has the wrong ``format``/``version``,
    a column of the wrong kind, columns of different lengths, or addresses that are not page-aligned or
    lie outside the guest's memory (see :func:`validate_addresses`).
    """
    path = Path(path)
    fd = open_regular(path, "trace")
    try:
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        with fh, np.load(fh, allow_pickle=False) as npz:
            limit = max(_TRACE_EXPAND_MIN, 8 * os.fstat(fh.fileno()).st_size)
            expands = sum(i.file_size for i in npz.zip.infolist())
            if expands > limit:
                raise FormatError(path, 0, f"expands to {expands:,} bytes, beyond the {limit:,} a trace of "
                                           "this size may hold")
            names = set(npz.files)
            if "meta" not in names:
                raise FormatError(path, 0, "not a firecracer trace: no 'meta' member")
            try:
                meta = json.loads(bytes(npz["meta"].astype(np.uint8).ravel()).decode())
            except (ValueError, UnicodeDecodeError) as exc:
                raise FormatError(path, 0, f"'meta' is not UTF-8 JSON: {exc}") from None
            if not isinstance(meta, dict):
                raise FormatError(path, 0, "'meta' must be a JSON object")
            if meta.get("format") != FORMAT:
                raise FormatError(path, 0, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            if meta.get("version") != VERSION:
                raise FormatError(path, 0, f"unsupported trace version {meta.get('version')!r} "
                                  f"(this firecracer reads {VERSION})")
            cols: dict[str, Any] = {}
            for name, dt in COLUMNS.items():
                if name not in names:
                    raise FormatError(path, 0, f"missing column {name!r}")
                arr = npz[name]
                if arr.ndim != 1 or arr.dtype.kind not in "iu":
                    raise FormatError(path, 0, f"column {name!r} must be a 1-D integer array, "
                                      f"got {arr.dtype} {arr.shape}")
                cols[name] = arr.astype(dt, copy=False)
    except FormatError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, struct.error,
            NotImplementedError, MemoryError, RuntimeError) as exc:  # zipfile: RuntimeError for 'encrypted'
        raise FormatError(path, 0, f"cannot read trace: {exc}") from None
    lengths = {name: arr.shape[0] for name, arr in cols.items()}
    if len(set(lengths.values())) > 1:
        raise FormatError(path, 0, f"columns differ in length: {lengths}")
    page_size = meta.get("page_size", 4096)
    if not isinstance(page_size, int) or page_size <= 0 or page_size & (page_size - 1):
        raise FormatError(path, 0, f"meta.page_size must be a power of two, got {page_size!r}")
    trace = Trace(meta=meta, **cols)
    why = validate_addresses(trace)
    if why:
        raise FormatError(path, 0, why)
    return trace


def validate_addresses(trace: Trace) -> str | None:
    """Why the trace's addresses cannot be right, or None.

    Every ``hva``/``file_off``/``gpa`` is a multiple of the page size; with ``meta.regions`` (the
    handshake) every ``file_off`` lies inside the memory file they tile, and for Firecracker traces every
    ``gpa`` is the guest-physical address of its ``file_off`` (:func:`gpa_of`).
    """
    n = len(trace)
    if n == 0:
        return None
    ps = np.uint64(trace.page_size)
    for name in ("hva", "file_off", "gpa"):
        col: npt.NDArray[np.uint64] = getattr(trace, name)
        bad = np.flatnonzero(col % ps)
        if bad.size:
            return (f"{bad.size:,} rows have a {name} that is not aligned to the page size {int(ps)} "
                    f"(first: row {int(bad[0])}, {name}={int(col[bad[0]]):#x})")
    regions = trace.meta.get("regions")
    sizes = [r.get("size") for r in regions] if isinstance(regions, list) and regions else []
    if sizes and all(isinstance(s, int) and s > 0 for s in sizes):
        mem_bytes = int(sum(sizes))
        bad = np.flatnonzero(trace.file_off >= np.uint64(mem_bytes))
        if bad.size:
            return (f"{bad.size:,} rows have a file_off beyond the {mem_bytes:,}-byte guest memory of its "
                    f"regions (first: row {int(bad[0])}, file_off={int(trace.file_off[bad[0]]):#x})")
        if trace.meta.get("vmm") == "firecracker":
            try:
                want = gpa_of(trace.file_off, mem_bytes)
            except AddressError as exc:
                return f"cannot place file_off in guest memory: {exc}"
            bad = np.flatnonzero(want != trace.gpa)
            if bad.size:
                return (f"{bad.size:,} rows have a gpa that is not the guest-physical address of their "
                        f"file_off (first: row {int(bad[0])}, gpa={int(trace.gpa[bad[0]]):#x}, expected "
                        f"{int(want[bad[0]]):#x})")
    return None


# ---------------------------------------------------------------------------------------------------
# gpa

def gpa_of(file_off: npt.NDArray[np.uint64], mem_bytes: int, arch: str = "x86_64") -> npt.NDArray[np.uint64]:
    """Guest-physical addresses of memory-file offsets (``firecracer.ramlayout`` owns the layout).

    Offsets past the end of RAM (a memory file larger than the handshake said) map to themselves
    rather than failing a whole trace.
    """
    if file_off.size == 0 or mem_bytes <= 0:
        return file_off.astype(np.uint64, copy=True)
    layout = Layout.for_guest(mem_bytes, arch)
    inside = file_off < np.uint64(mem_bytes)
    out = file_off.astype(np.uint64, copy=True)
    if inside.any():
        out[inside] = layout.file_off_to_gpa(file_off[inside])
    return out


# ---------------------------------------------------------------------------------------------------
# Seed log export / import

_SEED_LINE = re.compile(
    r"^UFFD_EVENT_PAGEFAULT \((?P<rw>[rw])\):\s+(?:(?P<tid>\d+)\s+)?"
    r"(?P<addr>0x[0-9a-fA-F]+)\s+(?P<page>0x[0-9a-fA-F]+)\s+(?P<act>Loading|Zeroing):\s+"
    r"(?P<start>0x[0-9a-fA-F]+)\s+-\s+(?P<end>0x[0-9a-fA-F]+)\s*$")
_SEED_REMOVE = re.compile(r"^UFFD_EVENT_REMOVE:\s+(0x[0-9a-fA-F]+)\s+-\s+(0x[0-9a-fA-F]+)\s*$")
_SEED_REGION = re.compile(
    r"GuestRegionUffdMapping\s*\{\s*base_host_virt_addr:\s*(\d+),\s*size:\s*(\d+),\s*offset:\s*(\d+)")


def seed_log_lines(trace: Trace, *, with_tid: bool = False, address: str = "gpa") -> Iterable[str]:
    """The trace as seed log lines (no newline), one per row, then the REMOVE events.

    ``with_tid=False`` writes the old format the original UffdVisualizer parses; ``True`` the seed's
    current one (tid 0, as Firecracker never requests thread ids). ``address`` picks the guest range
    column: ``gpa`` (default; what the visualizer compares with memmap physical addresses) or
    ``file_off`` (what the seed's handler printed; identical below 3 GiB).
    """
    if address not in ("gpa", "file_off"):
        raise ValueError(f"address must be 'gpa' or 'file_off', got {address!r}")
    ps = trace.page_size
    guest = trace.gpa if address == "gpa" else trace.file_off
    zero = trace.is_zero()
    write = (trace.flags & FLAG_WRITE) != 0
    sep = " 0 " if with_tid else " "
    gap = " " if with_tid else "  "
    for hva, g, z, w in zip(trace.hva.tolist(), guest.tolist(), zero.tolist(), write.tolist(), strict=True):
        act = "Zeroing" if z else "Loading"
        yield (f"UFFD_EVENT_PAGEFAULT ({'w' if w else 'r'}):{sep}0x{hva:016x} 0x{hva:016x}{gap}"
               f"{act}: 0x{g:016x} - 0x{g + ps:016x}")
    for rem in trace.meta.get("removes", []):
        yield f"UFFD_EVENT_REMOVE: 0x{int(rem['start']):016x} - 0x{int(rem['end']):016x}"


def export_seed_log(trace: Trace, path: str | Path, *, with_tid: bool = False,
                    address: str = "gpa") -> Path:
    """Write the trace in the seed's log format (old format by default, see :func:`seed_log_lines`)."""
    path = Path(path)
    with atomic_output(path, "seed log") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for line in seed_log_lines(trace, with_tid=with_tid, address=address):
            fh.write(line)
            fh.write("\n")
    return path


def parse_seed_log(lines: Iterable[str], path: str | Path = "<seed log>", *, page_size: int = 4096,
                   mem_bytes: int | None = None, address: str = "file_off") -> Trace:
    """Parse seed log lines (both formats, mixed is fine) into a ``Trace``.

    Each PAGEFAULT line becomes one faulting row (action load or zero); ``t_ns`` and ``service_ns``
    are 0 (the seed logged no times), ``fault`` is the line's event index. The guest range is taken
    as ``address`` (``file_off``: what the seed printed; ``gpa``: what :func:`export_seed_log`
    writes by default); the other column is derived with ``firecracer.ramlayout`` for a guest of
    ``mem_bytes`` (default: the regions' total if the log has them, else the highest address seen).
    Unrelated lines (``Mapping memory file …``, ``Segment …``, ``Connected to PID …``) are skipped;
    a line that starts like an event but does not parse is a ``FormatError`` naming the line.
    """
    if address not in ("gpa", "file_off"):
        raise ValueError(f"address must be 'gpa' or 'file_off', got {address!r}")
    hva: list[int] = []
    guest: list[int] = []
    flags: list[int] = []
    action: list[int] = []
    removes: list[dict[str, int]] = []
    regions: list[dict[str, int]] = []
    with_tid = without_tid = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if line.startswith("UFFD_EVENT_PAGEFAULT"):
            m = _SEED_LINE.match(line)
            if m is None:
                raise FormatError(path, lineno, "malformed UFFD_EVENT_PAGEFAULT line: "
                                  f"{line[:120]!r}")
            if m["tid"] is None:
                without_tid += 1
            else:
                with_tid += 1
            start, end = int(m["start"], 16), int(m["end"], 16)
            if end <= start:
                raise FormatError(path, lineno, f"empty guest range {m['start']} - {m['end']}")
            if start % page_size or int(m["page"], 16) % page_size:
                raise FormatError(path, lineno, f"address not aligned to the page size {page_size}: "
                                  f"{line[:120]!r}")
            hva.append(int(m["page"], 16))
            guest.append(start)
            zero = m["act"] == "Zeroing"
            flags.append(FLAG_FAULTING | (FLAG_WRITE if m["rw"] == "w" else 0) | (FLAG_ZERO if zero else 0))
            action.append(Action.ZERO if zero else Action.LOAD)
        elif line.startswith("UFFD_EVENT_REMOVE"):
            r = _SEED_REMOVE.match(line)
            if r is None:
                raise FormatError(path, lineno, f"malformed UFFD_EVENT_REMOVE line: {line[:120]!r}")
            removes.append({"t_ns": 0, "start": int(r[1], 16), "end": int(r[2], 16)})
        elif line.startswith("UFFD_EVENT"):
            continue  # other events: the seed panicked on them; nothing to keep
        else:
            g = _SEED_REGION.search(line)
            if g is not None:
                regions.append({"base_host_virt_addr": int(g[1]), "size": int(g[2]),
                                "offset": int(g[3]), "page_size": page_size})
    n = len(hva)
    if not n and not removes and not regions and not (with_tid or without_tid):
        raise FormatError(path, 0, "no UFFD_EVENT line and no GuestRegionUffdMapping line: not a seed "
                                   "uffd_handler log")
    g_arr = np.array(guest, dtype=np.uint64)
    if mem_bytes is None:
        mem_bytes = sum(r["size"] for r in regions) if regions else (int(g_arr.max()) + page_size if n else 0)
    if address == "file_off":
        file_off = g_arr
        gpa = gpa_of(g_arr, mem_bytes)
    else:
        gpa = g_arr
        try:
            file_off = Layout.for_guest(mem_bytes).gpa_to_file_off(g_arr) if n and mem_bytes else g_arr
        except AddressError as exc:
            raise FormatError(path, 0, f"guest address outside RAM: {exc}") from None
    meta = {"page_size": page_size, "strategy": "seed", "regions": regions, "vmm": "firecracker",
            "source": "seed-import", "seed_format": ("with-tid" if with_tid and not without_tid else
                                                     "old" if without_tid and not with_tid else
                                                     "mixed" if n else "empty"),
            "faults": n, "events": {"pagefault": n, "remove": len(removes)}, "removes": removes,
            "timed": False}
    cols = {"t_ns": np.zeros(n), "hva": np.array(hva, dtype=np.uint64), "file_off": file_off,
            "gpa": gpa, "flags": np.array(flags, dtype=np.uint8), "action": np.array(action, dtype=np.uint8),
            "fault": np.arange(n), "service_ns": np.zeros(n)}
    return make_trace(cols, meta)


def import_seed_log(path: str | Path, *, page_size: int = 4096, mem_bytes: int | None = None,
                    address: str = "file_off") -> Trace:
    """Read a seed ``uffd_handler`` log file (either format); see :func:`parse_seed_log`.

    Streams the file (a regular file only) and refuses binary data and lines longer than any the seed
    writes, so garbage of any size is one :class:`FormatError`, not a hang or an empty trace.
    """
    path = Path(path)
    return parse_seed_log(_bounded_lines(path), path, page_size=page_size, mem_bytes=mem_bytes,
                          address=address)


_MAX_SEED_LINE = 4096


def _bounded_lines(path: Path) -> Iterable[str]:
    """Text lines of a regular file, read in 1 MiB chunks; binary data or an endless line is an error."""
    fd = open_regular(path, "seed uffd log")
    lineno = 0
    pending = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError as exc:
                raise FormatError(path, 0, f"cannot read ({exc.strerror or exc})") from None
            if not chunk:
                break
            if b"\0" in chunk:
                raise FormatError(path, lineno + 1 + chunk[:chunk.index(b"\0")].count(b"\n"),
                                  "binary data (NUL bytes): not a seed uffd_handler log")
            parts = (pending + chunk).split(b"\n")
            pending = parts.pop()
            for raw in parts:
                lineno += 1
                yield _decode_line(raw, path, lineno)
            if len(pending) > _MAX_SEED_LINE:
                raise FormatError(path, lineno + 1, f"line longer than {_MAX_SEED_LINE} bytes: not a seed "
                                                    "uffd_handler log")
        if pending:
            yield _decode_line(pending, path, lineno + 1)
    finally:
        os.close(fd)


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    if len(raw) > _MAX_SEED_LINE:
        raise FormatError(path, lineno, f"line longer than {_MAX_SEED_LINE} bytes: not a seed "
                                        "uffd_handler log")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(path, lineno, "not UTF-8 text: not a seed uffd_handler log") from None

