"""Write (and read back) numpy ``.npy``/``.npz`` files with the standard library only.

The guest image has no numpy, yet the recording formats (docs/formats.md) are ``.npz`` archives so the
host can ``numpy.load`` them. Columns are ``array.array`` objects (or raw bytes for ``uint8``); the
``meta`` member is a ``uint8`` array holding UTF-8 JSON (1-d, so ``bytes(arr)`` gives the JSON back).

Only little-endian, C-order, 0-d/1-d arrays of the dtypes below are supported: that is all the formats
need, and anything else is refused with ``ValueError`` rather than written wrongly.
"""

from __future__ import annotations

import array
import ast
import json
import struct
import sys
import zipfile
from pathlib import Path
from typing import IO, Any, Union

#: array.array typecode -> numpy descr (sizes checked at import against this platform's C types).
DESCR = {"b": "|i1", "B": "|u1", "h": "<i2", "H": "<u2", "i": "<i4", "I": "<u4",
         "q": "<i8", "Q": "<u8", "f": "<f4", "d": "<f8"}
TYPECODE = {v: k for k, v in DESCR.items()}
_SIZES = {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}
for _tc, _size in _SIZES.items():
    if array.array(_tc).itemsize != _size:  # pragma: no cover - exotic platforms only
        raise ImportError(f"array typecode {_tc!r} is {array.array(_tc).itemsize} bytes here, need {_size}")

Column = Union["array.array[Any]", bytes, bytearray]

MAGIC = b"\x93NUMPY"


def _le_bytes(arr: array.array[Any]) -> bytes | memoryview:
    """The array's buffer in little-endian byte order (a copy only on big-endian hosts)."""
    if sys.byteorder == "little" or arr.itemsize == 1:
        return memoryview(arr).cast("B")
    swapped = array.array(arr.typecode, arr)
    swapped.byteswap()
    return swapped.tobytes()


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` v1.0 header for a C-order array (padded so the data starts 64-byte aligned)."""
    shape_txt = "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}"
    total = len(MAGIC) + 2 + 2 + len(text) + 1
    text += " " * ((64 - total % 64) % 64) + "\n"
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def write_npy(fh: IO[bytes], col: Column) -> None:
    """Write one 1-d column as a ``.npy`` stream (``bytes``/``bytearray`` are written as ``uint8``)."""
    if isinstance(col, (bytes, bytearray)):
        fh.write(npy_header("|u1", (len(col),)))
        fh.write(col)
        return
    if not isinstance(col, array.array) or col.typecode not in DESCR:
        raise ValueError(f"unsupported column type {type(col).__name__}")
    fh.write(npy_header(DESCR[col.typecode], (len(col),)))
    fh.write(_le_bytes(col))


def meta_bytes(meta: dict[str, Any]) -> bytes:
    """The ``meta`` member's payload: compact UTF-8 JSON (keys sorted so archives are reproducible)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def write_npz(path: str | Path, columns: dict[str, Column], meta: dict[str, Any] | None = None,
              *, compress: bool = True, level: int = 1) -> None:
    """Write ``columns`` (and ``meta`` if given) as an ``.npz`` readable by ``numpy.load``.

    Written to ``path + '.tmp'`` then renamed, so a reader never sees half an archive.
    ``level`` is the deflate level: 1 is several times faster than numpy's default and, on page
    tables, barely larger (they are dominated by long runs).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    items = dict(columns)
    if meta is not None:
        items["meta"] = meta_bytes(meta)
    try:
        with zipfile.ZipFile(tmp, "w", compression=method, compresslevel=level if compress else None,
                             allowZip64=True) as zf:
            for name, col in items.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                    write_npy(fh, col)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def npz_bytes(columns: dict[str, Column], meta: dict[str, Any] | None = None, *, level: int = 1) -> bytes:
    """The same archive as :func:`write_npz`, in memory (what the agent sends over the wire)."""
    import io

    buf = io.BytesIO()
    items = dict(columns)
    if meta is not None:
        items["meta"] = meta_bytes(meta)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level,
                         allowZip64=True) as zf:
        for name, col in items.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                write_npy(fh, col)
    return buf.getvalue()


def read_npy(data: bytes, what: str = "npy") -> array.array[Any]:
    """Parse a ``.npy`` payload written by :func:`write_npy` (or numpy, for the same dtypes).

    Raises ``ValueError`` naming ``what`` on anything else (bad magic, big-endian, Fortran order, >1-d).
    """
    if data[:6] != MAGIC or len(data) < 10:
        raise ValueError(f"{what}: not a .npy payload")
    major = data[6]
    if major == 1:
        hlen = struct.unpack("<H", data[8:10])[0]
        start = 10
    elif major in (2, 3):
        hlen = struct.unpack("<I", data[8:12])[0]
        start = 12
    else:
        raise ValueError(f"{what}: unsupported .npy version {major}")
    try:
        header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{what}: unreadable .npy header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{what}: .npy header is not a dict")
    descr = header.get("descr")
    if descr == "<u1":
        descr = "|u1"
    if descr not in TYPECODE or header.get("fortran_order"):
        raise ValueError(f"{what}: unsupported dtype {descr!r}")
    shape = header.get("shape")
    if not isinstance(shape, tuple) or len(shape) > 1:
        raise ValueError(f"{what}: only 0-d/1-d arrays are supported, got shape {shape!r}")
    arr: array.array[Any] = array.array(TYPECODE[descr])
    body = data[start + hlen:]
    count = shape[0] if shape else 1
    if len(body) != count * arr.itemsize:
        raise ValueError(f"{what}: payload is {len(body)} bytes, expected {count * arr.itemsize}")
    arr.frombytes(body)
    if sys.byteorder == "big" and arr.itemsize > 1:
        arr.byteswap()
    return arr


def read_npz(source: str | Path | IO[bytes]) -> tuple[dict[str, array.array[Any]], dict[str, Any]]:
    """Read an archive written by :func:`write_npz`: ``(columns, meta)`` (``meta`` is ``{}`` if absent)."""
    name = str(source) if isinstance(source, (str, Path)) else "npz"
    cols: dict[str, array.array[Any]] = {}
    meta: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                arr = read_npy(zf.read(info), f"{name}:{info.filename}")
                if key == "meta":
                    meta = json.loads(arr.tobytes().decode())
                else:
                    cols[key] = arr
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{name}: not an npz archive ({exc})") from None
    return cols, meta
