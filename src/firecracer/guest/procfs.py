"""Small, policy-free readers of /proc: process list, maps lines, pagemap words, kpageflags/kpagecount.

Everything here is standard library only (it runs inside the guest). Page-level reads are bulk:
one ``pread`` per mapping (chunked above ``PAGEMAP_CHUNK`` pages so a 128 TiB reservation cannot
exhaust memory) and 64 Ki-PFN windows of ``/proc/kpageflags``/``/proc/kpagecount``.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1

# pagemap bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 55
PM_EXCLUSIVE = 56
PM_FILE = 61
PM_SWAP = 62
PM_PRESENT = 63

# kpageflags bits (include/uapi/linux/kernel-page-flags.h + include/linux/kernel-page-flags.h)
KPF = {
    "LOCKED": 0, "ERROR": 1, "REFERENCED": 2, "UPTODATE": 3, "DIRTY": 4, "LRU": 5, "ACTIVE": 6,
    "SLAB": 7, "WRITEBACK": 8, "RECLAIM": 9, "BUDDY": 10, "MMAP": 11, "ANON": 12, "SWAPCACHE": 13,
    "SWAPBACKED": 14, "COMPOUND_HEAD": 15, "COMPOUND_TAIL": 16, "HUGE": 17, "UNEVICTABLE": 18,
    "HWPOISON": 19, "NOPAGE": 20, "KSM": 21, "THP": 22, "OFFLINE": 23, "ZERO_PAGE": 24, "IDLE": 25,
    "PGTABLE": 26, "RESERVED": 32, "MLOCKED": 33, "MAPPEDTODISK": 34, "PRIVATE": 35, "PRIVATE_2": 36,
    "OWNER_PRIVATE": 37, "ARCH": 38, "UNCACHED": 39, "SOFTDIRTY": 40, "ARCH_2": 41,
}

#: Pages per pread of pagemap (8 bytes each): 512 Ki pages = 4 MiB read, 2 GiB of address space.
PAGEMAP_CHUNK = 1 << 19
#: PFNs per window of kpageflags/kpagecount (512 KiB each; the files refuse very large single reads).
KPAGE_WINDOW = 1 << 16

_MAPS_RE = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+) ?(.*)$")

# byte -> 1 if the byte has its top bit set (the "present" bit 63 lives in byte 7 of a LE word)
_TOP_BIT = bytes(1 if b & 0x80 else 0 for b in range(256))


@dataclass(frozen=True)
class Mapping:
    """One /proc/PID/maps line. ``name`` is everything after the inode, spaces included ("" = anonymous)."""

    start: int
    end: int
    perms: int  # r=1 w=2 x=4 shared=8
    offset: int
    dev: str
    inode: int
    name: str
    raw_perms: str

    @property
    def seed_name(self) -> str:
        """The name as the seed's virt2phys printed it: the text after the line's last space."""
        return self.name.rsplit(" ", 1)[-1] if self.name else ""


def parse_maps_line(line: bytes) -> Mapping:
    """Parse one maps line; raises ``ValueError`` with the line on anything unexpected."""
    line = line.rstrip(b"\n")
    m = _MAPS_RE.match(line)
    if not m:
        raise ValueError(f"unparsable maps line: {line[:200]!r}")
    r, w, x, s = m.group(3, 4, 5, 6)
    perms = (r == b"r") | (w == b"w") << 1 | (x == b"x") << 2 | (s == b"s") << 3
    name = m.group(11).lstrip(b" ").decode("utf-8", "surrogateescape")
    return Mapping(int(m.group(1), 16), int(m.group(2), 16), perms, int(m.group(7), 16),
                   (m.group(8) + b":" + m.group(9)).decode(), int(m.group(10)), name,
                   (r + w + x + s).decode())


def read_maps(pid: int) -> list[Mapping]:
    """All mappings of ``pid`` in address order. ``OSError`` if the process is gone or unreadable."""
    with open(f"/proc/{pid}/maps", "rb") as fh:
        data = fh.read()
    return [parse_maps_line(ln) for ln in data.splitlines() if ln]


def list_pids() -> list[int]:
    """Every thread-group id in /proc, ascending."""
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def exe_of(pid: int) -> str | None:
    """``readlink /proc/PID/exe`` or ``None`` (kernel threads, vanished or foreign processes)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``pread`` exactly ``size`` bytes unless EOF comes first (then fewer)."""
    parts = []
    while size > 0:
        got = os.pread(fd, size, offset)
        if not got:
            break
        parts.append(got)
        size -= len(got)
        offset += len(got)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def present_chunks(fd: int, start: int, end: int) -> Iterator[tuple[list[int], list[int]]]:
    """Yield ``(vaddrs, pagemap_words)`` of the present pages in ``[start, end)`` of an open pagemap.

    One ``pread`` per mapping (per ``PAGEMAP_CHUNK`` pages for huge ones). The present bit (63) is the
    top bit of each little-endian word's last byte; ``bytes.translate`` turns those bytes into a 0/1
    mask and ``itertools.compress`` picks the present entries, so no Python code runs per page.
    """
    first = start >> PAGE_SHIFT
    last = end >> PAGE_SHIFT
    while first < last:
        n = min(last - first, PAGEMAP_CHUNK)
        data = pread_all(fd, n * 8, first * 8)
        n = len(data) // 8
        if n == 0:
            return
        data = data[: n * 8]
        mask = data[7::8].translate(_TOP_BIT)
        if mask.find(1) >= 0:
            yield (list(itertools.compress(range(first << PAGE_SHIFT, (first + n) << PAGE_SHIFT, PAGE_SIZE),
                                           mask)),
                   list(itertools.compress(memoryview(data).cast("Q"), mask)))
        first += n


def present_pages(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Like :func:`present_chunks`, one ``(vaddr, pagemap_word)`` at a time."""
    for vaddrs, words in present_chunks(fd, start, end):
        yield from zip(vaddrs, words, strict=True)


def pm_bits(word: int) -> int:
    """The memmap ``page_pm`` byte: 1 = exclusive (bit 56), 2 = file/shared-anon (61), 4 = soft-dirty (55)."""
    return ((word >> PM_EXCLUSIVE) & 1) | ((word >> PM_FILE) & 1) << 1 | ((word >> PM_SOFT_DIRTY) & 1) << 2


class KPageFiles:
    """``/proc/kpageflags`` and ``/proc/kpagecount`` read in windows of ``KPAGE_WINDOW`` PFNs (cached).

    Needs root (``CAP_SYS_ADMIN``); opening raises ``PermissionError`` otherwise. Use as a context manager.
    """

    def __init__(self, flags_path: str = "/proc/kpageflags", count_path: str = "/proc/kpagecount") -> None:
        self._flags_fd = os.open(flags_path, os.O_RDONLY)
        try:
            self._count_fd = os.open(count_path, os.O_RDONLY)
        except OSError:
            os.close(self._flags_fd)
            raise
        self._cache: dict[int, tuple[array.array[int], array.array[int]]] = {}

    def close(self) -> None:
        for fd in (self._flags_fd, self._count_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._cache.clear()

    def __enter__(self) -> KPageFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def window(self, w: int) -> tuple[array.array[int], array.array[int]]:
        """``(flags, counts)`` for PFNs ``[w*KPAGE_WINDOW, (w+1)*KPAGE_WINDOW)`` (shorter at the end)."""
        hit = self._cache.get(w)
        if hit is None:
            off = w * KPAGE_WINDOW * 8
            fl: array.array[int] = array.array("Q")
            fl.frombytes(_whole_words(pread_all(self._flags_fd, KPAGE_WINDOW * 8, off)))
            cn: array.array[int] = array.array("Q")
            cn.frombytes(_whole_words(pread_all(self._count_fd, KPAGE_WINDOW * 8, off)))
            hit = (fl, cn)
            if len(self._cache) > 256:  # 256 windows = 256 MiB of RAM described; bound the cache
                self._cache.clear()
            self._cache[w] = hit
        return hit

    def lookup(self, pfn: int) -> tuple[int, int]:
        """``(kpageflags, kpagecount)`` of one PFN; ``(0, 0)`` beyond the end of the files."""
        fl, cn = self.window(pfn // KPAGE_WINDOW)
        i = pfn % KPAGE_WINDOW
        if i >= len(fl):
            return 0, 0
        return fl[i], (cn[i] if i < len(cn) else 0)

    def lookup_many(self, pfns: list[int] | array.array[int], *, gap: int = 64,
                    max_run: int = KPAGE_WINDOW) -> tuple[array.array[int], array.array[int]]:
        """``(kpageflags, kpagecount)`` arrays for ``pfns`` (any order, repeats allowed).

        Reads only around the PFNs asked for: sorted unique PFNs closer than ``gap`` are fetched with one
        ``pread`` per run from each file. Scattered PFNs (a process's pages on a big host) would otherwise
        cost a 512 KiB window each, and the kernel computes every flag word it returns.
        """
        uniq = sorted(set(pfns))
        found: dict[int, tuple[int, int]] = {}
        i = 0
        while i < len(uniq):
            j = i
            while j + 1 < len(uniq) and uniq[j + 1] - uniq[j] <= gap and uniq[j + 1] - uniq[i] < max_run:
                j += 1
            lo, hi = uniq[i], uniq[j] + 1
            fl: array.array[int] = array.array("Q")
            fl.frombytes(_whole_words(pread_all(self._flags_fd, (hi - lo) * 8, lo * 8)))
            cn: array.array[int] = array.array("Q")
            cn.frombytes(_whole_words(pread_all(self._count_fd, (hi - lo) * 8, lo * 8)))
            for p in uniq[i:j + 1]:
                k = p - lo
                found[p] = (fl[k] if k < len(fl) else 0, cn[k] if k < len(cn) else 0)
            i = j + 1
        flags: array.array[int] = array.array("Q", (found[p][0] for p in pfns))
        counts: array.array[int] = array.array("Q", (found[p][1] for p in pfns))
        return flags, counts

    def scan_windows(self, want: int, reject: int = 0, *, limit_pfn: int | None = None,
                     ) -> Iterator[tuple[list[int], list[int], list[int]]]:
        """Per 64 Ki-PFN window, ``(pfns, flags, counts)`` of every PFN whose flags have any bit of
        ``want`` and none of ``reject`` (below ``limit_pfn`` if given). Filtering uses big-integer byte
        masks and ``itertools.compress``, so no Python code runs per PFN.
        """
        w = 0
        while limit_pfn is None or w * KPAGE_WINDOW < limit_pfn:
            off = w * KPAGE_WINDOW * 8
            data = _whole_words(pread_all(self._flags_fd, KPAGE_WINDOW * 8, off))
            if not data:
                return
            n = len(data) // 8
            base = w * KPAGE_WINDOW
            if limit_pfn is not None and base + n > limit_pfn:
                n = limit_pfn - base
                data = data[: n * 8]
            mask = _bit_mask(data, want)
            if reject:
                mask &= ~_bit_mask(data, reject)
            if mask:
                counts: array.array[int] = array.array("Q")
                counts.frombytes(_whole_words(pread_all(self._count_fd, n * 8, off)))
                if len(counts) < n:
                    counts.extend([0] * (n - len(counts)))
                hits = mask.to_bytes(n, "little")
                yield (list(itertools.compress(range(base, base + n), hits)),
                       list(itertools.compress(memoryview(data).cast("Q"), hits)),
                       list(itertools.compress(counts, hits)))
            if len(data) // 8 < KPAGE_WINDOW:
                return
            w += 1

    def scan(self, want: int, reject: int = 0, *,
             limit_pfn: int | None = None) -> Iterator[tuple[int, int, int]]:
        """Like :meth:`scan_windows`, one ``(pfn, flags, count)`` at a time."""
        for pfns, flags, counts in self.scan_windows(want, reject, limit_pfn=limit_pfn):
            yield from zip(pfns, flags, counts, strict=True)

    def max_pfn(self) -> int:
        """One past the highest PFN the kernel describes (size of /proc/kpageflags / 8)."""
        lo, hi = 0, 1 << 40
        # /proc/kpageflags reports size 0; find the end by probing (binary search on readability)
        while lo < hi:
            mid = (lo + hi) // 2
            if os.pread(self._flags_fd, 8, mid * 8):
                lo = mid + 1
            else:
                hi = mid
        return lo


def _whole_words(data: bytes) -> bytes:
    return data[: len(data) - len(data) % 8]


_BYTE_MASKS: dict[tuple[int, int], bytes] = {}


def _bit_mask(data: bytes, bits: int) -> int:
    """Big integer with byte i == 1 iff 8-byte word i of ``data`` has any bit of ``bits`` set."""
    result = 0
    for byte_index in range(8):
        sub = (bits >> (8 * byte_index)) & 0xFF
        if not sub:
            continue
        table = _BYTE_MASKS.get((byte_index, sub))
        if table is None:
            table = bytes(1 if b & sub else 0 for b in range(256))
            _BYTE_MASKS[(byte_index, sub)] = table
        result |= int.from_bytes(data[byte_index::8].translate(table), "little")
    return result


@dataclass(frozen=True)
class IomemSegment:
    """A ``/proc/iomem`` line: ``[start, end]`` inclusive as the kernel prints it, and its name."""

    start: int
    end: int
    name: str
    depth: int


def read_iomem(path: str = "/proc/iomem") -> list[IomemSegment]:
    """All /proc/iomem entries. Without root every address reads as 0; callers check that."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stripped = line.lstrip(" ")
            depth = (len(line) - len(stripped)) // 2
            rng, _, name = stripped.rstrip("\n").partition(" : ")
            lo, _, hi = rng.partition("-")
            try:
                out.append(IomemSegment(int(lo, 16), int(hi, 16), name, depth))
            except ValueError:
                continue
    return out


def kernel_segments(path: str = "/proc/iomem") -> list[IomemSegment]:
    """The seed's kernel segments: indented iomem lines containing `` Kernel `` (code, rodata, data, bss)."""
    return [s for s in read_iomem(path) if s.depth > 0 and s.name.startswith("Kernel ")]


def phys_mem_bytes() -> int:
    """``_SC_PHYS_PAGES * PAGE_SIZE`` — what the seed used as "all RAM" (MemTotal, not the highest PFN)."""
    return int(os.sysconf("SC_PHYS_PAGES")) * PAGE_SIZE
