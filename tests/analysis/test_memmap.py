"""Seed memmap text (quirks, fast/slow paths, chunking, errors) and memmap.npz round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firecracer.analysis import seedmemmap
from firecracer.analysis.memmap import PM_EXCLUSIVE, PM_FILE, load_memmap, save_memmap, validate
from firecracer.analysis.seedmemmap import parse_seed_memmap
from firecracer.errors import FormatError
from firecracer.guest.seedfmt import write_seed_text

from .uffdvis_rules import mappings_counts

FIX = Path(__file__).parent.parent / "fixtures" / "analysis"


def _same(a: object, b: object) -> None:
    for k, v in a.arrays().items():  # type: ignore[attr-defined]
        assert np.array_equal(v, b.arrays()[k]), k  # type: ignore[attr-defined]
    assert a.owner_exe == b.owner_exe and a.map_name == b.map_name  # type: ignore[attr-defined]


def test_readme_sample_with_quirks() -> None:
    m = parse_seed_memmap(FIX / "seed_readme_memmap.txt")
    validate(m)
    assert m.owner_pid.tolist() == [1, 214, 0, -1]
    assert m.owner_exe == ["/usr/bin/bash", "/opt/jdk/bin/java", "kernel", "pagecache"]
    assert m.map_name == ["/usr/bin/bash", "", "Kernel code", "/proc/kpageflags"]  # anonymous: trailing space
    assert m.map_start[3] == 0                                   # the 18-zero quirk
    assert m.map_end[2] == 0x1A00588                             # iomem end is inclusive
    assert m.page_paddr.tolist() == [0x1FF7000, 0x63D4000, 0x1FF7000, 0x1000000, 0x1A01000, 0x1FF7000]
    assert m.page_pm.tolist()[:3] == [PM_FILE, PM_EXCLUSIVE, PM_EXCLUSIVE]
    assert m.page_kflags[3] == 0x100000000 and m.page_kflags[5] == 0x400000868   # short hex spelling too
    assert m.page_map.tolist() == [0, 1, 1, 2, -1, -1]
    assert (m.distinct_physical_pages(), len(m.owner_pid)) == mappings_counts(FIX / "seed_readme_memmap.txt")


def test_roundtrip_through_seed_text_and_npz(tmp_path: Path) -> None:
    m = parse_seed_memmap(FIX / "seed_readme_memmap.txt")
    write_seed_text(m, tmp_path / "out.txt", full_names=True, include_free=True)
    text = (tmp_path / "out.txt").read_text()
    assert "v 000000000000000000 0x000000003d47d000 /proc/kpageflags\n" in text
    assert "v 0x00000000f0a00000 0x00000000f2270000 \n" in text
    assert "v 0x0000000001000000 0x0000000001a00587 Kernel code\n" in text
    _same(m, parse_seed_memmap(tmp_path / "out.txt"))
    save_memmap(m, tmp_path / "memmap.npz")
    back = load_memmap(tmp_path / "memmap.npz")
    _same(m, back)
    assert back.meta["source"] == "seed-import"


def _random_text(rng: np.random.Generator, n_proc: int = 5, pages: int = 400) -> str:
    out = []
    for pid in range(1, n_proc + 1):
        out.append(f"= {pid} /usr/bin/p {pid}")          # exe with a space
        base = 0x7F0000000000 + pid * 0x100000000
        for k in range(3):
            s = base + k * 0x1000000
            out.append(f"v 0x{s:016x} 0x{s + 0x400000:016x} {'' if k == 1 else f'/lib/l{k}.so'}")
            for v in sorted(rng.choice(1024, size=pages // 3, replace=False).tolist()):
                pa = int(rng.integers(0, 1 << 18)) << 12
                out.append(f"p 0x{s + v * 4096:016x} {f'0x{pa:016x}' if pa else '0' * 18} "
                           f"{rng.integers(0, 2)} {rng.integers(0, 2)}")
    out.append("= 0 kernel")
    out.append("v 0x0000000001000000 0x0000000001001fff Kernel code")
    out.append("p 0x0000000001000000 0x0000000100000000")
    out.append("p 0x0000000001001000 000000000000000000")
    out.append("= -1 pagecache")
    out.append("v 000000000000000000 0x0000000040000000 /proc/kpageflags")
    for _ in range(50):
        out.append(f"p 0x{int(rng.integers(0, 1 << 18)) << 12:x} 0x400000868")   # slow path width
    return "\n".join(out) + "\n"


def test_chunking_and_slow_path_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    text = _random_text(rng)
    (tmp_path / "m.txt").write_text(text)
    whole = parse_seed_memmap(tmp_path / "m.txt")
    monkeypatch.setattr(seedmemmap, "CHUNK", 97)       # chunks cut lines and sections everywhere
    monkeypatch.setattr(seedmemmap, "BATCH", 5)
    _same(whole, parse_seed_memmap(tmp_path / "m.txt"))
    # the same content with a CRLF ending and un-padded hex everywhere takes the per-line path
    slow = "\n".join(
        " ".join(f"0x{int(t, 16):x}" if t.startswith("0x") else t for t in ln.split(" ")) if ln[:1] == "p"
        else ln for ln in text.splitlines()) + "\r\n"
    (tmp_path / "s.txt").write_text(slow)
    _same(whole, parse_seed_memmap(tmp_path / "s.txt"))
    assert whole.distinct_physical_pages() == mappings_counts(tmp_path / "m.txt")[0]


@pytest.mark.parametrize(("text", "line", "why"), [
    ("", 0, "no '= PID EXE'"),
    ("p 0x0000000000001000 0x0000000000002000 1 0\n", 1, "before any '= PID EXE'"),
    ("= 1 a\np 0x0000000000001000 0x0000000000002000 1 0\n", 2, "before any 'v'"),
    ("= 1 a\nv 0x1000 0x2000 x\np 0x0000000000003000 0x0000000000002000 1 0\n", 3, "outside its mapping"),
    ("= x a\n", 1, "not an integer"),
    ("= 1 a\nv 0x2000 0x1000 x\n", 2, "ends"),
    ("= 1 a\nv 12 0x1000 x\n", 2, "bad hex"),
    ("= 1 a\nv 0x1000 0x2000 x\np 0x1000 0xzz 1 0\n", 3, "bad hex"),
    ("= 1 a\nv 0x1000 0x2000 x\np 0x1000 0x1000 2 0\n", 3, "0 or 1"),
    ("= 1 a\nq what\n", 2, "unknown line type"),
])
def test_seed_errors(tmp_path: Path, text: str, line: int, why: str) -> None:
    (tmp_path / "m.txt").write_text(text)
    with pytest.raises(FormatError, match=why) as ei:
        parse_seed_memmap(tmp_path / "m.txt")
    assert ei.value.line == line


def test_npz_validation(tmp_path: Path) -> None:
    m = parse_seed_memmap(FIX / "seed_readme_memmap.txt")
    save_memmap(m, tmp_path / "ok.npz")
    arrs = dict(np.load(tmp_path / "ok.npz"))
    def write(**changes: object) -> Path:
        p = tmp_path / "bad.npz"
        np.savez(p, **{**arrs, **changes})  # type: ignore[arg-type]
        return p
    with pytest.raises(FormatError, match="missing arrays"):
        np.savez(tmp_path / "x.npz", meta=arrs["meta"])
        load_memmap(tmp_path / "x.npz")
    with pytest.raises(FormatError, match="page_owner points outside"):
        load_memmap(write(page_owner=np.full(6, 9, dtype=np.int32)))
    with pytest.raises(FormatError, match="rows"):
        load_memmap(write(page_pm=np.zeros(2, dtype=np.uint8)))
    with pytest.raises(FormatError, match="another owner"):
        load_memmap(write(page_map=np.array([1, 1, 1, 2, -1, -1], dtype=np.int32)))
    bad_meta = np.frombuffer(json.dumps({"format": "other", "version": 1}).encode(), dtype=np.uint8)
    with pytest.raises(FormatError, match=r"meta\.format"):
        load_memmap(write(meta=bad_meta))
    with pytest.raises(FormatError, match="dtype"):
        load_memmap(write(page_paddr=np.zeros(6, dtype=np.float64)))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(FormatError, match="cannot read"):
        load_memmap(tmp_path / "junk.npz")
