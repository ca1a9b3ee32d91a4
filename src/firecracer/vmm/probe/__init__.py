"""The probe guest: a tiny x86-64 ELF that Firecracker boots in milliseconds, even on PVM hosts.

It exists so snapshot/restore and page serving can be exercised and timed on machines where no
Linux guest runs (see ``probe.S`` for the why and the exact behaviour). Stable API:

``build_probe(trace, fill, *, seed=DEFAULT_SEED, writes=None, samples=2) -> Path``
    Assemble (binutils ``as`` + ``ld``) into the cache, keyed by a hash of source and parameters;
    a second call with the same inputs returns the cached ELF. ``trace`` is the page sequence the
    guest walks per trigger byte (guest-physical page *numbers*, 4 KiB), ``fill`` the pages it fills
    at boot with the pattern ``word = gpa ^ seed``. Trace pages not in ``fill`` must read as zero.
    ``writes``: optional per-trace-entry booleans, True = first access is a write.
    ``samples``: words written/checked per page, evenly spaced from the first (offset 0) to the
    last (offset 4088); other words stay zero. On PVM every guest instruction is emulated (~1 µs
    each), so 2 keeps fills fast; 512 writes the full pattern.
``probe_info(elf) -> ProbeInfo``
    What was built: image range (pages the ELF itself occupies), fill/trace sizes, seed.
``parse_line(text) -> ProbeBoot | ProbeReady | ProbeResult | None``
    Parse one serial line. Lines the probe prints, in order:
    ``PROBE BOOT`` / ``PROBE READY fill_pages=N trace_pages=M seed=0x…`` /
    ``PROBE RESULT round=R kind=trace|verify pages=P errors=E cycles=C`` (one per trigger byte).
Trigger bytes sent on the serial port: ``b"t"`` (any byte but ``a``/``q``) walks the trace,
``b"a"`` verifies every filled page, ``b"q"`` resets the VM (Firecracker exits).

Memory rules, checked here: pages must lie in guest RAM outside the ELF image (which is loaded at
2 MiB) and outside x86-64 MMIO holes ([3 GiB, 4 GiB) and [256 GiB, 512 GiB)). The VM needs
``mem_size_mib`` large enough for the highest page (see :func:`min_mem_mib`); remember that
Firecracker places RAM above 3 GiB at 4 GiB and up.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from firecracer.errors import BinaryNotFound, FirecracerError
from firecracer.paths import cache_dir

__all__ = [
    "DEFAULT_SEED",
    "IMAGE_BASE",
    "PAGE_SIZE",
    "ProbeBoot",
    "ProbeInfo",
    "ProbeReady",
    "ProbeResult",
    "build_probe",
    "min_mem_mib",
    "parse_line",
    "probe_info",
    "sample_offsets",
]

PAGE_SIZE = 4096
IMAGE_BASE = 0x200000
"""Where the ELF's .text is linked and loaded (guest-physical); everything below is reserved."""
DEFAULT_SEED = 0x5EED_F1EC_CAC3_0000
_GIB = 1 << 30
_HOLES = ((3 * _GIB, 4 * _GIB), (256 * _GIB, 512 * _GIB))
_MAX_GPA = 512 * _GIB * 2  # 1 TiB: beyond that a guest here has no RAM anyway
_EXPECT_FILLED = 1
_WRITE_FIRST = 2
_BUILD_VERSION = 1  # bump when the build recipe (not probe.S) changes


@dataclass(frozen=True)
class ProbeInfo:
    """Facts about a built probe ELF (stored next to it as ``probe.json``)."""

    path: Path
    seed: int
    samples: tuple[int, ...]  # byte offsets of the pattern words in each page
    fill_pages: int
    trace_pages: int
    image_start: int  # first guest-physical byte the ELF occupies (incl. .bss)
    image_end: int  # one past the last
    max_page: int  # highest page number in fill or trace (-1 if none)
    key: str

    @property
    def image_pages(self) -> range:
        """Guest page numbers of the ELF image: these also fault on restore."""
        return range(self.image_start // PAGE_SIZE, -(-self.image_end // PAGE_SIZE))


@dataclass(frozen=True)
class ProbeBoot:
    """``PROBE BOOT``: the first instruction ran."""


@dataclass(frozen=True)
class ProbeReady:
    """``PROBE READY``: filling is done and the probe waits for trigger bytes."""

    fill_pages: int
    trace_pages: int
    seed: int


@dataclass(frozen=True)
class ProbeResult:
    """One ``PROBE RESULT`` line. ``errors`` counts 8-byte words with an unexpected value."""

    round: int
    kind: str  # "trace" or "verify"
    pages: int
    errors: int
    cycles: int


_READY_RE = re.compile(r"PROBE READY fill_pages=(\d+) trace_pages=(\d+) seed=0x([0-9a-f]+)")
_RESULT_RE = re.compile(r"PROBE RESULT round=(\d+) kind=(trace|verify) pages=(\d+) errors=(\d+) cycles=(\d+)")


def parse_line(text: str) -> ProbeBoot | ProbeReady | ProbeResult | None:
    """Parse one serial console line; ``None`` if it is not a (complete) probe line."""
    text = text.strip()
    if text == "PROBE BOOT":
        return ProbeBoot()
    m = _READY_RE.fullmatch(text)
    if m:
        return ProbeReady(int(m.group(1)), int(m.group(2)), int(m.group(3), 16))
    m = _RESULT_RE.fullmatch(text)
    if m:
        return ProbeResult(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5)))
    return None


def _runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct pages → [(first_page, count)] of contiguous runs."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(pages)):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def _check_page(page: int, what: str) -> None:
    gpa = page * PAGE_SIZE
    if page < 0 or gpa >= _MAX_GPA:
        raise ValueError(f"{what} page {page:#x} is outside guest memory this probe can address")
    for lo, hi in _HOLES:
        if lo <= gpa < hi:
            raise ValueError(f"{what} page {page:#x} (gpa {gpa:#x}) lies in the x86-64 MMIO hole "
                             f"[{lo:#x}, {hi:#x})")


def min_mem_mib(max_page: int) -> int:
    """Smallest ``mem_size_mib`` whose RAM contains guest page ``max_page`` (Firecracker x86-64 layout)."""
    end = (max_page + 1) * PAGE_SIZE
    if end > 512 * _GIB:
        end -= 257 * _GIB
    elif end > 4 * _GIB:
        end -= 1 * _GIB
    return max(-(-end // (1 << 20)), 2 * IMAGE_BASE >> 20)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BinaryNotFound(f"'{name}' (GNU binutils) is needed to build the probe guest; "
                             "install it with 'apt-get install binutils'")
    return found


def _image_range(elf: bytes, path: Path) -> tuple[int, int]:
    """[lowest p_paddr, highest p_paddr + p_memsz) over the PT_LOAD segments of a 64-bit ELF."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise FirecracerError(f"{path}: the linker did not produce a 64-bit ELF")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    lo, hi = None, None
    for i in range(phnum):
        p_type, _flags, _off, _vaddr, paddr, _filesz, memsz = struct.unpack_from("<IIQQQQQ", elf,
                                                                                  phoff + i * phentsize)
        if p_type == 1 and memsz:
            lo = paddr if lo is None else min(lo, paddr)
            hi = paddr + memsz if hi is None else max(hi, paddr + memsz)
    if lo is None or hi is None:
        raise FirecracerError(f"{path}: no loadable segment")
    return lo, hi


def _source() -> bytes:
    return resources.files(__package__).joinpath("probe.S").read_bytes()


def sample_offsets(samples: int) -> list[int]:
    """Byte offsets of the ``samples`` checked words in a page: first word, last word, evenly between."""
    if not 1 <= samples <= PAGE_SIZE // 8:
        raise ValueError(f"samples must be 1..{PAGE_SIZE // 8}, not {samples}")
    if samples == 1:
        return [0]
    last = PAGE_SIZE // 8 - 1
    return [(i * last // (samples - 1)) * 8 for i in range(samples)]


class _Reserved(ValueError):
    def __init__(self, msg: str, reserved_end: int) -> None:
        super().__init__(msg)
        self.reserved_end = reserved_end


def build_probe(trace: Sequence[int], fill: Sequence[int] | range, *, seed: int = DEFAULT_SEED,
                writes: Sequence[bool] | None = None, samples: int = 2, skip_reserved: bool = False) -> Path:
    """Build (or reuse from the cache) a probe ELF for this trace and fill set; return its path.

    :param trace: guest page numbers touched per trigger byte, in order (duplicates allowed).
    :param fill: guest page numbers filled with the pattern at boot (order/duplicates ignored).
    :param seed: 64-bit value XORed into the pattern, so different builds leave different contents.
    :param writes: per trace entry, True if the first access should be a store (a write fault).
    :param samples: 8-byte words per page that carry the pattern and are checked (1..512).
    :param skip_reserved: drop pages that overlap the probe image or low memory (and pages in MMIO
        holes) instead of raising; for replaying traces recorded from other guests.
    :raises ValueError: a page is reserved (ELF image, low memory) or in an MMIO hole.
    :raises BinaryNotFound: binutils is missing.
    :raises FirecracerError: assembling or linking failed (names the tool and its message).
    """
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed {seed:#x} is not a 64-bit unsigned value")
    trace = [int(p) for p in trace]
    if writes is not None and len(writes) != len(trace):
        raise ValueError(f"writes has {len(writes)} entries, trace has {len(trace)}")
    if skip_reserved:
        return _build_skipping_reserved(trace, fill, seed, writes, samples)
    runs = _runs(int(p) for p in fill)
    for p in trace:
        _check_page(p, "trace")
    for first, count in runs:
        _check_page(first, "fill")
        _check_page(first + count - 1, "fill")
    fill_pages = sum(c for _, c in runs)
    max_page = max([*trace, *(f + c - 1 for f, c in runs)], default=-1)
    npd = max(0, (max_page * PAGE_SIZE) // _GIB) if max_page >= 0 else 0

    starts = [f for f, _ in runs]

    def filled(page: int) -> bool:
        i = bisect.bisect_right(starts, page) - 1
        return i >= 0 and page < runs[i][0] + runs[i][1]

    entries = bytearray()
    for i, p in enumerate(trace):
        flags = _EXPECT_FILLED if filled(p) else 0
        if writes is not None and writes[i]:
            flags |= _WRITE_FIRST
        entries += struct.pack("<Q", p * PAGE_SIZE | flags)
    offsets = sample_offsets(samples)
    samples_bin = b"".join(struct.pack("<Q", o) for o in offsets)
    fill_bin = b"".join(struct.pack("<QQ", f * PAGE_SIZE, c) for f, c in runs)
    ready = f"PROBE READY fill_pages={fill_pages} trace_pages={len(trace)} seed={seed:#x}\n".encode()
    params = (f".set SEED, {seed:#x}\n.set NFILL, {len(runs)}\n.set NTRACE, {len(trace)}\n"
              f".set NPD, {npd}\n.set NSAMPLE, {samples}\n").encode()
    source = _source()
    h = hashlib.sha256()
    for part in (str(_BUILD_VERSION).encode(), source, params, samples_bin, fill_bin, bytes(entries), ready):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    key = h.hexdigest()[:24]
    out_dir = cache_dir() / "probe" / key
    elf_path = out_dir / "probe.elf"
    if elf_path.is_file() and (out_dir / "probe.json").is_file():
        return elf_path

    asm, ld = _tool("as"), _tool("ld")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".build-") as tmp:
        t = Path(tmp)
        (t / "probe.S").write_bytes(source)
        (t / "params.inc").write_bytes(params)
        (t / "samples.bin").write_bytes(samples_bin)
        (t / "fill.bin").write_bytes(fill_bin)
        (t / "trace.bin").write_bytes(bytes(entries))
        (t / "ready.txt").write_bytes(ready)
        for cmd in ([asm, "--64", "-I", str(t), "-o", str(t / "probe.o"), str(t / "probe.S")],
                    [ld, "-static", "-nostdlib", "--build-id=none", "-z", "noexecstack",
                     "-z", "noseparate-code", "-z", "max-page-size=4096",
                     f"--section-start=.text={IMAGE_BASE:#x}", "-e", "_start",
                     "-o", str(t / "probe.elf"), str(t / "probe.o")]):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            if res.returncode != 0:
                msg = (res.stderr or res.stdout).strip().replace("\n", "; ")[:400]
                raise FirecracerError(f"building the probe guest: '{Path(cmd[0]).name}' failed: {msg}")
        elf = (t / "probe.elf").read_bytes()
        lo, hi = _image_range(elf, t / "probe.elf")
        reserved_end = -(-hi // PAGE_SIZE)
        low = [p for p in [*trace, *(f for f, _ in runs)] if p < reserved_end]
        if low:
            raise _Reserved(f"page {min(low):#x} overlaps the probe image or low memory "
                            f"(pages below {reserved_end:#x} are reserved)", reserved_end)
        meta = {"seed": seed, "samples": offsets, "fill_pages": fill_pages, "trace_pages": len(trace),
                "image_start": lo, "image_end": hi, "max_page": max_page, "key": key}
        (t / "probe.json").write_text(json.dumps(meta, indent=1) + "\n")
        staged = t / "out"
        staged.mkdir()
        for name in ("probe.elf", "probe.json", "probe.S", "params.inc"):
            os.replace(t / name, staged / name)
        # atomic: readers see a complete dir or none; if a concurrent build won, its result is identical
        with contextlib.suppress(OSError):
            os.rename(staged, out_dir)
    return elf_path


def _usable(page: int) -> bool:
    try:
        _check_page(page, "")
    except ValueError:
        return False
    return True


def _build_skipping_reserved(trace: list[int], fill: Sequence[int] | range, seed: int,
                             writes: Sequence[bool] | None, samples: int) -> Path:
    """Drop unusable pages; if the link shows more reserved pages, drop those and link again
    (dropping only shrinks the image, so the second link cannot reserve more)."""
    keep = [i for i, p in enumerate(trace) if _usable(p)]
    fill_pages = [p for p in fill if _usable(p)]
    reserved_end = 0
    for _ in range(2):
        t = [trace[i] for i in keep if trace[i] >= reserved_end]
        w = [bool(writes[i]) for i in keep if trace[i] >= reserved_end] if writes is not None else None
        f = [p for p in fill_pages if p >= reserved_end]
        try:
            return build_probe(t, f, seed=seed, writes=w, samples=samples)
        except _Reserved as exc:
            reserved_end = exc.reserved_end
    raise FirecracerError("probe build: reserved area kept growing while dropping pages")


def probe_info(elf: str | os.PathLike[str]) -> ProbeInfo:
    """Read the facts stored next to a probe ELF built by :func:`build_probe`."""
    path = Path(elf)
    meta_path = path.parent / "probe.json"
    try:
        meta = json.loads(meta_path.read_text())
        return ProbeInfo(path=path, seed=int(meta["seed"]), samples=tuple(int(o) for o in meta["samples"]),
                         fill_pages=int(meta["fill_pages"]), trace_pages=int(meta["trace_pages"]),
                         image_start=int(meta["image_start"]), image_end=int(meta["image_end"]),
                         max_page=int(meta["max_page"]), key=str(meta["key"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FirecracerError(f"{meta_path}: not a probe build record ({exc})") from exc
