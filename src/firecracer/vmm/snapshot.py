"""Self-describing snapshot directories, memory-file sparseness, Diff merging, format compatibility.

A snapshot directory holds::

    vmstate         Firecracker's device/vCPU state (``snapshot_path``)
    mem             guest memory (``mem_file_path``); sparse where pages were never written
    snapshot.json   what it is: its id, Firecracker version and snapshot data format, type, parent
                    (Diff: directory and id), VM config, kernel/rootfs paths with SHA-256, boot args,
                    labels (e.g. JVM options), creation time, memory-file size and allocated bytes
    mem.fcz         (``vm compress``, ``vm snapshot --compress``) the memory as zstd frames with an index,
                    described in snapshot.json's ``mem.compressed``; ``mem`` is then usually removed
    mem.merged      (Diff) the merged chain, with mem.merged.json naming the snapshots it was merged
                    from; remade whenever they differ

A snapshot's ``id`` is its identity: a Diff records its parent's, and is never merged onto a snapshot
with another id (a replaced parent); traces recorded on a restore carry it too.

Firecracker loads only snapshots in a data format it supports (v1.7+: its own format major, with
minor <= its own; v1.4: the list ``--version`` prints). :func:`check_loadable` says so in one line
before a restore is attempted, because a failed ``/snapshot/load`` also kills the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firecracer import hugepages
from firecracer.errors import FirecracerError, FormatError
from firecracer.fcversion import firecracker_version
from firecracer.fsio import atomic_output, read_json
from firecracer.paths import cache_dir
from firecracer.uffd.memfile import scan_data
from firecracer.uffd.zmem import DEFAULT_FRAME, DEFAULT_LEVEL, ZMemFile, compress_memory
from firecracer.uffd.zmem import FORMAT as ZMEM_FORMAT
from firecracer.vmm.config import SnapshotType
from firecracer.vmm.lifeline import is_zombie

FORMAT = "firecracer-snapshot"
ZMEM_NAME = "mem.fcz"
PAGE = 4096
_CHUNK = 8 << 20


# -- snapshot.json -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """A snapshot directory, as described by its ``snapshot.json``."""

    dir: Path
    type: SnapshotType
    firecracker_version: str
    snapshot_format: str  # e.g. "v8.0.0", as Firecracker's --describe-snapshot prints it
    created: str
    parent: Path | None = None
    vm: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    mem: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    id: str = ""  # "" for snapshots made before ids existed
    parent_id: str | None = None

    @property
    def vmstate(self) -> Path:
        return self.dir / "vmstate"

    @property
    def mem_file(self) -> Path:
        return self.dir / "mem"

    @property
    def json_path(self) -> Path:
        return self.dir / "snapshot.json"

    @property
    def zmem_file(self) -> Path:
        """The compressed memory file (``vm compress``; docs/formats.md)."""
        return self.dir / ZMEM_NAME

    @property
    def compressed(self) -> dict[str, Any] | None:
        """``mem.compressed`` of ``snapshot.json`` (format, frame size, sizes, ratio, the raw file's
        identity), or None for a snapshot that was never compressed."""
        rec = self.mem.get("compressed")
        return rec if isinstance(rec, dict) else None

    @property
    def compressed_only(self) -> bool:
        """Its memory exists only compressed (the raw file was removed): restorable through Uffd alone."""
        return self.compressed is not None and not self.mem_file.exists()

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "id": self.id, "type": self.type.value,
                "firecracker_version": self.firecracker_version, "snapshot_format": self.snapshot_format,
                "created": self.created, "parent": str(self.parent) if self.parent else None,
                "parent_id": self.parent_id,
                "vm": self.vm, "files": self.files, "labels": self.labels, "mem": self.mem,
                "timings_ms": self.timings_ms}

    def write(self, path: Path | None = None) -> None:
        """Write ``snapshot.json`` (or ``path``) atomically."""
        with atomic_output(path or self.json_path, "snapshot description") as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def made(cls, directory: Path, snapshot_type: SnapshotType, *, vm: dict[str, Any], firecracker: Path,
             version: str, snapshot_format: str, parent: Snapshot | None, labels: dict[str, Any] | None,
             mem: dict[str, Any], timings_ms: dict[str, float]) -> Snapshot:
        """The description of a snapshot just written by ``firecracker`` from a VM configured as ``vm``
        (``VMConfig.to_json``): its files' identities, a new id, and for a Diff the parent it applies to."""
        is_diff = snapshot_type is SnapshotType.DIFF and parent is not None
        kernel, rootfs = vm.get("kernel"), vm.get("rootfs")
        return cls(dir=directory, type=snapshot_type, firecracker_version=version,
                   snapshot_format=snapshot_format, created=now_iso(),
                   parent=parent.dir if is_diff and parent else None, vm=vm,
                   files={"kernel": describe_file(kernel) if kernel else None,
                          "rootfs": describe_file(rootfs) if rootfs else None,
                          "firecracker": str(firecracker)},
                   labels={**vm.get("labels", {}), **(labels or {})}, mem=mem, timings_ms=timings_ms,
                   id=new_snapshot_id(), parent_id=(parent.id or None) if is_diff and parent else None)

    def check_huge_pages(self, *, uffd: bool) -> None:
        """Refuse a restore of 2 MiB-backed memory without the Uffd backend or the huge pages for it."""
        if self.vm.get("huge_pages") != "2M":
            return
        if not uffd:
            raise FirecracerError(f"{self.dir}: this snapshot's memory is backed by 2 MiB huge pages, "
                                  "which Firecracker restores only through the Uffd backend (--uffd)")
        hugepages.check_pool(int(self.vm.get("mem_size_mib") or 0), f"snapshot {self.dir}")

    def recorded_firecracker(self) -> tuple[str | None, str]:
        """The Firecracker binary that made this snapshot if it is still there (else None: discover one),
        and a phrase saying where the choice came from."""
        recorded = self.files.get("firecracker")
        if isinstance(recorded, str) and recorded and Path(recorded).is_file() \
                and os.access(recorded, os.X_OK):
            return recorded, f"recorded in {self.json_path}"
        gone = f" ({recorded}, recorded in {self.json_path}, is gone)" if recorded else ""
        return None, "discovered" + gone

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Snapshot:
        """Read ``DIR/snapshot.json``; :class:`FormatError` if it is missing or malformed."""
        d = Path(directory)
        path = d / "snapshot.json"
        if not d.is_dir():
            raise FormatError(d, 0, "not a snapshot directory" + ("" if d.exists() else
                                                                  " (it does not exist)"))
        if not path.exists():
            raise FormatError(path, 0, "missing: not a firecracer snapshot directory")
        data = read_json(path, limit=4 << 20, what="snapshot description")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FormatError(path, 0, f"not a {FORMAT} file")
        if data.get("version", 1) != 1:
            raise FormatError(path, 0, f"snapshot description version {data.get('version')!r}; this "
                                       "firecracer reads version 1")
        try:
            snap = cls(dir=d, type=SnapshotType(data["type"]),
                       firecracker_version=str(data["firecracker_version"]),
                       snapshot_format=str(data["snapshot_format"]), created=str(data["created"]),
                       parent=Path(data["parent"]) if data.get("parent") else None,
                       vm=dict(data.get("vm") or {}),
                       files=dict(data.get("files") or {}), labels=dict(data.get("labels") or {}),
                       mem=dict(data.get("mem") or {}), timings_ms=dict(data.get("timings_ms") or {}),
                       id=str(data.get("id") or ""),
                       parent_id=str(data["parent_id"]) if data.get("parent_id") else None)
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(path, 0, f"bad or missing field ({exc})") from exc
        mem = snap.zmem_file if snap.compressed is not None and not snap.mem_file.exists() else snap.mem_file
        for f in (snap.vmstate, mem):
            if not f.is_file():
                raise FormatError(f, 0, "missing from the snapshot directory")
        if snap.type is SnapshotType.DIFF and snap.parent is None:
            raise FormatError(path, 0, "Diff snapshot without a parent")
        return snap


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_snapshot_id() -> str:
    """A fresh snapshot identity (32 hex digits)."""
    return uuid.uuid4().hex


def check_mem_size(snap: Snapshot, mem: Path) -> None:
    """Refuse a memory file whose size is not the guest's RAM, before Firecracker or a page server
    starts (a wrong size otherwise ends in a mapping failure or a SIGKILL far from the cause)."""
    try:
        size = mem.stat().st_size
    except OSError as exc:
        raise FirecracerError(f"{mem}: cannot read the memory file ({exc.strerror or exc})") from None
    mib = snap.vm.get("mem_size_mib")
    want = int(mib) << 20 if isinstance(mib, int) and mib > 0 else snap.mem.get("size")
    if isinstance(want, int) and want > 0 and size != want:
        raise FirecracerError(f"{mem}: memory file is {size:,} bytes, but the snapshot's guest has {want:,} "
                              f"bytes of RAM ({snap.json_path}); it belongs to another snapshot or was "
                              "changed")


# -- hashes (memoised: rootfs images are large) ---------------------------------------------------
def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised in the cache by (path, size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    memo_path = cache_dir() / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return str(memo[key])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    memo[key] = digest
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    os.replace(tmp, memo_path)
    return digest


def describe_file(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    if path is None:
        return None
    p = Path(path)
    return {"path": str(p.resolve()), "sha256": file_sha256(p), "size": p.stat().st_size}


# -- sparseness ------------------------------------------------------------------------------------
def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """[(start, end)] byte ranges holding data (SEEK_DATA/SEEK_HOLE); whole file if unsupported."""
    starts, ends = scan_data(fd, size, align=1)
    return list(zip(starts, ends, strict=True))


def mem_stats(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "allocated_bytes": st.st_blocks * 512,
            "sparse_fraction": round(1 - min(1.0, st.st_blocks * 512 / st.st_size), 4) if st.st_size else 0.0}


_libc: ctypes.CDLL | None = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_zero_pages(path: Path) -> int:
    """Deallocate every all-zero 4 KiB page of ``path`` (like ``fallocate -d``); return bytes punched.

    Reads only allocated ranges; zero detection is vectorised per 8 MiB chunk. Contents are
    unchanged (holes read as zeros), so Firecracker and page servers see the same memory.
    """
    punched = 0
    with open(path, "r+b") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        for start, end in data_segments(fd, size):
            pos = start - start % PAGE
            while pos < end:
                n = min(_CHUNK, end - pos)
                buf = os.pread(fd, n, pos)
                whole = len(buf) // PAGE
                if whole == 0:
                    break
                pages = np.frombuffer(buf, dtype=np.uint64, count=whole * PAGE // 8).reshape(whole, PAGE // 8)
                zero = ~pages.any(axis=1)
                if zero.any():
                    # contiguous runs of zero pages -> one fallocate each
                    padded = np.concatenate(([False], zero, [False]))
                    edges = np.flatnonzero(padded[1:] != padded[:-1])
                    for a, b in zip(edges[::2], edges[1::2], strict=True):
                        try:
                            _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                       pos + int(a) * PAGE, int(b - a) * PAGE)
                        except OSError as exc:
                            raise FirecracerError(f"{path}: cannot punch holes ({exc})") from exc
                        punched += int(b - a) * PAGE
                pos += whole * PAGE
    return punched


def merge_diff(base_mem: Path, diff_mem: Path, out: Path) -> None:
    """Write ``out`` = ``base_mem`` with every data range of the sparse Diff file laid over it.

    Firecracker writes a Diff memory file at full size with only dirty pages allocated, so its
    data segments are exactly the pages to take from it. Holes of the base stay holes. Written to a
    temporary file and renamed, so ``out`` is never half a merge.
    """
    with atomic_output(out, "merged memory file") as tmp, open(base_mem, "rb") as b, \
            open(diff_mem, "rb") as d, open(tmp, "wb") as o:
        size = max(os.fstat(b.fileno()).st_size, os.fstat(d.fileno()).st_size)
        os.fchmod(o.fileno(), os.fstat(b.fileno()).st_mode & 0o777)  # guest memory: as private as its base
        o.truncate(size)
        for src in (b, d):
            fd = src.fileno()
            for start, end in data_segments(fd, os.fstat(fd).st_size):
                pos = start
                while pos < end:
                    chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
                    if not chunk:
                        break
                    os.pwrite(o.fileno(), chunk, pos)
                    pos += len(chunk)


def _file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def full_memory(snap: Snapshot) -> Path:
    """A memory file holding the complete guest memory of ``snap`` (merges Diff chains, cached).

    :raises FirecracerError: a Diff's parent is gone or was replaced by another snapshot (its id differs
        from the one the Diff recorded).
    """
    if snap.compressed_only:  # a Diff on top of it needs the raw pages to merge onto
        raise FirecracerError(f"{snap.dir}: its memory exists only compressed ({ZMEM_NAME}); "
                              f"'firecracer vm decompress {snap.dir}' first")
    if snap.type is SnapshotType.FULL:
        return snap.mem_file
    assert snap.parent is not None
    try:
        parent = Snapshot.load(snap.parent)
    except FormatError as exc:
        raise FirecracerError(f"{snap.dir}: the parent of this Diff snapshot cannot be used: {exc}") from None
    if snap.parent_id and parent.id != snap.parent_id:
        raise FirecracerError(
            f"{snap.dir}: this Diff was taken on top of snapshot {snap.parent_id}, but {parent.dir} now "
            f"holds snapshot {parent.id or '(one without an id)'}: the parent was replaced, and merging onto "
            "it would restore a mix of two guests")
    base = full_memory(parent)
    merged = snap.dir / "mem.merged"
    stamp_path = snap.dir / "mem.merged.json"
    stamp = {"diff": snap.id, "parent": parent.id, "base": _file_stamp(base),
             "diff_mem": _file_stamp(snap.mem_file)}
    try:
        have = read_json(stamp_path, limit=1 << 16, what="merge record") if merged.is_file() else None
    except FormatError:
        have = None
    if not (isinstance(have, dict) and have == {**stamp, "merged": _file_stamp(merged)}):
        stamp_path.unlink(missing_ok=True)
        try:
            merge_diff(base, snap.mem_file, merged)
            with atomic_output(stamp_path, "merge record") as tmp:
                tmp.write_text(json.dumps({**stamp, "merged": _file_stamp(merged)}))
        except OSError as exc:
            raise FirecracerError(f"{merged}: cannot merge the Diff chain ({exc.strerror or exc})") from None
    return merged


# -- compression ------------------------------------------------------------------------------------
def compress_snapshot(snap: Snapshot, *, level: int = DEFAULT_LEVEL, frame_size: int = DEFAULT_FRAME,
                      keep_raw: bool = False) -> Snapshot:
    """Write ``mem.fcz`` (zstd frames + index, docs/formats.md) from the snapshot's memory file, verify it
    by decompressing it all, record it in ``snapshot.json`` and, unless ``keep_raw``, remove ``mem``.

    The raw file goes by default because the point is the disk space; ``decompress_snapshot`` gives it
    back bit for bit (its SHA-256 is recorded and checked). Order: the compressed file and the new
    ``snapshot.json`` are complete (atomic renames) before ``mem`` is removed, so an interrupted run
    leaves both files, never neither.

    :raises FirecracerError: a Diff snapshot (its memory is only the dirty pages: compress a Full one), an
        already compressed one, or a failure to write or verify.
    """
    if snap.type is SnapshotType.DIFF:
        raise FirecracerError(f"{snap.dir}: a Diff snapshot's memory file holds only the pages dirtied "
                              "since its parent; compress a Full snapshot")
    if snap.compressed is not None:
        raise FirecracerError(f"{snap.dir}: already compressed ({snap.compressed.get('file')}); "
                              "'firecracer vm decompress' first to compress it again")
    raw = mem_stats(snap.mem_file)
    info = compress_memory(snap.mem_file, snap.zmem_file, level=level, frame_size=frame_size,
                           snapshot_id=snap.id or None)
    try:
        t0 = time.perf_counter()
        with ZMemFile(snap.zmem_file) as z:
            z.verify()
        verify_ms = (time.perf_counter() - t0) * 1000
        rec = {"format": ZMEM_FORMAT, "version": 1, "file": ZMEM_NAME, "codec": "zstd", "level": level,
               "frame_size": info.frame_size, "frames": info.frames, "data_frames": info.data_frames,
               "size": info.mem_size, "data_bytes": info.data_bytes,
               "compressed_bytes": info.compressed_bytes,
               "ratio": round(info.ratio, 3),
               "disk_ratio": round(raw["allocated_bytes"] / info.compressed_bytes, 3),
               "raw": {"file": "mem", "size": raw["size"], "allocated_bytes": raw["allocated_bytes"],
                       "sha256": info.content_sha256},
               "raw_kept": keep_raw, "compress_ms": round(info.ms, 1), "verify_ms": round(verify_ms, 1)}
        new = dataclasses.replace(snap, mem={**snap.mem, "compressed": rec})
        new.write()
    except BaseException:
        snap.zmem_file.unlink(missing_ok=True)
        raise
    if not keep_raw:
        snap.mem_file.unlink()
    return Snapshot.load(snap.dir)


def decompress_snapshot(snap: Snapshot, *, keep_compressed: bool = False) -> Snapshot:
    """Write ``mem`` back from ``mem.fcz`` (sparse, its SHA-256 checked against the recorded one) so the
    File backend can restore the snapshot; unless ``keep_compressed``, remove ``mem.fcz`` and its record.

    :raises FirecracerError: not compressed, or a damaged compressed file (one line naming it).
    """
    rec = snap.compressed
    if rec is None:
        raise FirecracerError(f"{snap.dir}: not compressed (no mem.compressed in {snap.json_path})")
    if not snap.mem_file.exists():
        with ZMemFile(snap.zmem_file) as z:
            z.check_record(rec, str(snap.json_path))
            z.decompress_to(snap.mem_file)
    if keep_compressed:
        new = dataclasses.replace(snap, mem={**snap.mem, "compressed": {**rec, "raw_kept": True}})
        new.write()
    else:
        new = dataclasses.replace(snap, mem={k: v for k, v in snap.mem.items() if k != "compressed"})
        new.write()
        snap.zmem_file.unlink(missing_ok=True)
    return Snapshot.load(snap.dir)


def check_compressed(snap: Snapshot) -> Path:
    """The compressed memory file of a snapshot whose raw file is gone, checked before anything starts:
    a valid index that matches ``snapshot.json`` and the guest's RAM size."""
    rec = snap.compressed or {}
    with ZMemFile(snap.zmem_file) as z:
        z.check_record(rec, str(snap.json_path))
        mib = snap.vm.get("mem_size_mib")
        if isinstance(mib, int) and mib > 0 and z.size != mib << 20:
            raise FirecracerError(f"{snap.zmem_file}: holds {z.size:,} bytes of memory, but the snapshot's "
                                  f"guest has {mib << 20:,} bytes of RAM ({snap.json_path})")
    return snap.zmem_file


# -- data format compatibility ---------------------------------------------------------------------
_FMT_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def _run(binary: Path, *args: str) -> tuple[int, str]:
    try:
        res = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirecracerError(f"{binary}: cannot run {' '.join(args)}: {exc}") from exc
    text = "\n".join(ln for ln in (res.stdout + "\n" + res.stderr).splitlines()
                     if ln.strip() and not re.match(r"^\d{4}-\d\d-\d\dT", ln))
    return res.returncode, text.strip()


def supported_formats(binary: Path) -> list[str]:
    """Snapshot data formats this Firecracker writes/loads (``--snapshot-version``, or the list in
    ``--version`` before v1.7)."""
    version = firecracker_version(binary)
    if version.at_least(1, 7):
        _, text = _run(binary, "--snapshot-version")
        m = _FMT_RE.search(text)
        if not m:
            raise FirecracerError(f"{binary}: '--snapshot-version' printed no version ({text[:80]!r})")
        return [m.group(0) if m.group(0).startswith("v") else "v" + m.group(0)]
    _, text = _run(binary, "--version")
    listed = text.split("versions:", 1)[-1] if "versions:" in text else ""
    return ["v" + ".".join(m.groups()) for m in _FMT_RE.finditer(listed)]


def describe_vmstate(binary: Path, vmstate: Path) -> str:
    """The data format of a vmstate file, as ``binary --describe-snapshot`` reads it.

    :raises FirecracerError: Firecracker cannot read it (corrupt, or a format it does not know).
    """
    rc, text = _run(binary, "--describe-snapshot", str(vmstate))
    m = _FMT_RE.search(text.split("\n")[-1]) if rc == 0 else None
    if not m:
        first = text.splitlines()[-1] if text else f"exit status {rc}"
        raise FirecracerError(f"{vmstate}: Firecracker {firecracker_version(binary)} cannot read this "
                              f"snapshot state file ({first[:200]})")
    return "v" + ".".join(m.groups())


def check_loadable(snap: Snapshot, binary: Path) -> None:
    """Raise one clear line if ``binary`` cannot load ``snap`` (version/format mismatch, corrupt state)."""
    target = firecracker_version(binary)
    formats = supported_formats(binary)
    m = _FMT_RE.search(snap.snapshot_format)
    if not m:
        raise FormatError(snap.json_path, 0, f"snapshot_format {snap.snapshot_format!r} is not a version")
    have = tuple(int(x) for x in m.groups())
    ok = False
    for f in formats:
        fm = _FMT_RE.search(f)
        assert fm is not None
        sup = tuple(int(x) for x in fm.groups())
        # v1.7+: same major, minor not newer; before: exactly one of the listed versions
        same = (have[0] == sup[0] and have[1] <= sup[1]) if target.at_least(1, 7) else have == sup
        ok = ok or same
    if not ok:
        raise FirecracerError(
            f"{snap.dir}: snapshot made by Firecracker {snap.firecracker_version} (data format "
            f"{snap.snapshot_format}) cannot be loaded by Firecracker {target} (loads {', '.join(formats)}); "
            f"restore it with Firecracker {snap.firecracker_version}")
    # the file itself must be readable in that format (catches truncated/corrupt vmstate early)
    actual = describe_vmstate(binary, snap.vmstate)
    if actual != snap.snapshot_format:
        raise FirecracerError(f"{snap.vmstate}: state file says format {actual}, snapshot.json says "
                              f"{snap.snapshot_format}: the directory was modified")


def partial_dir(dest: Path) -> Path:
    """Where a snapshot into ``dest`` is written before it is renamed into place; a dead writer's
    leftovers there are removed first."""
    for old in dest.parent.glob(f".{dest.name}.partial-*") if dest.parent.is_dir() else []:
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or is_zombie(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    return dest.parent / f".{dest.name}.partial-{os.getpid()}"
