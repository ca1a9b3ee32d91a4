"""A zip member flagged encrypted made zipfile raise RuntimeError past both loaders (found by hypothesis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from firecracer.analysis.memmap import load_memmap
from firecracer.errors import FormatError
from firecracer.uffd.trace import load_trace

FIXTURES = Path(__file__).parent / "fixtures"


def _flag_encrypted(src: Path, dst: Path) -> None:
    """Set bit 0 ('encrypted') of every central-directory entry's general-purpose flags."""
    data = bytearray(src.read_bytes())
    pos = data.find(b"PK\x01\x02")
    assert pos >= 0
    while pos >= 0:
        data[pos + 8] |= 1
        pos = data.find(b"PK\x01\x02", pos + 4)
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(("fixture", "loader"), [
    ("local_jvm/memmap.npz", load_memmap),
    ("probe_ondemand/trace.npz", load_trace),
])
def test_encrypted_member_is_a_format_error(fixture: str, loader: object, tmp_path: Path) -> None:
    src = FIXTURES / fixture
    bad = tmp_path / src.name
    _flag_encrypted(src, bad)
    with pytest.raises(FormatError, match=str(bad)):
        loader(bad)  # type: ignore[operator]
