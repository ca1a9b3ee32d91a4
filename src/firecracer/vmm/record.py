"""``vm.json``: what runs in a VM's run directory, for the commands that come later (``vm ls``, ``vm kill``,
``MicroVM.attach``) and the supervisor that outlives the command that started the VM.

``VmRecord`` is its one reader and writer. Each field is typed and checked on read, so a copied or
hand-edited record is one ``FormatError`` line (``PATH: 'pid' must be an integer``) rather than a
``KeyError`` deep in a listing; keys a newer writer adds ride in ``extra``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from firecracer.errors import FormatError
from firecracer.fsio import read_json
from firecracer.paths import open_private

RECORD = "vm.json"
#: bytes a record may have
LIMIT = 1 << 20

_INTS = ("pid", "pid_start", "page_server_pid", "page_server_start", "supervisor_pid", "supervisor_start")
_STRS = ("name", "state", "firecracker", "firecracker_version", "run_dir", "api_sock", "vsock", "serial_log",
         "serial_in", "netns", "instance", "purpose", "dead_reason", "restored_from", "last_snapshot",
         "updated")
_BOOLS = ("lifeline", "detached", "dirty_tracking")


@dataclass
class VmRecord:
    """One VM's ``vm.json``. ``None`` means "not known" (or not there: no page server, no vsock)."""

    name: str = ""
    state: str = "unknown"
    pid: int | None = None
    pid_start: int | None = None
    firecracker: str | None = None
    firecracker_version: str | None = None
    run_dir: str | None = None
    api_sock: str | None = None
    vsock: str | None = None
    serial_log: str | None = None
    serial_in: str | None = None
    netns: str | None = None
    page_server_pid: int | None = None
    page_server_start: int | None = None
    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    #: the process that started the VM: (pid, start time), to tell it from a later one with that pid
    owner: tuple[int, int | None] | None = None
    instance: str | None = None
    lifeline: bool = True
    detached: bool = False
    purpose: str | None = None
    dead_reason: str | None = None
    dirty_tracking: bool | None = None
    restored_from: str | None = None
    last_snapshot: str | None = None
    config: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: object, path: str | Path = RECORD) -> VmRecord:
        """Validate a parsed ``vm.json``; :raises FormatError: naming ``path`` and the key."""
        if not isinstance(doc, dict):
            raise FormatError(path, 0, "a VM record must be a JSON object")
        d = {k: v for k, v in doc.items() if v is not None}
        for key in _INTS:
            if key in d and (isinstance(d[key], bool) or not isinstance(d[key], int)):
                raise FormatError(path, 0, f"'{key}' must be an integer, not {type(d[key]).__name__}")
        for key in _STRS:
            if key in d and not isinstance(d[key], str):
                raise FormatError(path, 0, f"'{key}' must be a string, not {type(d[key]).__name__}")
        for key in _BOOLS:
            if key in d and not isinstance(d[key], bool):
                raise FormatError(path, 0, f"'{key}' must be true or false")
        for key in ("config", "timings_ms"):
            if key in d and not isinstance(d[key], dict):
                raise FormatError(path, 0, f"'{key}' must be an object")
        if "owner" in d:
            own = d["owner"]
            if not (isinstance(own, list) and len(own) == 2 and isinstance(own[0], int)
                    and (own[1] is None or isinstance(own[1], int))):
                raise FormatError(path, 0, "'owner' must be [pid, start time]")
            d["owner"] = (own[0], own[1])
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: d.pop(k) for k in list(d) if k in names}
        return cls(**known, extra=d)

    @classmethod
    def read(cls, run_dir: str | Path) -> VmRecord:
        """``run_dir/vm.json``, validated (a regular file of at most 1 MiB)."""
        path = Path(run_dir) / RECORD
        return cls.from_dict(read_json(path, limit=LIMIT, what="VM record"), path)

    @classmethod
    def find(cls, run_dir: str | Path) -> VmRecord | None:
        """Like :meth:`read`, None when there is no readable record (listings and clean-ups go on)."""
        try:
            return cls.read(run_dir)
        except FormatError:
            return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["owner"] = list(self.owner) if self.owner is not None else None
        return {**out, **self.extra}

    def write(self, run_dir: str | Path) -> None:
        """Replace ``run_dir/vm.json`` atomically (a private temporary file renamed over it)."""
        d = Path(run_dir)
        tmp = d / f"{RECORD}.{os.getpid()}.tmp"
        try:
            with open(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:  # 0600
                f.write(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
            os.replace(tmp, d / RECORD)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def record_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run directory's record (``vm.lock``), for read-modify-write."""
    try:
        fd = os.open(run_dir / "vm.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
