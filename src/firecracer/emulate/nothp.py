"""Make ``madvise(MADV_HUGEPAGE)`` a no-op in a child process (a seccomp filter installed before exec).

Why: QEMU advises ``MADV_HUGEPAGE`` on all guest RAM. On a file mapping that sets ``VM_HUGEPAGE``, and
the kernel's fault path then reads the whole 2 MiB-aligned range around a faulting page *even with
readahead disabled* ("use the readahead code, even if readahead is disabled", mm/filemap.c) — measured
here as 512 consecutive page reads for one touch. The restored VM must fault one page at a time, as
Firecracker's 4 KiB guest memory does, so the advice is dropped: the filter answers that one call with
success without running it. Everything else (other advice values, other syscalls) is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000  # | errno; errno 0 → the call "succeeds" without running
_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_MADVISE_X86_64 = 28
MADV_HUGEPAGE = 14

# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _program() -> bytes:
    # seccomp_data: nr @0, arch @4, ip @8, args[i] @16 + 8*i (low 32 bits first on little-endian)
    return b"".join([
        _insn(_LD_W_ABS, 0, 0, 4),
        _insn(_JEQ_K, 0, 4, _AUDIT_ARCH_X86_64),   # other arch → allow
        _insn(_LD_W_ABS, 0, 0, 0),
        _insn(_JEQ_K, 0, 2, _NR_MADVISE_X86_64),    # not madvise → allow
        _insn(_LD_W_ABS, 0, 0, 16 + 8 * 2),
        _insn(_JEQ_K, 1, 0, MADV_HUGEPAGE),          # advice == MADV_HUGEPAGE → errno 0
        _insn(_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        _insn(_RET_K, 0, 0, _SECCOMP_RET_ERRNO | 0),
    ])


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def supported() -> bool:
    """The filter is written for x86-64 Linux."""
    return platform.system() == "Linux" and platform.machine() == "x86_64"


def drop_hugepage_advice() -> None:
    """Install the filter in the *current* process (use as ``preexec_fn``); raises OSError on failure."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prog = _program()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(e)}")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_SECCOMP): {os.strerror(e)}")
