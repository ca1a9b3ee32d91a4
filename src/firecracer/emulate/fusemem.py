"""Serve a guest memory file through FUSE and record every page the kernel reads from it, in order.

Why this records a lazy restore faithfully: a VMM that maps its guest RAM ``MAP_SHARED`` from a file on
this mount gets no page until it touches it; the first touch of a page (read *or* write, by a vCPU, by
device emulation or by the VMM itself) is a page-cache miss, which the kernel turns into exactly one
FUSE ``READ`` of that page while the touching thread waits — the same event a userfaultfd page server
sees as a ``PAGEFAULT`` on a Firecracker ``Uffd`` restore, and the same read Firecracker's ``File``
backend makes from its memory file. Two kernel mechanisms could hide first touches, and both are off:

* readahead: the ``INIT`` reply sets ``max_readahead = 0``, so the mount's ``ra_pages`` is 0 and
  ``filemap_fault`` reads only the faulting folio (order 0: FUSE does not allocate large folios for a
  fault without readahead);
* large folios: since Linux 6.x FUSE caches files in folios of up to ``max_write`` bytes, and a
  mapping with ``MADV_HUGEPAGE`` (QEMU advises it on all guest RAM) reads a whole folio per fault
  *even with readahead off* — we measured 32-page (128 KiB) reads that way. The ``INIT`` reply sets
  ``max_write = 4096``, which caps the folio order at 0: one page per fault again;
* fault-around (``filemap_map_pages``) only maps pages *already* in the page cache, i.e. pages that
  were read (and recorded) before — it can never install a page we did not serve.

The mount is fresh for each restore, so the page cache starts empty. ``tests/emulate`` checks all of
this with a known access pattern: every first touch is seen once, in order, and nothing else is.

Writes that come back (dirty pages written back by the kernel) go to an in-memory overlay, so the
snapshot's memory file is never modified and a page re-read after eviction returns what was written.

This is a libfuse-free implementation of the small part of the FUSE protocol a single read/write file
needs (``/dev/fuse`` + ``mount(2)``), so it has no dependency beyond the standard library and ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError
from firecracer.uffd.memfile import scan_data


class FuseError(FirecracerError):
    """The FUSE mount could not be set up or its protocol went wrong."""


# Opcodes (include/uapi/linux/fuse.h).
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 14, 15, 16, 17, 18, 20
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, BATCH_FORGET = 34, 36, 38, 42

_IN_HDR = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
_OUT_HDR = struct.Struct("<IiQ")  # len error unique
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
_INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
_INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # 64 bytes
_READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
_WRITE_IN = struct.Struct("<QQIIQII")  # same layout, 40 bytes, data follows
_OPEN_OUT = struct.Struct("<QII")
_STATFS_OUT = struct.Struct("<QQQQQIIII24x")

ROOT_ID, FILE_ID = 1, 2
FUSE_BIG_WRITES = 1 << 5
#: ``max_write`` in the INIT reply: one page, so the page cache uses order-0 folios (one page per fault).
MAX_WRITE = 4096
_READ_BUF = 256 * 1024
_VALID_S = 3600  # attributes never change while mounted
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2


@dataclass(frozen=True)
class PageReads:
    """The pages read through the mount, one row per page in service order.

    ``t_ns``: ns since the mount (monotonic), when the request arrived; ``offset``: byte offset in the
    file (page-aligned); ``service_ns``: ns from reading the request to the reply being written (same for
    every page of one request); ``request``: 0-based index of the READ request; ``tid``: the thread
    (host TID, as the kernel reports it) whose touch caused the read.
    """

    t_ns: npt.NDArray[np.uint64]
    offset: npt.NDArray[np.uint64]
    service_ns: npt.NDArray[np.uint32]
    request: npt.NDArray[np.int32]
    tid: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.offset.shape[0])


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def data_extents(path: Path) -> npt.NDArray[np.uint64]:
    """``(n, 2)`` array of ``[start, end)`` byte ranges holding data in a sparse file (SEEK_DATA/HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        starts, ends = scan_data(fd, os.fstat(fd).st_size, align=1)
    finally:
        os.close(fd)
    return np.array([starts, ends], dtype=np.uint64).T.reshape(-1, 2)


def in_holes(offsets: npt.NDArray[np.uint64], extents: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """True for each page offset that lies in a hole of the file whose data ``extents`` are given."""
    if extents.shape[0] == 0:
        return np.ones(offsets.shape[0], dtype=bool)
    idx = np.searchsorted(extents[:, 0], offsets, side="right") - 1
    inside = (idx >= 0) & (offsets < extents[np.clip(idx, 0, None), 1])
    holes: npt.NDArray[np.bool_] = ~inside
    return holes


class MemFileMount:
    """A FUSE mount at ``mountpoint`` with one file ``name`` serving ``source``; records page reads.

    Use as a context manager. ``path`` is the file a VMM maps. Stop the VMM before leaving the context:
    the mount is detached on exit and the server thread ends when the kernel drops the connection.
    """

    def __init__(self, source: str | Path, mountpoint: str | Path, *, name: str = "mem",
                 page_size: int = 4096) -> None:
        self.source = Path(source)
        self.mountpoint = Path(mountpoint)
        self.name = name
        self.page_size = page_size
        self.size = self.source.stat().st_size
        if self.size % page_size:
            raise FuseError(f"{self.source}: size {self.size} is not a multiple of the page size {page_size}")
        self._src_fd = -1
        self._dev_fd = -1
        self._thread: threading.Thread | None = None
        self._t0 = 0
        self._overlay: dict[int, bytearray] = {}
        self._t: list[int] = []
        self._off: list[int] = []
        self._len: list[int] = []
        self._svc: list[int] = []
        self._tid: list[int] = []
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.writes = 0
        self.requests: dict[int, int] = {}
        self.proto_minor = 0

    @property
    def path(self) -> Path:
        """The served file inside the mount (what the VMM maps)."""
        return self.mountpoint / self.name

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> MemFileMount:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Open ``/dev/fuse``, mount it and start the server thread."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        try:
            self._dev_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise FuseError(f"/dev/fuse: cannot open: {exc.strerror}") from exc
        self._src_fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        opts = (f"fd={self._dev_fd},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()},"
                "allow_other,max_read=4096")
        libc = _libc()
        rc = libc.mount(b"firecracer-mem", os.fsencode(self.mountpoint), b"fuse", _MS_NOSUID | _MS_NODEV,
                        opts.encode())
        if rc != 0:
            e = ctypes.get_errno()
            self._close_fds()
            raise FuseError(f"mount fuse at {self.mountpoint}: {os.strerror(e)} "
                            "(needs root or CAP_SYS_ADMIN)")
        self._t0 = time.monotonic_ns()
        self._thread = threading.Thread(target=self._serve, name="fusemem", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Detach the mount, wait (bounded) for the server thread, close everything."""
        if self._thread is not None:
            _libc().umount2(os.fsencode(self.mountpoint), _MNT_DETACH)
            self._thread.join(timeout)
            self._thread = None
        self._close_fds()

    def _close_fds(self) -> None:
        for attr in ("_dev_fd", "_src_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    # -- results ----------------------------------------------------------------------------------

    def reads(self) -> PageReads:
        """Every page read so far, expanded from requests to pages, in service order."""
        ps = self.page_size
        with self._lock:
            t = np.array(self._t, dtype=np.uint64)
            off = np.array(self._off, dtype=np.uint64)
            ln = np.array(self._len, dtype=np.uint64)
            svc = np.array(self._svc, dtype=np.uint64)
            tid = np.array(self._tid, dtype=np.int64)
        first = off // ps
        last = (off + np.maximum(ln, 1) + ps - 1) // ps
        counts = (last - first).astype(np.int64)
        req = np.repeat(np.arange(counts.shape[0], dtype=np.int32), counts)
        starts = np.repeat(first, counts)
        within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return PageReads(
            t_ns=np.repeat(t, counts),
            offset=((starts + within.astype(np.uint64)) * np.uint64(ps)).astype(np.uint64),
            service_ns=np.minimum(np.repeat(svc, counts), 2**32 - 1).astype(np.uint32),
            request=req,
            tid=np.repeat(tid, counts),
        )

    def mark(self) -> int:
        """ns since the mount, on the same clock as ``PageReads.t_ns`` (to mark phases like resume)."""
        return time.monotonic_ns() - self._t0

    # -- protocol ---------------------------------------------------------------------------------

    def _attr(self, node: int) -> bytes:
        now = int(time.time())
        if node == ROOT_ID:
            return _ATTR.pack(ROOT_ID, 0, 0, now, now, now, 0, 0, 0, stat.S_IFDIR | 0o755, 2,
                              os.geteuid(), os.getegid(), 0, 4096, 0)
        return _ATTR.pack(FILE_ID, self.size, self.size // 512, now, now, now, 0, 0, 0,
                          stat.S_IFREG | 0o600, 1, os.geteuid(), os.getegid(), 0, 4096, 0)

    def _reply(self, unique: int, error: int = 0, payload: bytes = b"") -> None:
        msg = _OUT_HDR.pack(_OUT_HDR.size + len(payload), -error, unique) + payload
        try:
            os.write(self._dev_fd, msg)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                raise

    def _serve(self) -> None:
        bufsize = _READ_BUF
        try:
            while True:
                try:
                    buf = os.read(self._dev_fd, bufsize)
                except OSError as exc:
                    if exc.errno == errno.ENODEV:  # unmounted: the connection is gone
                        return
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue
                    raise
                t_in = time.monotonic_ns()
                if len(buf) < _IN_HDR.size:
                    raise FuseError(f"/dev/fuse: short request of {len(buf)} bytes")
                _, opcode, unique, node, _, _, pid, _, _ = _IN_HDR.unpack_from(buf)
                self.requests[opcode] = self.requests.get(opcode, 0) + 1
                if self._handle(opcode, unique, node, pid, buf[_IN_HDR.size:], t_in):
                    return
        except BaseException as exc:  # surfaced through .error: the thread must not die silently
            self.error = exc

    def _handle(self, op: int, unique: int, node: int, pid: int, body: bytes, t_in: int) -> bool:
        if op == READ:
            _, off, size, *_ = _READ_IN.unpack_from(body)
            data = self._read(off, size)
            self._reply(unique, 0, data)
            with self._lock:
                self._t.append(t_in - self._t0)
                self._off.append(off)
                self._len.append(len(data))
                self._svc.append(time.monotonic_ns() - t_in)
                self._tid.append(pid)
        elif op == WRITE:
            _, off, size, *_ = _WRITE_IN.unpack_from(body)
            self._write(off, body[_WRITE_IN.size:_WRITE_IN.size + size])
            self._reply(unique, 0, struct.pack("<II", size, 0))
        elif op == INIT:
            major, minor, _, _ = _INIT_IN.unpack_from(body)
            if major != 7:
                self._reply(unique, errno.EPROTO)
                raise FuseError(f"/dev/fuse: kernel speaks FUSE {major}.{minor}, need 7.x")
            self.proto_minor = min(minor, 31)
            # max_readahead = 0: no readahead, one page per fault (see the module docstring).
            self._reply(unique, 0, _INIT_OUT.pack(7, self.proto_minor, 0, FUSE_BIG_WRITES, 16, 12,
                                                  MAX_WRITE, 1, 0, 0, 0, 0))
        elif op == LOOKUP:
            name = body.split(b"\0", 1)[0]
            if node == ROOT_ID and name == self.name.encode():
                self._reply(unique, 0, struct.pack("<QQQQII", FILE_ID, 0, _VALID_S, _VALID_S, 0, 0)
                            + self._attr(FILE_ID))
            else:
                self._reply(unique, errno.ENOENT)
        elif op in (GETATTR, SETATTR):
            self._reply(unique, 0, struct.pack("<QII", _VALID_S, 0, 0) + self._attr(node))
        elif op in (OPEN, OPENDIR):
            self._reply(unique, 0, _OPEN_OUT.pack(0, 0, 0))
        elif op == READDIR:
            self._reply(unique, 0, b"")
        elif op in (RELEASE, RELEASEDIR, FLUSH, FSYNC, ACCESS):
            self._reply(unique)
        elif op == STATFS:
            blocks = self.size // 4096
            self._reply(unique, 0, _STATFS_OUT.pack(blocks, 0, 0, 2, 0, 4096, 255, 4096, 0))
        elif op in (FORGET, BATCH_FORGET, INTERRUPT):
            pass  # no reply expected
        elif op == DESTROY:
            self._reply(unique)
            return True
        else:  # xattrs, locks, fallocate, lseek …: not supported, the kernel falls back or caches ENOSYS
            self._reply(unique, errno.ENOSYS)
        return False

    def _read(self, off: int, size: int) -> bytes:
        size = max(0, min(size, self.size - off))
        data = bytearray(os.pread(self._src_fd, size, off))
        data.extend(bytes(size - len(data)))
        if self._overlay:
            ps = self.page_size
            for page in range(off // ps, (off + size + ps - 1) // ps):
                over = self._overlay.get(page)
                if over is not None:
                    lo, hi = max(off, page * ps), min(off + size, (page + 1) * ps)
                    data[lo - off:hi - off] = over[lo - page * ps:hi - page * ps]
        return bytes(data)

    def _write(self, off: int, data: bytes) -> None:
        self.writes += 1
        ps = self.page_size
        pos = off
        while pos < off + len(data):
            page = pos // ps
            cur = self._overlay.get(page)
            if cur is None:
                cur = bytearray(os.pread(self._src_fd, ps, page * ps).ljust(ps, b"\0"))
                self._overlay[page] = cur
            hi = min(off + len(data), (page + 1) * ps)
            cur[pos - page * ps:hi - page * ps] = data[pos - off:hi - off]
            pos = hi
