"""The userfaultfd ABI in Python: ioctl numbers, struct layouts, and thin calls (x86-64 / arm64).

Numbers and layouts are from ``include/uapi/linux/userfaultfd.h`` (``ANCHORS.md`` §4.1). The page
server only reads events and issues COPY / ZEROPAGE / WAKE; creating a uffd and ``UFFDIO_API`` /
``UFFDIO_REGISTER`` are here for tests and tools that play Firecracker's part.

Hot-path calls (:class:`Ops`) reuse one preallocated buffer per ioctl and return ``-errno`` instead
of raising, so the event loop decides what is benign (``EEXIST``), retryable (``EAGAIN``) or fatal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from typing import Final

UFFD_API: Final = 0xAA
USERFAULTFD_IOC_NEW: Final = 0x0000AA00
UFFDIO_API: Final = 0xC018AA3F
UFFDIO_REGISTER: Final = 0xC020AA00
UFFDIO_UNREGISTER: Final = 0x8010AA01
UFFDIO_WAKE: Final = 0x8010AA02
UFFDIO_COPY: Final = 0xC028AA03
UFFDIO_ZEROPAGE: Final = 0xC020AA04

UFFD_EVENT_PAGEFAULT: Final = 0x12
UFFD_EVENT_FORK: Final = 0x13
UFFD_EVENT_REMAP: Final = 0x14
UFFD_EVENT_REMOVE: Final = 0x15
UFFD_EVENT_UNMAP: Final = 0x16
EVENT_NAMES: Final = {0x12: "pagefault", 0x13: "fork", 0x14: "remap", 0x15: "remove", 0x16: "unmap"}

UFFD_PAGEFAULT_FLAG_WRITE: Final = 1 << 0
UFFD_PAGEFAULT_FLAG_WP: Final = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR: Final = 1 << 2

UFFDIO_REGISTER_MODE_MISSING: Final = 1 << 0
UFFDIO_REGISTER_MODE_WP: Final = 1 << 1
UFFDIO_REGISTER_MODE_MINOR: Final = 1 << 2

UFFDIO_COPY_MODE_DONTWAKE: Final = 1 << 0
UFFDIO_ZEROPAGE_MODE_DONTWAKE: Final = 1 << 0

UFFD_FEATURE_EVENT_FORK: Final = 1 << 1
UFFD_FEATURE_EVENT_REMAP: Final = 1 << 2
UFFD_FEATURE_EVENT_REMOVE: Final = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS: Final = 1 << 4
UFFD_FEATURE_EVENT_UNMAP: Final = 1 << 6
UFFD_FEATURE_THREAD_ID: Final = 1 << 8

UFFD_USER_MODE_ONLY: Final = 1
NR_USERFAULTFD: Final = {"x86_64": 323, "aarch64": 282}

#: ``struct uffd_msg`` (32 bytes): event, 3 reserved, then a 24-byte union read as three u64.
MSG: Final = struct.Struct("<BBHIQQQ")
MSG_SIZE: Final = MSG.size
_COPY: Final = struct.Struct("<QQQQq")  # dst, src, len, mode, copy (out)
_RANGE_MODE: Final = struct.Struct("<QQQq")  # start, len, mode, result (out): zeropage
_RANGE: Final = struct.Struct("<QQ")
_S64: Final = struct.Struct("<q")
_API: Final = struct.Struct("<QQQ")
_REGISTER: Final = struct.Struct("<QQQQ")

PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
MAP_PRIVATE: Final = 0x02
MAP_SHARED: Final = 0x01
MAP_ANONYMOUS: Final = 0x20
MAP_POPULATE: Final = 0x8000
MAP_HUGETLB: Final = 0x40000
MAP_NORESERVE: Final = 0x4000
MADV_DONTNEED: Final = 4
MADV_SEQUENTIAL: Final = 2
MADV_WILLNEED: Final = 3

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_MAP_FAILED = ctypes.c_void_p(-1).value


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """``mmap(2)`` returning the address (an int), so ioctls can point at it; ``OSError`` on failure."""
    addr = _libc.mmap(None, length, prot, flags, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        raise _oserror(f"mmap({length} bytes)")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    """``munmap(2)``."""
    if _libc.munmap(ctypes.c_void_p(addr), length) != 0:
        raise _oserror("munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    """``madvise(2)``; with ``MADV_DONTNEED`` on registered memory this raises ``UFFD_EVENT_REMOVE``."""
    if _libc.madvise(ctypes.c_void_p(addr), length, advice) != 0:
        raise _oserror("madvise")


def open_uffd(*, nonblock: bool = True, user_mode_only: bool = False) -> int:
    """A new userfaultfd: ``/dev/userfaultfd`` + ``USERFAULTFD_IOC_NEW`` when usable, else the syscall.

    This is how Firecracker ≥ 1.5 creates it (close-on-exec, non-blocking, kernel faults allowed).
    """
    flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0) | (UFFD_USER_MODE_ONLY if user_mode_only else 0)
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        dev = -1
    if dev >= 0:
        try:
            return fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
        except OSError:
            pass
        finally:
            os.close(dev)
    nr = NR_USERFAULTFD.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"userfaultfd: unknown syscall number on {os.uname().machine}")
    fd = int(_libc.syscall(nr, flags))
    if fd < 0:
        raise _oserror("userfaultfd(2)")
    return fd


def api(fd: int, features: int = 0) -> tuple[int, int]:
    """``UFFDIO_API`` handshake with the kernel; returns ``(features, ioctls)`` it grants."""
    buf = bytearray(_API.pack(UFFD_API, features, 0))
    fcntl.ioctl(fd, UFFDIO_API, buf, True)
    _, feats, ioctls = _API.unpack(buf)
    return feats, ioctls


def register(fd: int, start: int, length: int, mode: int = UFFDIO_REGISTER_MODE_MISSING) -> int:
    """``UFFDIO_REGISTER`` a range; returns the bitmask of ioctls allowed on it."""
    buf = bytearray(_REGISTER.pack(start, length, mode, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, buf, True)
    return int(_REGISTER.unpack(buf)[3])


def unregister(fd: int, start: int, length: int) -> None:
    """``UFFDIO_UNREGISTER`` a range (later faults there are ordinary anonymous faults)."""
    fcntl.ioctl(fd, UFFDIO_UNREGISTER, _RANGE.pack(start, length))


def is_userfaultfd(fd: int) -> bool:
    """Whether ``fd`` is a userfaultfd (``anon_inode:[userfaultfd]`` in /proc/self/fd)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[userfaultfd]"
    except OSError:
        return False


class Ops:
    """COPY / ZEROPAGE / WAKE on one uffd with preallocated buffers; results are ``int``.

    ``copy`` and ``zeropage`` return the bytes installed (``>= 0``, may be short of ``length`` when the
    kernel stopped early: ``EEXIST`` on a later page or a pending non-cooperative event) or
    ``-errno`` when nothing was installed. Not thread-safe: each thread makes its own ``Ops``.
    """

    __slots__ = ("_copy", "_fd", "_range", "_zero")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._copy = bytearray(_COPY.size)
        self._zero = bytearray(_RANGE_MODE.size)
        self._range = bytearray(_RANGE.size)

    def copy(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        """``UFFDIO_COPY`` ``length`` bytes from our address ``src`` to the peer's ``dst``."""
        buf = self._copy
        _COPY.pack_into(buf, 0, dst, src, length, mode, 0)
        try:
            fcntl.ioctl(self._fd, UFFDIO_COPY, buf, True)
        except OSError as exc:
            done = _S64.unpack_from(buf, 32)[0]
            return done if done > 0 else -(exc.errno or errno.EIO)
        return length

    def zeropage(self, dst: int, length: int, mode: int = 0) -> int:
        """``UFFDIO_ZEROPAGE`` over ``[dst, dst+length)`` (maps the shared zero page; no copy)."""
        buf = self._zero
        _RANGE_MODE.pack_into(buf, 0, dst, length, mode, 0)
        try:
            fcntl.ioctl(self._fd, UFFDIO_ZEROPAGE, buf, True)
        except OSError as exc:
            done = _S64.unpack_from(buf, 24)[0]
            return done if done > 0 else -(exc.errno or errno.EIO)
        return length

    def wake(self, start: int, length: int) -> int:
        """``UFFDIO_WAKE`` the threads waiting on faults in the range; 0 or ``-errno``."""
        _RANGE.pack_into(self._range, 0, start, length)
        try:
            fcntl.ioctl(self._fd, UFFDIO_WAKE, self._range)
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        return 0
