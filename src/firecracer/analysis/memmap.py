"""``memmap.npz``: who owns each guest-physical page (format in ``docs/formats.md``).

A ``Memmap`` holds the arrays exactly as the format names them: per owner section (``owner_*``), per
mapping (``map_*``) and per present page row (``page_*``; one row per (owner, page), so a physical page
mapped by two processes and the page cache has three rows). ``seedmemmap`` builds the same object from
the seed's ``= / v / p`` text.

Public API: ``Memmap`` (with ``owner_exe``, ``map_name``, ``page_size`` and helpers),
``load_memmap(path) -> Memmap`` (validated: dtypes, lengths, index bounds → ``FormatError``),
``save_memmap(memmap, path)``, owner pid constants ``PID_KERNEL``, ``PID_PAGECACHE``, ``PID_FREE``,
``decode_kpageflags(word) -> [names]``.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FormatError
from firecracer.formats import (
    ADDRESS_SPACE_PROCESS,
    PID_FREE,
    PID_KERNEL,
    PID_PAGECACHE,
    is_process_recording,
)
from firecracer.formats import MEMMAP_FORMAT as FORMAT
from firecracer.fsio import open_regular

__all__ = ["ADDRESS_SPACE_PROCESS", "FORMAT", "PID_FREE", "PID_KERNEL", "PID_PAGECACHE", "Memmap",
           "is_process_recording", "load_memmap", "save_memmap"]

#: name → dtype of every array member (besides ``meta``), grouped by the length they share.
OWNER_ARRAYS = {"owner_pid": np.int64}
MAP_ARRAYS = {"map_owner": np.int32, "map_start": np.uint64, "map_end": np.uint64,
              "map_offset": np.uint64, "map_perms": np.uint8}
PAGE_ARRAYS = {"page_map": np.int32, "page_owner": np.int32, "page_vaddr": np.uint64,
               "page_paddr": np.uint64, "page_pm": np.uint8, "page_kflags": np.uint64,
               "page_kcount": np.uint32}

PM_EXCLUSIVE = 1
PM_FILE = 2
PM_SOFT_DIRTY = 4
PERM_R, PERM_W, PERM_X, PERM_SHARED = 1, 2, 4, 8

#: kpageflags bits we use (``Documentation/admin-guide/mm/pagemap.rst``).
KPF_ANON = 12
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_THP = 22
KPF_MAPPEDTODISK = 34

#: ``/proc/kpageflags`` bit names (include/uapi/linux/kernel-page-flags.h, plus the kernel-internal
#: bits 32–41 the proc interface also reports).
KPF_NAMES = {
    0: "LOCKED", 1: "ERROR", 2: "REFERENCED", 3: "UPTODATE", 4: "DIRTY", 5: "LRU", 6: "ACTIVE", 7: "SLAB",
    8: "WRITEBACK", 9: "RECLAIM", 10: "BUDDY", 11: "MMAP", 12: "ANON", 13: "SWAPCACHE", 14: "SWAPBACKED",
    15: "COMPOUND_HEAD", 16: "COMPOUND_TAIL", 17: "HUGE", 18: "UNEVICTABLE", 19: "HWPOISON", 20: "NOPAGE",
    21: "KSM", 22: "THP", 23: "OFFLINE", 24: "ZERO_PAGE", 25: "IDLE", 26: "PGTABLE", 32: "RESERVED",
    33: "MLOCKED", 34: "MAPPEDTODISK", 35: "PRIVATE", 36: "PRIVATE_2", 37: "OWNER_PRIVATE", 38: "ARCH",
    39: "UNCACHED", 40: "SOFTDIRTY", 41: "ARCH_2",
}


def decode_kpageflags(word: int) -> list[str]:
    """Names of the bits set in a ``/proc/kpageflags`` word (unknown bits as ``BIT<n>``), low bit first."""
    return [KPF_NAMES.get(b, f"BIT{b}") for b in range(64) if (int(word) >> b) & 1]


@dataclass
class Memmap:
    """Guest-physical page owners. Arrays follow ``docs/formats.md``; ``meta`` is the JSON member."""

    owner_pid: npt.NDArray[np.int64]
    map_owner: npt.NDArray[np.int32]
    map_start: npt.NDArray[np.uint64]
    map_end: npt.NDArray[np.uint64]
    map_offset: npt.NDArray[np.uint64]
    map_perms: npt.NDArray[np.uint8]
    page_map: npt.NDArray[np.int32]
    page_owner: npt.NDArray[np.int32]
    page_vaddr: npt.NDArray[np.uint64]
    page_paddr: npt.NDArray[np.uint64]
    page_pm: npt.NDArray[np.uint8]
    page_kflags: npt.NDArray[np.uint64]
    page_kcount: npt.NDArray[np.uint32]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def page_size(self) -> int:
        """Bytes per page row (``meta.page_size``, default 4096)."""
        return int(self.meta.get("page_size", 4096))

    @property
    def owner_exe(self) -> list[str]:
        """Per owner section: executable path (``kernel``, ``pagecache``, ``free`` for pid ≤ 0)."""
        return list(self.meta.get("owner_exe", []))

    @property
    def map_name(self) -> list[str]:
        """Per mapping: path or special name (``""`` for anonymous)."""
        return list(self.meta.get("map_name", []))

    @property
    def n_pages(self) -> int:
        """Number of page rows (owner, page)."""
        return int(self.page_paddr.shape[0])

    def distinct_physical_pages(self) -> int:
        """Distinct ``page_paddr`` values: the original UffdVisualizer's "mappings" count."""
        return int(np.unique(self.page_paddr).shape[0])

    def owner_label(self, i: int) -> str:
        """``"<pid>: <basename(exe)>"`` as the seed's process tree labels it."""
        exe = self.owner_exe[i] if i < len(self.owner_exe) else ""
        return f"{int(self.owner_pid[i])}: {exe.rsplit('/', 1)[-1]}"

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Name → array for every array member (not ``meta``)."""
        return {k: getattr(self, k) for k in (*OWNER_ARRAYS, *MAP_ARRAYS, *PAGE_ARRAYS)}


def empty_memmap(meta: dict[str, Any] | None = None) -> Memmap:
    """A memmap with no owners (used when a recording has no memmap)."""
    arrs = {k: np.zeros(0, dtype=d) for k, d in {**OWNER_ARRAYS, **MAP_ARRAYS, **PAGE_ARRAYS}.items()}
    return Memmap(**arrs, meta=dict(meta or {"format": FORMAT, "version": 1, "page_size": 4096,
                                              "owner_exe": [], "map_name": []}))


def load_memmap(path: str | Path) -> Memmap:
    """Load and validate ``memmap.npz``; every defect is a ``FormatError`` naming the file."""
    p = Path(path)
    fh = os.fdopen(open_regular(p, "memmap"), "rb")
    try:
        with fh, np.load(fh, allow_pickle=False) as npz:
            names = set(npz.files)
            missing = {"meta", *OWNER_ARRAYS, *MAP_ARRAYS, *PAGE_ARRAYS} - names
            if missing:
                raise FormatError(p, 0, f"not a firecracer memmap: missing arrays {sorted(missing)}")
            meta = _meta(p, npz["meta"])
            arrs: dict[str, npt.NDArray[Any]] = {}
            for group in (OWNER_ARRAYS, MAP_ARRAYS, PAGE_ARRAYS):
                for name, dtype in group.items():
                    a = npz[name]
                    if a.ndim != 1:
                        raise FormatError(p, 0, f"array {name} must be 1-D, has shape {a.shape}")
                    if a.dtype != np.dtype(dtype):
                        if not np.can_cast(a.dtype, dtype, casting="same_kind") or a.dtype.kind not in "iu":
                            raise FormatError(p, 0, f"array {name} has dtype {a.dtype}, "
                                                    f"expected {np.dtype(dtype)}")
                        a = a.astype(dtype)
                    arrs[name] = a
    except FormatError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, struct.error,
            NotImplementedError, MemoryError, RuntimeError) as exc:  # zipfile: RuntimeError for 'encrypted'
        raise FormatError(p, 0, f"cannot read memmap: {exc}") from exc
    mm = Memmap(**arrs, meta=meta)
    validate(mm, p)
    return mm


def _meta(p: Path, arr: npt.NDArray[Any]) -> dict[str, Any]:
    try:
        a = np.asarray(arr)
        raw = a.tobytes().rstrip(b"\0") if a.dtype.kind == "S" else bytes(a.astype(np.uint8).reshape(-1))
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise FormatError(p, 0, f"meta is not UTF-8 JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise FormatError(p, 0, "meta must be a JSON object")
    if meta.get("format") != FORMAT:
        raise FormatError(p, 0, f"meta.format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != 1:
        raise FormatError(p, 0, f"unsupported memmap version {meta.get('version')!r}")
    ps = meta.get("page_size", 4096)
    if not isinstance(ps, int) or ps <= 0 or ps & (ps - 1):
        raise FormatError(p, 0, f"meta.page_size must be a power of two, got {ps!r}")
    return meta


def validate(mm: Memmap, path: str | Path = "<memmap>") -> None:
    """Check lengths and cross-references; ``FormatError`` on the first problem."""
    n_own, n_map, n_page = len(mm.owner_pid), len(mm.map_owner), len(mm.page_paddr)
    for name in MAP_ARRAYS:
        if len(getattr(mm, name)) != n_map:
            raise FormatError(path, 0, f"array {name} has {len(getattr(mm, name))} rows, map_owner {n_map}")
    for name in PAGE_ARRAYS:
        if len(getattr(mm, name)) != n_page:
            raise FormatError(path, 0, f"array {name} has {len(getattr(mm, name))} rows, "
                                       f"page_paddr {n_page}")
    exe, names = mm.meta.get("owner_exe", []), mm.meta.get("map_name", [])
    if not isinstance(exe, list) or len(exe) != n_own or not all(isinstance(e, str) for e in exe):
        raise FormatError(path, 0, f"meta.owner_exe must be {n_own} strings")
    if not isinstance(names, list) or len(names) != n_map or not all(isinstance(e, str) for e in names):
        raise FormatError(path, 0, f"meta.map_name must be {n_map} strings")
    if n_map and (mm.map_owner.min() < 0 or mm.map_owner.max() >= n_own):
        raise FormatError(path, 0, "map_owner points outside the owner arrays")
    if n_map and (mm.map_end < mm.map_start).any():
        bad = int(np.argmax(mm.map_end < mm.map_start))
        raise FormatError(path, 0, f"mapping {bad} ends before it starts")
    if n_page:
        if mm.page_owner.min() < 0 or mm.page_owner.max() >= n_own:
            raise FormatError(path, 0, "page_owner points outside the owner arrays")
        if mm.page_map.min() < -1 or mm.page_map.max() >= n_map:
            raise FormatError(path, 0, "page_map points outside the mapping arrays")
        has = mm.page_map >= 0
        if (mm.map_owner[mm.page_map[has]] != mm.page_owner[has]).any():
            raise FormatError(path, 0, "a page's mapping belongs to another owner than the page")
        ps = mm.page_size
        if ((mm.page_paddr % np.uint64(ps)) != 0).any():
            raise FormatError(path, 0, f"page_paddr not aligned to page_size {ps}")


def save_memmap(mm: Memmap, path: str | Path) -> None:
    """Write ``memmap.npz`` (compressed) with the ``meta`` member as UTF-8 JSON bytes."""
    meta = {"format": FORMAT, "version": 1, **mm.meta}
    meta["format"], meta["version"] = FORMAT, 1
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez_compressed(Path(path), meta=blob, **mm.arrays())  # type: ignore[arg-type]
