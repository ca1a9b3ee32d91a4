"""Reading the seed's memory-map text (``mem_mapping.sh`` / ``virt2phys`` output).

Format (SEED.md §4)::

    = <pid> <exe>                              one section per process; 0 kernel, -1 pagecache
    v 0x%016lx 0x%016lx <name>                 a mapping (anonymous: empty name, line ends in a space)
    p 0x%016lx 0x%016lx <excl> <file>          process page: gva, gpa, pagemap bits 56 and 61
    p 0x%016lx 0x%016lx                        kernel / pagecache page: gpa, kpageflags

Quirks handled: ``%#018lx`` prints zero as 18 zeros without ``0x``; anonymous ``v`` lines end with a
trailing space; kernel ``v`` ends come from ``/proc/iomem`` and are inclusive (stored exclusive, +1).

``parse_seed_memmap`` streams the file in chunks and parses the millions of ``p`` lines with numpy
(fixed-width fast path, per-line fallback for other widths), so a 4 Mi-page file takes seconds.
It returns the same ``Memmap`` arrays as ``memmap.npz``; anything malformed is ``FormatError(path, line,
why)``. The one writer of this text is ``firecracer.guest.seedfmt`` (standard library, so the guest
exports it too; it writes this module's numpy ``Memmap`` as well).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from firecracer.analysis.memmap import FORMAT, PID_KERNEL, PM_EXCLUSIVE, PM_FILE, Memmap
from firecracer.errors import FormatError
from firecracer.fsio import open_regular

CHUNK = 32 << 20
BATCH = 1 << 17
MAX_LINE = 1 << 16
PAGE = 4096

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_SHIFTS = (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))
_HEXTOK = re.compile(r"0[xX][0-9a-fA-F]{1,16}")


def _hex_field(tok: str) -> int:
    """``0x…`` hex, or the 18-zero spelling of 0; ``ValueError`` otherwise."""
    if _HEXTOK.fullmatch(tok):
        return int(tok[2:], 16)
    if tok and len(tok) <= 18 and tok.strip("0") == "":
        return 0
    raise ValueError(f"bad hex field {tok[:40]!r}")


@dataclass
class _Acc:
    """Accumulated output across chunks."""

    owner_pid: list[int] = field(default_factory=list)
    owner_exe: list[str] = field(default_factory=list)
    map_owner: list[int] = field(default_factory=list)
    map_start: list[int] = field(default_factory=list)
    map_end: list[int] = field(default_factory=list)
    map_name: list[str] = field(default_factory=list)
    pages: list[tuple[npt.NDArray[Any], ...]] = field(default_factory=list)
    cur_owner: int = -1
    cur_map: int = -1
    line0: int = 0           # lines before the current chunk
    phys_mem: int = 0


def parse_seed_memmap(path: str | Path) -> Memmap:
    """Parse a seed ``= / v / p`` memory map into a ``Memmap`` (``meta.source = "seed-import"``)."""
    p = Path(path)
    acc = _Acc()
    try:
        with os.fdopen(open_regular(p, "memory map"), "rb") as fh:
            for buf in _chunks(fh, p):
                _parse_chunk(p, buf, acc)
    except OSError as exc:
        raise FormatError(p, 0, f"cannot read memory map: {exc.strerror or exc}") from exc
    if not acc.owner_pid:
        raise FormatError(p, 0, "not a seed memory map: no '= PID EXE' section line")
    return _finish(acc)


def _chunks(fh: IO[bytes], p: Path) -> Iterator[bytes]:
    rest = b""
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > MAX_LINE:
                raise FormatError(p, 0, f"a line is longer than {MAX_LINE} bytes")
            rest = data
            continue
        rest = data[cut + 1:]
        yield data[:cut + 1]
    if rest:
        yield rest + b"\n"


def _parse_chunk(p: Path, buf: bytes, acc: _Acc) -> None:
    arr = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.empty(len(nl), dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr
    lengths = ends - starts
    if lengths.size and int(lengths.max()) > MAX_LINE:
        bad = int(np.argmax(lengths > MAX_LINE))
        raise FormatError(p, acc.line0 + bad + 1, f"line longer than {MAX_LINE} bytes")
    first = np.where(lengths > 0, arr[np.minimum(starts, len(arr) - 1)], 0)
    is_p = first == ord("p")
    ctrl = np.flatnonzero(~is_p & (lengths > 0))
    vstart, vend, vok = _fixed_v_lines(arr, ctrl, first, starts, lengths)
    # state (owner, mapping) after each control line; index 0 = state carried into the chunk
    st_owner = [acc.cur_owner]
    st_map = [acc.cur_map]
    starts_l, ends_l = starts.tolist(), ends.tolist()
    for k, li in enumerate(ctrl.tolist()):
        if vok[k]:                                  # a well-formed fixed-width 'v' line: fields parsed
            if acc.cur_owner < 0:
                raise FormatError(p, acc.line0 + li + 1, "'v' line before any '= PID EXE' section")
            a, b = starts_l[li] + 40, ends_l[li]
            _add_mapping(p, acc, acc.line0 + li + 1, vstart[k], vend[k],
                         buf[a:b].decode("utf-8", "replace") if b > a else "")
        else:
            _control_line(p, acc, acc.line0 + li + 1, buf[starts_l[li]:ends_l[li]])
        st_owner.append(acc.cur_owner)
        st_map.append(acc.cur_map)
    pl = np.flatnonzero(is_p)
    if pl.size:
        which = np.searchsorted(ctrl, pl)
        owner = np.array(st_owner, dtype=np.int64)[which]
        if (owner < 0).any():
            li = int(pl[np.argmax(owner < 0)])
            raise FormatError(p, acc.line0 + li + 1, "'p' line before any '= PID EXE' section")
        _page_lines(p, acc, arr, buf, pl, starts[pl], lengths[pl], owner,
                    np.array(st_map, dtype=np.int64)[which])
    acc.line0 += len(nl)


def _fixed_v_lines(arr: npt.NDArray[np.uint8], ctrl: npt.NDArray[np.int64], first: npt.NDArray[np.uint8],
                   starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
                   ) -> tuple[list[int], list[int], list[bool]]:
    """Start/end of the ``v 0x%016lx 0x%016lx[ NAME]`` lines among ``ctrl``, parsed with numpy.

    Returns per control line: start, end, and whether the fast parse applies (else the line goes
    through ``_control_line``).
    """
    n = len(ctrl)
    ok = np.zeros(n, dtype=bool)
    vs = np.zeros(n, dtype=np.uint64)
    ve = np.zeros(n, dtype=np.uint64)
    cand = np.flatnonzero((first[ctrl] == ord("v")) & (lengths[ctrl] >= 39))
    if cand.size:
        li = ctrl[cand]
        m = _rows(arr, starts[li], 39)
        d1, d2 = _HEX[m[:, 4:20]], _HEX[m[:, 23:39]]
        tail = arr[np.minimum(starts[li] + 39, len(arr) - 1)]
        good = ((m[:, 1] == 32) & (m[:, 20] == 32) & (d1 < 16).all(axis=1) & (d2 < 16).all(axis=1)
                & _prefix_ok(m[:, 2], m[:, 3]) & _prefix_ok(m[:, 21], m[:, 22])
                & ((lengths[li] == 39) | (tail == 32)))
        ok[cand] = good
        vs[cand] = _pack(d1)
        ve[cand] = _pack(d2)
    return vs.tolist(), ve.tolist(), ok.tolist()


def _add_mapping(p: Path, acc: _Acc, no: int, start: int, end: int, name: str) -> None:
    pid = acc.owner_pid[acc.cur_owner]
    if pid == PID_KERNEL:
        end += 1                               # /proc/iomem ends are inclusive
    if end < start:
        raise FormatError(p, no, f"mapping ends ({end:#x}) before it starts ({start:#x})")
    if pid < 0:
        acc.phys_mem = max(acc.phys_mem, end)
    acc.map_owner.append(acc.cur_owner)
    acc.map_start.append(start)
    acc.map_end.append(end)
    acc.map_name.append(name)
    acc.cur_map = len(acc.map_owner) - 1


def _control_line(p: Path, acc: _Acc, no: int, raw: bytes) -> None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line = raw.decode("utf-8", "replace")
    kind = line[0]
    if kind == "=":
        parts = line.split(" ", 2)
        if parts[0] != "=" or len(parts) < 2:
            raise FormatError(p, no, "section line must be '= PID EXE'")
        try:
            pid = int(parts[1])
        except ValueError:
            raise FormatError(p, no, f"section pid {parts[1][:40]!r} is not an integer") from None
        if not -(1 << 62) < pid < (1 << 62):
            raise FormatError(p, no, f"section pid {pid} out of range")
        acc.owner_pid.append(pid)
        acc.owner_exe.append(parts[2] if len(parts) > 2 else "")
        acc.cur_owner = len(acc.owner_pid) - 1
        acc.cur_map = -1
    elif kind == "v":
        parts = line.split(" ", 3)
        if parts[0] != "v" or len(parts) < 3:
            raise FormatError(p, no, "mapping line must be 'v START END [NAME]'")
        if acc.cur_owner < 0:
            raise FormatError(p, no, "'v' line before any '= PID EXE' section")
        try:
            start, end = _hex_field(parts[1]), _hex_field(parts[2])
        except ValueError as exc:
            raise FormatError(p, no, str(exc)) from None
        _add_mapping(p, acc, no, start, end, parts[3] if len(parts) > 3 else "")
    elif line.strip() == "":
        return
    else:
        raise FormatError(p, no, f"unknown line type {line[:20]!r} (expected '=', 'v' or 'p')")


def _page_lines(p: Path, acc: _Acc, arr: npt.NDArray[np.uint8], buf: bytes, pl: npt.NDArray[np.int64],
                starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64],
                owner: npt.NDArray[np.int64], mapi: npt.NDArray[np.int64]) -> None:
    n = len(pl)
    f1 = np.zeros(n, dtype=np.uint64)
    f2 = np.zeros(n, dtype=np.uint64)
    flags = np.zeros(n, dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    for width in (39, 43):                       # the two fixed widths virt2phys prints
        idx = np.flatnonzero(lengths == width)
        for b in range(0, len(idx), BATCH):
            sub = idx[b:b + BATCH]
            m = _rows(arr, starts[sub], width)
            d1 = _HEX[m[:, 4:20]]
            d2 = _HEX[m[:, 23:39]]
            good = ((m[:, 1] == 32) & (m[:, 20] == 32) & (d1 < 16).all(axis=1) & (d2 < 16).all(axis=1)
                    & _prefix_ok(m[:, 2], m[:, 3]) & _prefix_ok(m[:, 21], m[:, 22]))
            if width == 43:
                good &= ((m[:, 39] == 32) & (m[:, 41] == 32) & ((m[:, 40] | 1) == 49)
                         & ((m[:, 42] | 1) == 49))
                flags[sub] = (m[:, 40] - 48) * PM_EXCLUSIVE + (m[:, 42] - 48) * PM_FILE
            f1[sub] = _pack(d1)
            f2[sub] = _pack(d2)
            ok[sub] = good
    for j in np.flatnonzero(~ok).tolist():          # other widths: one line at a time
        no = acc.line0 + int(pl[j]) + 1
        line = buf[starts[j]:starts[j] + lengths[j]].decode("utf-8", "replace")
        parts = line.split()
        if parts[0] != "p" or len(parts) not in (3, 5):
            raise FormatError(p, no, "page line must be 'p VADDR PADDR [EXCL FILE]'")
        try:
            f1[j], f2[j] = _hex_field(parts[1]), _hex_field(parts[2])
        except ValueError as exc:
            raise FormatError(p, no, str(exc)) from None
        if len(parts) == 5:
            if parts[3] not in ("0", "1") or parts[4] not in ("0", "1"):
                raise FormatError(p, no, "page flags must be 0 or 1")
            flags[j] = int(parts[3]) * PM_EXCLUSIVE + int(parts[4]) * PM_FILE
    pids = np.array(acc.owner_pid, dtype=np.int64)[owner]
    proc = pids > 0
    if (proc & (mapi < 0)).any():
        j = int(np.argmax(proc & (mapi < 0)))
        raise FormatError(p, acc.line0 + int(pl[j]) + 1, "process page line before any 'v' mapping line")
    if proc.any():
        ms = np.array(acc.map_start, dtype=np.uint64)
        me = np.array(acc.map_end, dtype=np.uint64)
        mj = np.maximum(mapi, 0)
        outside = proc & ((f1 < ms[mj]) | (f1 >= me[mj]))
        if outside.any():
            j = int(np.argmax(outside))
            raise FormatError(p, acc.line0 + int(pl[j]) + 1,
                              f"page {int(f1[j]):#x} lies outside its mapping "
                              f"[{int(ms[mj[j]]):#x}, {int(me[mj[j]]):#x})")
    mask = ~np.uint64(PAGE - 1)
    vaddr = np.where(proc, f1, f1 & mask)
    paddr = np.where(proc, f2, f1) & mask
    kflags = np.where(proc, np.uint64(0), f2)
    page_map = np.where(pids >= 0, mapi, -1).astype(np.int32)
    acc.pages.append((page_map, owner.astype(np.int32), vaddr, paddr,
                      np.where(proc, flags, 0).astype(np.uint8), kflags))


def _rows(arr: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """The ``width`` bytes at each start, as an (n, width) array.

    Lines of one width sit ``width + 1`` bytes apart inside a run, so for each phase ``start % (width+1)``
    the buffer is a 2-D strided view whose rows are lines: one row gather (a memcpy per line) instead of
    ``width`` single-byte gathers per line.
    """
    stride = width + 1
    out = np.empty((len(starts), width), dtype=np.uint8)
    phase = starts % stride
    order = np.argsort(phase, kind="stable")
    bounds = np.searchsorted(phase[order], np.arange(stride + 1))
    for ph in range(stride):
        sel = order[bounds[ph]:bounds[ph + 1]]
        if sel.size:
            view = np.lib.stride_tricks.as_strided(arr[ph:], shape=((len(arr) - ph) // stride, width),
                                                   strides=(stride, 1), writeable=False)
            out[sel] = view[(starts[sel] - ph) // stride]
    return out


def _pack(digits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """16 hex digit values per row → uint64 (pairs of nibbles to bytes, read big-endian)."""
    by = ((digits[:, 0::2] & 15) << 4) | (digits[:, 1::2] & 15)
    return np.ascontiguousarray(by).view(">u8").reshape(-1).astype(np.uint64)


def _prefix_ok(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """The two characters before the 16 hex digits: ``0x`` (or ``0X``) or ``00`` (the 18-zero quirk)."""
    res: npt.NDArray[np.bool_] = (a == 48) & ((b == 120) | (b == 88) | (b == 48))
    return res


def _finish(acc: _Acc) -> Memmap:
    if acc.pages:
        cols = [np.concatenate([pg[i] for pg in acc.pages]) for i in range(6)]
    else:
        cols = [np.zeros(0, dtype=d) for d in (np.int32, np.int32, np.uint64, np.uint64, np.uint8, np.uint64)]
    page_map, page_owner, vaddr, paddr, pm, kflags = cols
    phys = acc.phys_mem or (int(paddr.max()) + PAGE if paddr.size else 0)
    meta = {"format": FORMAT, "version": 1, "page_size": PAGE, "owner_exe": acc.owner_exe,
            "map_name": acc.map_name, "phys_mem_bytes": phys, "source": "seed-import"}
    return Memmap(
        owner_pid=np.array(acc.owner_pid, dtype=np.int64),
        map_owner=np.array(acc.map_owner, dtype=np.int32),
        map_start=np.array(acc.map_start, dtype=np.uint64),
        map_end=np.array(acc.map_end, dtype=np.uint64),
        map_offset=np.zeros(len(acc.map_owner), dtype=np.uint64),
        map_perms=np.zeros(len(acc.map_owner), dtype=np.uint8),
        page_map=page_map.astype(np.int32), page_owner=page_owner.astype(np.int32),
        page_vaddr=vaddr.astype(np.uint64), page_paddr=paddr.astype(np.uint64),
        page_pm=pm.astype(np.uint8), page_kflags=kflags.astype(np.uint64),
        page_kcount=np.zeros(len(paddr), dtype=np.uint32), meta=meta)

