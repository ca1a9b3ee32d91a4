"""Collect who owns each physical page: processes, kernel segments, page cache, free pages.

Builds the columns of ``memmap.npz`` (docs/formats.md, ``format: "firecracer-memmap"``) with the
standard library only, so the same code runs in the guest (no numpy there) and on any Linux host as
root. Replaces the seed's ``mem_mapping.sh`` + ``virt2phys`` (SEED.md §4) and fixes two of its
defects on the way: mapping names keep their spaces, and the page-cache scan covers every PFN the
kernel describes rather than the first ``_SC_PHYS_PAGES``.
"""

from __future__ import annotations

import array
import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.formats import MEMMAP_FORMAT as FORMAT
from firecracer.formats import PID_FREE, PID_KERNEL, PID_PAGECACHE
from firecracer.guest import npyio, procfs
from firecracer.guest.procfs import KPF, PAGE_SHIFT, PAGE_SIZE, PM_PFN_MASK

__all__ = ["FORMAT", "PID_FREE", "PID_KERNEL", "PID_PAGECACHE", "SECTIONS", "CollectError", "Memmap",
           "NoSuchProcess", "collect", "restrict"]

VERSION = 1

SECTIONS = ("processes", "kernel", "pagecache", "free")


class CollectError(Exception):
    """Collection cannot proceed (not root, /proc unreadable …); the message says which file and why."""


class NoSuchProcess(CollectError):
    """None of the processes asked for exists: ``pid N: no such process`` (``pids`` lists them)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        which = f"pid {pids[0]}" if len(pids) == 1 else f"pids {', '.join(map(str, pids))}"
        super().__init__(f"{which}: no such process")


def check_pids(pids: list[int] | None) -> None:
    """Refuse a walk of processes none of which exists (the user named them: a recording of the kernel
    and free pages alone would answer another question). Some missing among several is a note later.

    :raises NoSuchProcess: every pid in ``pids`` is missing.
    """
    if pids and not any(os.path.exists(f"/proc/{p}") for p in pids if p > 0):
        raise NoSuchProcess(pids)


@dataclass
class Memmap:
    """The memmap columns as ``array.array``s plus the per-owner/per-mapping strings and meta."""

    owner_pid: array.array[int] = field(default_factory=lambda: array.array("q"))
    owner_exe: list[str] = field(default_factory=list)
    map_owner: array.array[int] = field(default_factory=lambda: array.array("i"))
    map_start: array.array[int] = field(default_factory=lambda: array.array("Q"))
    map_end: array.array[int] = field(default_factory=lambda: array.array("Q"))
    map_offset: array.array[int] = field(default_factory=lambda: array.array("Q"))
    map_perms: array.array[int] = field(default_factory=lambda: array.array("B"))
    map_name: list[str] = field(default_factory=list)
    page_map: array.array[int] = field(default_factory=lambda: array.array("i"))
    page_owner: array.array[int] = field(default_factory=lambda: array.array("i"))
    page_vaddr: array.array[int] = field(default_factory=lambda: array.array("Q"))
    page_paddr: array.array[int] = field(default_factory=lambda: array.array("Q"))
    page_pm: array.array[int] = field(default_factory=lambda: array.array("B"))
    page_kflags: array.array[int] = field(default_factory=lambda: array.array("Q"))
    page_kcount: array.array[int] = field(default_factory=lambda: array.array("I"))
    meta: dict[str, Any] = field(default_factory=dict)

    COLUMNS = ("owner_pid", "map_owner", "map_start", "map_end", "map_offset", "map_perms", "page_map",
               "page_owner", "page_vaddr", "page_paddr", "page_pm", "page_kflags", "page_kcount")

    def add_owner(self, pid: int, exe: str) -> int:
        self.owner_pid.append(pid)
        self.owner_exe.append(exe)
        return len(self.owner_pid) - 1

    def add_mapping(self, owner: int, start: int, end: int, offset: int, perms: int, name: str) -> int:
        self.map_owner.append(owner)
        self.map_start.append(start)
        self.map_end.append(end)
        self.map_offset.append(offset)
        self.map_perms.append(perms)
        self.map_name.append(name)
        return len(self.map_owner) - 1

    def add_page(self, mapping: int, owner: int, vaddr: int, paddr: int, pm: int, kflags: int,
                 kcount: int) -> None:
        self.page_map.append(mapping)
        self.page_owner.append(owner)
        self.page_vaddr.append(vaddr)
        self.page_paddr.append(paddr)
        self.page_pm.append(pm)
        self.page_kflags.append(kflags)
        self.page_kcount.append(min(kcount, 0xFFFFFFFF))

    def add_unmapped_pages(self, owner: int, pfns: list[int], kflags: list[int], kcounts: list[int]) -> None:
        """Bulk rows of a section without mappings (page cache, free): ``vaddr = paddr = pfn * page``."""
        n = len(pfns)
        addrs: array.array[int] = array.array("Q", [p << PAGE_SHIFT for p in pfns])
        self.page_map.extend(array.array("i", [-1]) * n)
        self.page_owner.extend(array.array("i", [owner]) * n)
        self.page_vaddr.extend(addrs)
        self.page_paddr.extend(addrs)
        self.page_pm.frombytes(bytes(n))
        self.page_kflags.extend(array.array("Q", kflags))
        if kcounts and max(kcounts) > 0xFFFFFFFF:
            kcounts = [min(c, 0xFFFFFFFF) for c in kcounts]
        self.page_kcount.extend(array.array("I", kcounts))

    def full_meta(self) -> dict[str, Any]:
        return {**self.meta, "format": FORMAT, "version": VERSION, "page_size": PAGE_SIZE,
                "owner_exe": list(self.owner_exe), "map_name": list(self.map_name)}

    def columns(self) -> dict[str, npyio.Column]:
        return {name: getattr(self, name) for name in self.COLUMNS}

    def write(self, path: str | Path) -> None:
        """Write ``memmap.npz`` (atomically)."""
        npyio.write_npz(path, self.columns(), self.full_meta())

    def to_bytes(self) -> bytes:
        """The ``memmap.npz`` archive in memory (for the agent's reply)."""
        return npyio.npz_bytes(self.columns(), self.full_meta())

    @classmethod
    def from_columns(cls, cols: dict[str, array.array[Any]], meta: dict[str, Any]) -> Memmap:
        """Rebuild from :func:`npyio.read_npz` output (validating that every column is there)."""
        missing = [c for c in cls.COLUMNS if c not in cols]
        if missing or meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} archive (missing {missing or 'format tag'})")
        mm = cls()
        for c in cls.COLUMNS:
            setattr(mm, c, cols[c])
        mm.owner_exe = list(meta.get("owner_exe", []))
        mm.map_name = list(meta.get("map_name", []))
        mm.meta = {k: v for k, v in meta.items() if k not in ("owner_exe", "map_name")}
        return mm

    @property
    def n_pages(self) -> int:
        return len(self.page_paddr)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (py<3.11 guests)


def collect(pids: list[int] | None = None, *, sections: tuple[str, ...] = SECTIONS,
            exclude: tuple[int, ...] = (), source: str = "local") -> Memmap:
    """Collect the memmap of this machine.

    ``pids``: the processes to walk (default: every process with a readable ``/proc/PID/exe``, i.e. no
    kernel threads, minus ``exclude`` — the caller passes its own pid, as the seed skipped itself).
    ``sections``: any of ``processes``, ``kernel``, ``pagecache``, ``free``.
    Processes that vanish or cannot be read while walking are listed in ``meta["skipped"]``.

    Raises ``CollectError`` if the kpage files cannot be opened (needs root) or iomem hides addresses,
    ``NoSuchProcess`` (before anything is read) if ``pids`` names only processes that do not exist.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise CollectError(f"unknown memmap section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    check_pids(pids)
    mm = Memmap()
    mm.meta = {"phys_mem_bytes": procfs.phys_mem_bytes(), "kernel": platform.release(), "source": source,
               "collected": _now(), "sections": list(sections), "skipped": []}
    try:
        kp = procfs.KPageFiles()
    except OSError as exc:
        raise CollectError(f"{exc.filename or '/proc/kpageflags'}: {exc.strerror} (collecting the memmap "
                           "needs root: PFNs, kpageflags and kpagecount are root-only)") from None
    with kp:
        max_pfn = kp.max_pfn()
        mm.meta["max_pfn"] = max_pfn
        if "processes" in sections:
            _collect_processes(mm, kp, pids, exclude)
        if "kernel" in sections:
            _collect_kernel(mm, kp)
        if "pagecache" in sections:
            owner = mm.add_owner(PID_PAGECACHE, "pagecache")
            # anon pages overload MAPPEDTODISK (tools/mm/page-types.c), hence the ANON reject
            for pfns, fls, cns in kp.scan_windows(1 << KPF["MAPPEDTODISK"], 1 << KPF["ANON"]):
                mm.add_unmapped_pages(owner, pfns, fls, cns)
        if "free" in sections:
            owner = mm.add_owner(PID_FREE, "free")
            for pfns, fls, cns in kp.scan_windows(1 << KPF["BUDDY"]):
                mm.add_unmapped_pages(owner, pfns, fls, cns)
    return mm


def _collect_processes(mm: Memmap, kp: procfs.KPageFiles, pids: list[int] | None,
                       exclude: tuple[int, ...]) -> None:
    explicit = pids is not None
    for pid in (pids if pids is not None else procfs.list_pids()):
        if pid in exclude:
            continue
        exe = procfs.exe_of(pid)
        if exe is None:
            if explicit:
                why = ("no such process" if not os.path.exists(f"/proc/{pid}")
                       else "no /proc/PID/exe (gone or kernel thread)")
                mm.meta["skipped"].append({"pid": pid, "why": why})
            continue
        try:
            _collect_process(mm, kp, pid, exe)
        except (OSError, ValueError) as exc:
            mm.meta["skipped"].append({"pid": pid, "why": str(exc)})


def _collect_process(mm: Memmap, kp: procfs.KPageFiles, pid: int, exe: str) -> None:
    maps = procfs.read_maps(pid)
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    # Build the process's rows aside, so a process dying half-way leaves no partial section.
    part = Memmap()
    pfns: list[int] = []
    try:
        owner = len(mm.owner_pid)
        for m in maps:
            mi = len(mm.map_owner) + part.add_mapping(owner, m.start, m.end, m.offset, m.perms, m.name)
            for vaddrs, words in procfs.present_chunks(fd, m.start, m.end):
                n = len(vaddrs)
                chunk_pfns = [w & PM_PFN_MASK for w in words]
                pfns.extend(chunk_pfns)
                part.page_map.extend(array.array("i", [mi]) * n)
                part.page_owner.extend(array.array("i", [owner]) * n)
                part.page_vaddr.extend(array.array("Q", vaddrs))
                part.page_paddr.extend(array.array("Q", [p << PAGE_SHIFT for p in chunk_pfns]))
                part.page_pm.extend(array.array("B", [procfs.pm_bits(w) for w in words]))
    finally:
        os.close(fd)
    # flags and counts in one batched pass, right after the walk (as close in time as we can get)
    part.page_kflags, counts = kp.lookup_many(pfns)
    part.page_kcount = array.array("I", (min(c, 0xFFFFFFFF) for c in counts))
    if part.page_paddr and all(p == 0 for p in part.page_paddr[:64]):
        raise CollectError(f"/proc/{pid}/pagemap: PFNs read as 0 (needs CAP_SYS_ADMIN)")
    mm.add_owner(pid, exe)
    for name in ("map_owner", "map_start", "map_end", "map_offset", "map_perms", "page_map", "page_owner",
                 "page_vaddr", "page_paddr", "page_pm", "page_kflags", "page_kcount"):
        getattr(mm, name).extend(getattr(part, name))
    mm.map_name.extend(part.map_name)


def _collect_kernel(mm: Memmap, kp: procfs.KPageFiles) -> None:
    segs = procfs.kernel_segments()
    if segs and all(s.start == 0 and s.end == 0 for s in segs):
        raise CollectError("/proc/iomem: addresses read as 0 (needs root)")
    owner = mm.add_owner(PID_KERNEL, "kernel")
    for s in segs:
        end = s.end + 1  # iomem ends are inclusive; memmap ranges are [start, end)
        mi = mm.add_mapping(owner, s.start, end, 0, 0, s.name)
        first = s.start >> PAGE_SHIFT
        pfns = list(range(first, (end + PAGE_SIZE - 1) >> PAGE_SHIFT))
        flags, counts = kp.lookup_many(pfns)
        for k, pfn in enumerate(pfns):
            mm.add_page(mi, owner, pfn << PAGE_SHIFT, pfn << PAGE_SHIFT, 0, flags[k], counts[k])


def restrict(mm: Memmap, pids: set[int]) -> Memmap:
    """A copy keeping only the owners whose pid is in ``pids`` (and their mappings and pages)."""
    out = Memmap(meta=dict(mm.meta))
    owner_new: dict[int, int] = {}
    for i, pid in enumerate(mm.owner_pid):
        if pid in pids:
            owner_new[i] = out.add_owner(pid, mm.owner_exe[i])
    map_new: dict[int, int] = {}
    for j, o in enumerate(mm.map_owner):
        if o in owner_new:
            map_new[j] = out.add_mapping(owner_new[o], mm.map_start[j], mm.map_end[j], mm.map_offset[j],
                                         mm.map_perms[j], mm.map_name[j])
    for k, o in enumerate(mm.page_owner):
        if o in owner_new:
            m = mm.page_map[k]
            out.add_page(map_new.get(m, -1), owner_new[o], mm.page_vaddr[k], mm.page_paddr[k],
                         mm.page_pm[k], mm.page_kflags[k], mm.page_kcount[k])
    out.meta["restricted_to"] = sorted(pids)
    return out
