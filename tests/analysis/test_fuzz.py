"""Parsers raise nothing but FormatError on garbage (hypothesis)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firecracer.analysis.memmap import load_memmap
from firecracer.analysis.nmt import parse_nmt_text
from firecracer.analysis.seedmemmap import parse_seed_memmap
from firecracer.errors import FormatError

FIX = Path(__file__).parent.parent / "fixtures" / "analysis"
NMT_LINES = (FIX / "nmt_jdk17_detail.txt").read_text().splitlines()[:400]
SEED_LINES = (FIX / "seed_readme_memmap.txt").read_text().splitlines()
HEXISH = st.text(alphabet="0123456789abcdefx -[]\t", max_size=60)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(line: str, cut: int, junk: str) -> str:
    cut = cut % (len(line) + 1)
    return line[:cut] + junk + line[cut + len(junk):]


nmt_docs = st.lists(st.one_of(
    st.sampled_from(NMT_LINES),
    st.builds(_mutate, st.sampled_from(NMT_LINES), st.integers(0, 200), HEXISH),
    st.text(max_size=80)), max_size=60).map("\n".join)


@SETTINGS
@given(st.one_of(st.text(max_size=2000), nmt_docs))
def test_nmt_parser_only_raises_format_error(text: str) -> None:
    try:
        r = parse_nmt_text(text, "fuzz.txt")
    except FormatError as exc:
        assert str(exc).startswith("fuzz.txt")
        return
    for reg in r.regions:
        assert reg.start < reg.end
        assert all(reg.start <= s < e <= reg.end for s, e in reg.committed)
    r.arrays()


seed_docs = st.lists(st.one_of(
    st.sampled_from(SEED_LINES),
    st.builds(_mutate, st.sampled_from(SEED_LINES), st.integers(0, 60), HEXISH),
    st.builds(lambda a, b: f"p 0x{a:016x} 0x{b:016x} 1 0", st.integers(0, 2**64 - 1),
              st.integers(0, 2**64 - 1)),
    st.text(max_size=50)), max_size=40).map("\n".join)


@SETTINGS
@given(st.one_of(st.binary(max_size=2000), seed_docs.map(lambda s: s.encode("utf-8", "replace"))))
def test_seed_memmap_parser_only_raises_format_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.txt"
        p.write_bytes(data)
        try:
            m = parse_seed_memmap(p)
        except FormatError:
            return
        assert len(m.page_paddr) == len(m.page_owner) == len(m.page_map)
        assert (m.page_paddr % np.uint64(4096) == 0).all()


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


GOOD = (FIX / "seed_readme_memmap.txt")


@SETTINGS
@given(st.one_of(st.binary(max_size=500),
                 st.dictionaries(st.sampled_from(["meta.npy", "owner_pid.npy", "page_map.npy", "x.npy"]),
                                 st.binary(max_size=200), max_size=4).map(_npz),
                 st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))))
def test_memmap_loader_only_raises_format_error(blob: object) -> None:
    from firecracer.analysis.memmap import save_memmap

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.npz"
        if isinstance(blob, tuple):          # flip bytes inside a valid file
            save_memmap(parse_seed_memmap(GOOD), p)
            raw = bytearray(p.read_bytes())
            pos, junk = blob
            pos %= len(raw)
            raw[pos:pos + len(junk)] = junk
            p.write_bytes(bytes(raw))
        else:
            assert isinstance(blob, bytes)
            p.write_bytes(blob)
        with contextlib.suppress(FormatError):
            load_memmap(p)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.integers(0, 100_000), st.binary(min_size=1, max_size=8)),
       st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["{}", "[]", '{"jvm": {"pid": "x"}}',
                                                                     '{"jvm": 5}', '{"label": 3}'])))
def test_load_recording_only_raises_format_error(flip: tuple[int, bytes], meta: str | None) -> None:
    """A real recording with a damaged trace.npz and arbitrary recording.json."""
    import shutil

    from firecracer.analysis import attribute, load_recording, tables

    src = Path(__file__).parent.parent / "fixtures" / "probe_ondemand"
    with tempfile.TemporaryDirectory() as d:
        rec = Path(d) / "rec"
        shutil.copytree(src, rec)
        raw = bytearray((rec / "trace.npz").read_bytes())
        pos, junk = flip
        pos %= len(raw)
        raw[pos:pos + len(junk)] = junk
        (rec / "trace.npz").write_bytes(bytes(raw))
        if meta is not None:
            (rec / "recording.json").write_text(meta)
        try:
            r = load_recording(rec)
        except FormatError:
            return
        tables(attribute(r))
