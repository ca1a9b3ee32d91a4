"""Reading and writing files that may be hostile: one line naming the file, bounded time and memory.

Every path the tool reads may be missing, a directory, a FIFO (which would block a plain ``open``), a
device (``/dev/zero`` never ends), huge, truncated or from another version. Readers here open with
``O_NONBLOCK``, accept regular files only, and refuse more bytes than the caller's ``limit`` before
reading them. Writers write a temporary file beside the target and rename it into place, removing the
temporary file on any failure, so a target is either the old file, the complete new one, or absent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError, FormatError

MiB = 1 << 20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | Path, what: str = "file") -> int:
    """Open a regular file read-only without ever blocking on a FIFO; the caller closes the fd.

    :raises FormatError: missing, unreadable, or not a regular file (names what it is instead).
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "does not exist" if exc.errno == errno.ENOENT else f"cannot open ({exc.strerror or exc})"
        raise FormatError(p, 0, f"{what} {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(p, 0, f"{what} is {_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | Path, *, limit: int, what: str = "file") -> bytes:
    """The whole file, refused with one line if it is larger than ``limit`` bytes (or not a file)."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise FormatError(path, 0, f"{what} is {size:,} bytes, more than the {limit:,} this tool reads "
                                       "from such a file")
        chunks = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            except OSError as exc:
                raise FormatError(path, 0, f"cannot read {what} ({exc.strerror or exc})") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FormatError(path, 0, f"{what} grew beyond {limit:,} bytes while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | Path, *, limit: int, what: str = "file") -> str:
    """Like :func:`read_bytes`, decoded as UTF-8 (binary garbage is a :class:`FormatError`)."""
    data = read_bytes(path, limit=limit, what=what)
    if b"\0" in data:
        raise FormatError(path, 0, f"{what} holds NUL bytes: binary data, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(path, 0, f"{what} is not UTF-8 text (byte {exc.start})") from None


def read_json(path: str | Path, *, limit: int = 16 * MiB, what: str = "JSON file") -> Any:
    """A JSON document from a bounded regular file."""
    text = read_text(path, limit=limit, what=what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FormatError(path, 0, f"{what} is not valid JSON ({exc})") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on any failure
    removed. ``OSError`` (full disk, no permission) becomes one :class:`FirecracerError` line."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise FirecracerError(f"{target}: cannot write the {what} ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike[str], data: bytes | str, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, what) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def short_hash(parts: Iterable[bytes | str]) -> str:
    """16 hex digits of SHA-256 over length-prefixed parts (so ``("ab","c")`` ≠ ``("a","bc")``)."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
