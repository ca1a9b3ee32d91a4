"""Optional native fast path for the commonest fault: one missing data page, served with one copy.

The event loop stays in Python; this ~80-line C function (built with the system C compiler into the
cache on first use, loaded with ctypes, which releases the GIL while it runs) only takes over the
steady state of ``ondemand``/``prefetch`` misses: ``poll`` (uffd, peer pidfd, stop fd), ``read`` one
event, ``UFFDIO_COPY`` one page, record it, repeat: the same syscalls as a plain C server. Anything
else (several events at once, removes, present/removed/hole pages, another region, an ioctl error) is
handed back to the Python code, unchanged. Why: the restore benchmark's per-fault comparison with a
minimal C server showed the interpreter's few microseconds per fault (see docs/uffd.md). Set
``FIRECRACER_UFFD_NATIVE=0`` to use pure Python; without a C compiler the pure-Python path is used.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from firecracer.paths import cache_dir

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

struct fc_rec { uint64_t t_ns, hva, off, flags, fault, svc; };

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define FC_PEER_EXITED (-100000)
#define FC_STOPPED (-100001)

/* Serve single missing-data-page faults in [base, base+size) until anything else arrives, polling
   the uffd, the peer's pidfd and the stop fd like a plain C server. Returns records written (>= 0),
   FC_PEER_EXITED / FC_STOPPED (only when nothing was recorded in this call), or -errno.
   Messages it did not handle are copied to `left` (*nleft of them), untouched. */
long fc_serve(int uffd, int pidfd, int stopfd, uint64_t base, uint64_t size, uint64_t roff,
              uint64_t mem_addr, uint8_t *state, const uint8_t *hole, const int32_t *ws_entry, int shift,
              uint64_t t0, int64_t first_fault, struct fc_rec *out, long max,
              struct uffd_msg *left, long *nleft) {
    const uint64_t ps = 1ull << shift;
    struct uffd_msg msgs[256];
    struct pollfd pf[3] = {{uffd, POLLIN, 0}, {stopfd, POLLIN, 0}, {pidfd, POLLIN, 0}};
    int npf = pidfd >= 0 ? 3 : 2;
    long n = 0;
    *nleft = 0;
    while (n < max) {
        if (poll(pf, npf, -1) < 0) {
            if (errno == EINTR) return n ? n : -EINTR;
            return n ? n : -errno;
        }
        if (pf[1].revents) return n ? n : FC_STOPPED;
        ssize_t r = read(uffd, msgs, sizeof msgs);
        if (r < 0) {
            if (errno == EAGAIN) {
                if (npf == 3 && pf[2].revents) return n ? n : FC_PEER_EXITED;
                continue;
            }
            return n ? n : -errno;
        }
        uint64_t t_read = now_ns();
        long k = r / (long)sizeof msgs[0];
        if (k == 1 && msgs[0].event == UFFD_EVENT_PAGEFAULT) {
            uint64_t page = msgs[0].arg.pagefault.address & ~(ps - 1);
            if (page >= base && page < base + size) {
                uint64_t off = roff + (page - base), idx = off >> shift;
                if (state[idx] == 0 && (!hole || !hole[idx]) && (!ws_entry || ws_entry[idx] < 0)) {
                    struct uffdio_copy cp = {.dst = page, .src = mem_addr + off, .len = ps, .mode = 0};
                    if (ioctl(uffd, UFFDIO_COPY, &cp) == 0) {
                        uint64_t t = now_ns();
                        state[idx] = 1;
                        out[n].t_ns = t - t0;
                        out[n].hva = page;
                        out[n].off = off;
                        out[n].flags = 2 | (msgs[0].arg.pagefault.flags & 1);
                        out[n].fault = (uint64_t)(first_fault + n);
                        out[n].svc = t - t_read;
                        n++;
                        continue;
                    }
                }
            }
        }
        memcpy(left, msgs, (size_t)k * sizeof msgs[0]);
        *nleft = k;
        return n;
    }
    return n;
}
"""

#: One record per page served: matches ``struct fc_rec``.
REC_DTYPE = np.dtype([("t_ns", "<u8"), ("hva", "<u8"), ("off", "<u8"), ("flags", "<u8"), ("fault", "<u8"),
                      ("svc", "<u8")])
MAX_MSGS = 256
PEER_EXITED = -100000
STOPPED = -100001

_lib: ctypes.CDLL | None = None
_tried = False


def _build() -> Path | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    key = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    out = cache_dir() / "uffd" / f"fastpath-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        src = Path(tmp) / "fastpath.c"
        src.write_text(SOURCE)
        so = Path(tmp) / "fastpath.so"
        res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], capture_output=True,
                             text=True, timeout=120, check=False)
        if res.returncode != 0:
            return None
        os.replace(so, out)
    return out


def load() -> ctypes.CDLL | None:
    """The compiled fast path, building it on first use; None if disabled or no compiler works."""
    global _lib, _tried
    if os.environ.get("FIRECRACER_UFFD_NATIVE", "1") == "0":
        return None
    if _tried:
        return _lib
    _tried = True
    try:
        path = _build()
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    f = lib.fc_serve
    f.restype = ctypes.c_long
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                  ctypes.c_uint64,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                  ctypes.c_int64, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p,
                  ctypes.POINTER(ctypes.c_long)]
    _lib = lib
    return lib
