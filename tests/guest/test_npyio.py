"""npyio writes what numpy reads (and reads back what it wrote), with the standard library only."""

from __future__ import annotations

import array
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firecracer.guest import npyio

RANGES = {"b": (-128, 127), "B": (0, 255), "h": (-(2**15), 2**15 - 1), "H": (0, 2**16 - 1),
          "i": (-(2**31), 2**31 - 1), "I": (0, 2**32 - 1), "q": (-(2**63), 2**63 - 1), "Q": (0, 2**64 - 1)}


@st.composite
def columns(draw: st.DrawFn) -> dict[str, array.array[int]]:
    n = draw(st.integers(0, 5))
    out = {}
    for k in range(n):
        tc = draw(st.sampled_from(sorted(RANGES)))
        lo, hi = RANGES[tc]
        out[f"c{k}"] = array.array(tc, draw(st.lists(st.integers(lo, hi), max_size=50)))
    return out


@settings(max_examples=60, deadline=None)
@given(cols=columns(), meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=20),
                                            max_size=4))
def test_numpy_reads_what_we_write(cols: dict[str, array.array[int]], meta: dict[str, object],
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    npyio.write_npz(path, dict(cols), meta)
    with np.load(path) as z:
        assert sorted(z.files) == sorted([*cols, "meta"])
        for name, col in cols.items():
            assert z[name].dtype == np.dtype(npyio.DESCR[col.typecode])
            assert z[name].tolist() == col.tolist()
        assert json.loads(bytes(z["meta"]).decode()) == meta
    back, meta2 = npyio.read_npz(path)
    assert meta2 == meta
    assert {k: v.tolist() for k, v in back.items()} == {k: v.tolist() for k, v in cols.items()}


def test_we_read_what_numpy_writes(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "n.npz", a=np.arange(5, dtype=np.uint64),
                        b=np.array([-1, 2], dtype=np.int32), m=np.frombuffer(b'{"k": 1}', dtype=np.uint8))
    cols, meta = npyio.read_npz(tmp_path / "n.npz")
    assert cols["a"].tolist() == [0, 1, 2, 3, 4]
    assert cols["b"].tolist() == [-1, 2]
    assert meta == {}


def test_header_is_64_byte_aligned_and_bytes_are_uint8() -> None:
    buf = io.BytesIO()
    npyio.write_npy(buf, b"abc")
    data = buf.getvalue()
    assert (len(data) - 3) % 64 == 0
    assert np.load(io.BytesIO(data)).tolist() == [97, 98, 99]


def test_in_memory_archive_equals_file(tmp_path: Path) -> None:
    cols = {"x": array.array("Q", [1, 2, 3])}
    npyio.write_npz(tmp_path / "f.npz", cols, {"format": "t", "version": 1})
    blob = npyio.npz_bytes(cols, {"format": "t", "version": 1})
    with np.load(io.BytesIO(blob)) as z:
        assert z["x"].tolist() == [1, 2, 3]
    assert npyio.read_npz(io.BytesIO(blob))[1] == {"format": "t", "version": 1}


def test_refuses_unsupported_columns_and_payloads(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported column"):
        npyio.write_npz(tmp_path / "bad.npz", {"x": [1, 2]})  # type: ignore[dict-item]
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.npz.tmp").exists()
    with pytest.raises(ValueError, match=r"not a \.npy"):
        npyio.read_npy(b"hello world")
    np.save(tmp_path / "f.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        npyio.read_npy((tmp_path / "f.npy").read_bytes())
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="not an npz"):
        npyio.read_npz(tmp_path / "z.npz")
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as zf:
        header = b"{'descr': '<u8', 'fortran_order': False, 'shape': (3,), }"
        zf.writestr("a.npy", b"\x93NUMPY\x01\x00" + bytes([len(header), 0]) + header)
    with pytest.raises(ValueError):
        npyio.read_npz(tmp_path / "t.npz")
