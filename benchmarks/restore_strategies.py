#!/usr/bin/env python3
"""Restore latency, faults and bytes per strategy on the probe guest, plus Python vs C per-fault cost.

What it does, in one run on this machine:

1. Builds a probe guest whose working set is N pages (default 16,384 = 64 MiB) laid out the way real
   restores look (REAP: contiguous runs of only 2-3 pages): seeded random runs of 1-3 pages over the whole
   guest memory, visited run by run in a shuffled order. The probe fills them at boot; a trigger byte
   makes it read them all and report ``errors`` (words that did not hold the pattern).
2. Boots it, takes a Full snapshot (all-zero pages punched out: a sparse memory file).
3. Records a trace with one ``ondemand`` restore (this writes ``rec.npz`` and the working set ``rec.ws``).
4. For each repetition, restores once per strategy (interleaved, so drift hits all alike) and measures
   ``PUT /snapshot/load`` start → the probe's result line after the trigger byte:
   ``file`` (File backend, page cache dropped), ``file-warm`` (File backend, memory file in the page
   cache: the floor), ``ondemand``, ``fault-around:16``, ``prefetch`` (from ``rec.npz``) and ``eager``
   (all uffd rows with the page cache dropped); ``@touch``/``@file`` load the working set in strict
   first-touch or file-offset order instead of first-touch runs (for ``prefetch-background`` the demand
   faults left while loading races the vCPUs are the ``demand`` column: misses + late); ``readahead``
   and ``readahead-background`` are the File backend with the working set read into the page cache
   before the load, or racing the vCPUs (``vmm/readahead.py``; its time is in the latency). Dropping =
   ``posix_fadvise(DONTNEED)`` on the memory
   file, vmstate and working-set file (residency is checked with ``mincore`` and reported), or
   ``--drop-caches`` for ``echo 3 > /proc/sys/vm/drop_caches``.
   Rows ending in ``-2m`` restore the same probe booted with ``huge_pages = "2M"`` (its own snapshot and
   recording, ``rec-2m.npz``): 2 MiB pages, same working set. The benchmark grows the 2 MiB pool for
   them (``nr_hugepages``, put back on every exit path, SIGKILL included) and touches its pages once.
   ``floor_4k_ratio`` = a row's latency ÷ the ``file-warm`` row's. A row may carry page-server knobs:
   ``+tN`` (N install threads), ``+async`` (install while the working-set file is still being read).
   Rows ending in ``-zstd`` restore a copy of the 4 KiB snapshot compressed with ``vm compress``
   (``mem.fcz``, zstd frames; the raw ``mem`` removed), through the page server, with their own
   recording (``rec-zstd.npz``, its working set built from the compressed file); the page cache is
   dropped for ``mem.fcz`` like for ``mem``. The script prints the compression ratio.
5. Builds a minimal C page server and a C "Firecracker" (same JSON + SCM_RIGHTS hand-off) with gcc and
   measures per-fault cost of the C server and of ``firecracer uffd serve`` on the same faults.

Faults/bytes: uffd rows report the server's faults and bytes installed; File rows report the Firecracker
process's host page faults (minflt+majflt, /proc/PID/stat) and bytes read from storage (/proc/PID/io).

Usage: ``python benchmarks/restore_strategies.py [--pages 16384] [--repeat 3] [--json]``
(``--c-repeat 0`` skips step 5; ``--strategies a,b,…`` picks rows; ``BENCH_TIMEOUT=S`` bounds the wait
for each result line, default 300 s.)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PS = 4096
MIB = 1 << 20
STRATEGIES = ["file", "file-warm", "ondemand", "fault-around:16", "prefetch", "prefetch-background", "eager",
              "prefetch@touch", "prefetch@file", "prefetch-background@touch", "prefetch-background@file",
              "readahead", "readahead-background",
              "ondemand-zstd", "fault-around:16-zstd", "prefetch-zstd",
              "ondemand-2m", "prefetch-2m", "prefetch-background-2m", "eager-2m"]
HUGE = "-2m"  # suffix: the same probe, booted with huge_pages="2M", restored through the page server
ZSTD = "-zstd"  # suffix: the same snapshot with its memory compressed (mem.fcz), served by the page server

C_HANDLER = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Minimal Firecracker uffd page server: one page per fault with UFFDIO_COPY, like the on-demand
   example handler. Exits when Firecracker closes the socket (>= 1.12 keeps it open). */
static long long jnum(const char *s, const char *key) {
    const char *p = strstr(s, key);
    if (!p) return -1;
    p += strlen(key);
    while (*p == ' ' || *p == ':' || *p == '"') p++;
    return strtoll(p, 0, 10);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s SOCKET MEMFILE\n", argv[0]); return 2; }
    int mfd = open(argv[2], O_RDONLY);
    struct stat st;
    if (mfd < 0 || fstat(mfd, &st)) { perror(argv[2]); return 2; }
    char *mem = mmap(0, st.st_size, PROT_READ, MAP_PRIVATE, mfd, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1)) { perror("bind"); return 2; }
    fprintf(stderr, "c handler: listening on %s\n", argv[1]);
    int c = accept(ls, 0, 0);
    char buf[65536], cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {buf, sizeof buf - 1};
    struct msghdr m = {0};
    m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = cbuf; m.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(c, &m, 0);
    if (n <= 0) { fprintf(stderr, "no handshake\n"); return 3; }
    buf[n] = 0;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    if (!cm) { fprintf(stderr, "no fd\n"); return 4; }
    int uffd;
    memcpy(&uffd, CMSG_DATA(cm), sizeof uffd);
    struct { uint64_t base, size, off; } R[16];
    int nr = 0;
    char *p = buf;
    while ((p = strchr(p, '{')) && nr < 16) {
        char *e = strchr(p, '}');
        if (!e) break;
        *e = 0;
        R[nr].base = jnum(p, "\"base_host_virt_addr\"");
        R[nr].size = jnum(p, "\"size\"");
        R[nr].off = jnum(p, "\"offset\"");
        nr++;
        p = e + 1;
    }
    struct pollfd pf[2] = {{uffd, POLLIN, 0}, {c, POLLIN, 0}};
    struct uffd_msg msgs[64];
    long faults = 0;
    for (;;) {
        if (poll(pf, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (pf[1].revents) {
            char t;
            ssize_t r = recv(c, &t, 1, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN)) break;
        }
        ssize_t r;
        do {  /* like ours: read again only while the buffer came back full */
            r = read(uffd, msgs, sizeof msgs);
            if (r <= 0) break;
            for (int i = 0; i < (int)(r / sizeof msgs[0]); i++) {
                if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
                uint64_t addr = msgs[i].arg.pagefault.address & ~4095ULL;
                for (int j = 0; j < nr; j++) {
                    if (addr < R[j].base || addr >= R[j].base + R[j].size) continue;
                    struct uffdio_copy cp = {.dst = addr, .len = 4096, .mode = 0};
                    cp.src = (uint64_t)(mem + R[j].off + addr - R[j].base);
                    if (ioctl(uffd, UFFDIO_COPY, &cp) < 0 && errno != EEXIST) {
                        perror("UFFDIO_COPY");
                        return 5;
                    }
                    faults++;
                    break;
                }
            }
        } while (r == (ssize_t)sizeof msgs);
    }
    fprintf(stderr, "c handler: faults=%ld\n", faults);
    return 0;
}
"""

C_PEER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Plays Firecracker: registers NPAGES of anonymous memory, sends the v1.12 hand-off, then reads one
   byte of every page (one fault each) and prints the mean ns per fault. */
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s SOCKET NPAGES\n", argv[0]); return 2; }
    size_t np = strtoul(argv[2], 0, 10), len = np * 4096;
    char *m = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    int uffd = dev >= 0 ? ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK)
                        : (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) { perror("userfaultfd"); return 2; }
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(uffd, UFFDIO_API, &api)) { perror("UFFDIO_API"); return 2; }
    struct uffdio_register reg = {.range = {(uint64_t)m, len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("UFFDIO_REGISTER"); return 2; }
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (connect(c, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 2; }
    char js[512];
    int jl = snprintf(js, sizeof js, "[{\"base_host_virt_addr\": %lu, \"size\": %zu, \"offset\": 0, "
                      "\"page_size\": 4096, \"page_size_kib\": 4096}]", (unsigned long)m, len);
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {js, (size_t)jl};
    struct msghdr msg = {0};
    msg.msg_iov = &iov; msg.msg_iovlen = 1; msg.msg_control = cbuf; msg.msg_controllen = sizeof cbuf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS; cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &uffd, sizeof uffd);
    if (sendmsg(c, &msg, 0) != jl) { perror("sendmsg"); return 2; }
    struct timespec t0, t1;
    volatile unsigned long sum = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < np; i++) sum += (unsigned char)m[i * 4096];
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("%.1f %lu\n", ns / np, sum);
    close(c);
    return 0;
}
"""


# ---------------------------------------------------------------------------------------------------
# page cache control

_libc = ctypes.CDLL(None, use_errno=True)


def drop_file(path: Path) -> None:
    """Evict a file's clean pages from the page cache (posix_fadvise DONTNEED after fsync)."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(path: Path) -> float:
    """Fraction of the file's *data* pages resident in the page cache (mmap + mincore, no page touched)."""
    from firecracer.uffd import abi

    size = path.stat().st_size
    if size == 0:
        return 0.0
    n = -(-size // PS)
    vec = (ctypes.c_ubyte * n)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = abi.mmap(size, abi.PROT_READ, abi.MAP_PRIVATE, fd, 0)
    finally:
        os.close(fd)
    try:
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        rc = _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec)
    finally:
        abi.munmap(addr, size)
    if rc != 0:
        return float("nan")
    res = (np.frombuffer(bytes(vec), dtype=np.uint8) & 1).astype(bool)
    data = data_mask(path, n)
    return float(res[data].mean()) if data.any() else 0.0


def data_mask(path: Path, n: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Pages of the file that hold data (not holes)."""
    mask = np.zeros(n, dtype=bool)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            mask[d // PS: -(-h // PS)] = True
            pos = h
    finally:
        os.close(fd)
    return mask


def warm_file(path: Path) -> None:
    """Read a file so its data is in the page cache."""
    with open(path, "rb") as fh:
        while fh.read(8 << 20):
            pass


# ---------------------------------------------------------------------------------------------------
# probe restores

def layout(pages: int, mem_mib: int, seed: int) -> tuple[list[int], list[int]]:
    """(fill set, access order): runs of 1-3 pages at random places, visited run by run, shuffled."""
    rng = np.random.default_rng(seed)
    lo, hi = 8192, (mem_mib << 20) // PS - 4  # 32 MiB .. end of RAM (< 3 GiB: no hole to skip)
    taken = np.zeros(hi + 4, dtype=bool)
    runs: list[list[int]] = []
    total = 0
    while total < pages:
        n = int(rng.integers(1, 4))
        s = int(rng.integers(lo, hi - n))
        if taken[s - 1: s + n + 1].any():
            continue
        taken[s: s + n] = True
        n = min(n, pages - total)
        runs.append(list(range(s, s + n)))
        total += n
    order = rng.permutation(len(runs))
    trace = [p for i in order for p in runs[i]]
    return sorted(trace), trace


def wait_result(vm: Any, since: int, timeout: float) -> str:
    """Poll the console every 0.2 ms for the probe's result line (finer than the library's wait)."""
    deadline = time.monotonic() + timeout
    reader = vm.console.reader(since)
    while time.monotonic() < deadline:
        for line, _, _ in reader.poll():
            i = line.find("PROBE RESULT")
            if i >= 0:
                return line[i:]
        if not vm.alive():
            raise RuntimeError(f"Firecracker died: {vm.guest_death()}")
        time.sleep(0.0002)
    raise TimeoutError("no PROBE RESULT line")


def proc_counters(pid: int | None) -> tuple[int, int]:
    """(minflt + majflt, read_bytes) of a process."""
    if not pid:
        return 0, 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        faults = int(fields[7]) + int(fields[9])
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return faults, int(io["read_bytes"])
    except (OSError, ValueError, IndexError, KeyError):
        return 0, 0


def one_restore(snap: Path, fc: Path, strategy: str, work: Path, rec: Path, tag: str, *,
                cold: bool, page_server: list[str] | None = None,
                trace: Path | None = None) -> dict[str, Any]:
    from firecracer.uffd.metrics import ServerMetrics
    from firecracer.vmm.config import MemBackend
    from firecracer.vmm.machine import MicroVM
    from firecracer.vmm.probe import parse_line

    strategy, *knobs = strategy.split("+")  # e.g. prefetch-2m+t2: page-server tuning for this row only
    env = {"FIRECRACER_UFFD_INSTALL_THREADS": "", "FIRECRACER_UFFD_WS_POPULATE": "",
           "FIRECRACER_UFFD_WS_READ_AHEAD": "1"}
    for k in knobs:
        if k.startswith("t") and k[1:].isdigit():
            env["FIRECRACER_UFFD_INSTALL_THREADS"] = k[1:]
        elif k == "async":
            env["FIRECRACER_UFFD_WS_POPULATE"] = "async"
        elif k == "inwindow":
            env["FIRECRACER_UFFD_WS_READ_AHEAD"] = "0"
        else:
            raise SystemExit(f"unknown row option +{k} (+tN: N install threads, +async: overlap the "
                             "working-set read with installing, +inwindow: start reading the working set "
                             "at the hand-off, not when the page server starts)")
    os.environ.update(env)  # the page server inherits it
    if strategy.endswith(HUGE):  # 2 MiB rows: their own snapshot and recording, same strategies
        strategy = strategy.removesuffix(HUGE)
        snap, rec = snap.with_name(snap.name + HUGE), rec.with_name(rec.stem + HUGE + rec.suffix)
    mem = snap / "mem"
    if strategy.endswith(ZSTD):  # the compressed copy of the 4 KiB snapshot: its own recording
        strategy = strategy.removesuffix(ZSTD)
        snap, rec = snap.with_name(snap.name + ZSTD), rec.with_name(rec.stem + ZSTD + rec.suffix)
        mem = snap / "mem.fcz"
    files = [mem, snap / "vmstate", *(rec.with_name(f"{rec.stem}{s}.ws") for s in ("", ".touch", ".file"))]
    if cold:
        for f in files:
            drop_file(f)
    else:
        warm_file(mem)
    resident = resident_fraction(mem)
    metrics = work / f"{tag}.json"
    metrics.unlink(missing_ok=True)
    run_dir = work / "vms" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    kw: dict[str, Any] = {}
    if strategy.startswith("readahead"):
        from firecracer.vmm.readahead import Readahead

        kw.update(backend=MemBackend.FILE, readahead=Readahead(rec, strategy == "readahead-background"))
    elif strategy.startswith("file"):
        kw["backend"] = MemBackend.FILE
    else:
        kw["backend"] = MemBackend.UFFD
        if page_server:
            kw["page_server"] = [*page_server[:1], str(run_dir / "uffd.sock"), str(mem.resolve())]
        else:
            strat = f"{strategy}:{rec}" if strategy.startswith("prefetch") else strategy
            kw.update(strategy=strat, metrics=metrics, trace=trace)
    vm = MicroVM.restore(snap, firecracker=fc, name=tag, run_dir=run_dir, **kw)
    try:
        t_restored = time.perf_counter()
        since = vm.console.size()
        vm.send_serial(b"t")
        line = wait_result(vm, since, float(os.environ.get("BENCH_TIMEOUT", "300")))
        t_done = time.perf_counter()
        faults, read_bytes = proc_counters(vm.pid)
    finally:
        vm.kill()
    res = parse_line(line)
    ra = vm.readahead.wait(60) if vm.readahead is not None else None
    out: dict[str, Any] = {
        "latency_ms": vm.timings_ms.get("readahead", 0.0) + vm.timings_ms["load_snapshot"]
        + (t_done - t_restored) * 1000,
        "load_ms": vm.timings_ms["load_snapshot"], "errors": getattr(res, "errors", -1),
        "pages": getattr(res, "pages", -1), "resident_before": round(resident, 4),
        "walk_cycles": getattr(res, "cycles", -1),
    }
    if strategy.startswith(("file", "readahead")):
        out.update(faults=faults, bytes=read_bytes)
        if ra is not None:
            out["server"] = {"readahead_ms": ra.ms, "readahead_bytes": ra.bytes, "readahead_reads": ra.reads}
    elif page_server:
        log = (run_dir / "uffd.log").read_text(errors="replace") if (run_dir / "uffd.log").exists() else ""
        nf = [int(x.split("=")[1]) for x in log.split() if x.startswith("faults=")]
        out.update(faults=nf[-1] if nf else -1, bytes=(nf[-1] if nf else 0) * PS)
    else:
        deadline = time.monotonic() + 30
        while not metrics.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        m = ServerMetrics.read(metrics)
        s = m.sessions[0]
        out.update(faults=s.faults, bytes=s.bytes_served, ok=m.ok, server=s.install, latency_us=s.latency_us,
                   zstd=s.extra.get("compressed"))
    return out


# ---------------------------------------------------------------------------------------------------
# per-fault: C server vs ours, same C peer

def make_compressed(snap: Path, out: Path) -> dict[str, Any]:
    """``out``: a copy of snapshot ``snap`` (same id, so traces match) compressed by ``vm compress``; its
    ``snapshot.json`` record (ratio, sizes, times)."""
    from firecracer.vmm.snapshot import Snapshot, compress_snapshot

    if not (out / "snapshot.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for f in ("vmstate", "snapshot.json"):
            shutil.copy2(snap / f, out / f)
        subprocess.run(["cp", "--sparse=always", str(snap / "mem"), str(out / "mem")], check=True)
        compress_snapshot(Snapshot.load(out))
    rec = Snapshot.load(out).compressed
    assert rec is not None
    return rec


def build_c(work: Path) -> tuple[Path, Path]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise SystemExit("gcc is needed to build the C baseline handler")
    out = []
    for name, src in (("c_handler", C_HANDLER), ("c_peer", C_PEER)):
        (work / f"{name}.c").write_text(src)
        subprocess.run([cc, "-O2", "-o", str(work / name), str(work / f"{name}.c")], check=True, timeout=120)
        out.append(work / name)
    return out[0], out[1]


def per_fault(server: list[str], peer: Path, sock: Path, pages: int,
              settle: float = 0.0) -> tuple[float, float]:
    """(µs per fault seen by the C peer, server CPU seconds in total) for one server run.

    ``settle``: seconds between the server's ready line and the first fault, so its start-up CPU burst
    (Python imports) does not count against it in the scheduler while it is measured.
    """
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    reaped = False
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stderr], [], [], 1)
            if r and "listening on" in proc.stderr.readline():
                break
        else:
            raise RuntimeError(f"{server[0]} did not start")
        time.sleep(settle)
        res = subprocess.run([str(peer), str(sock), str(pages)], capture_output=True, text=True, timeout=300,
                             check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                reaped = True
                break
            time.sleep(0.005)
        else:
            raise RuntimeError(f"{server[0]} did not exit after its peer")
        return float(res.stdout.split()[0]) / 1000.0, usage.ru_utime + usage.ru_stime
    finally:
        if not reaped and proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------

def compute_checks(st: dict[str, Any]) -> dict[str, Any]:
    """The issue's bars: prefetch vs ondemand (speed-up, fewer faults) and excess over the warm floor."""
    checks: dict[str, Any] = {}
    for name in ("prefetch", "prefetch-background"):
        if name not in st:
            continue
        pf = st[name]
        if "ondemand" in st:
            od = st["ondemand"]
            checks[f"{name}_speedup_vs_ondemand"] = round(od["latency_ms_p50"] / pf["latency_ms_p50"], 2)
            checks[f"{name}_fault_reduction"] = round(1 - pf["faults"] / max(1, od["faults"]), 4)
        if {"file", "file-warm"} <= st.keys():
            floor = st["file-warm"]["latency_ms_p50"]
            fx = round(st["file"]["latency_ms_p50"] - floor, 1)
            px = round(pf["latency_ms_p50"] - floor, 1)
            checks["file_cold_excess_ms"] = fx
            checks[f"{name}_excess_ms"] = px
            checks[f"{name}_excess_over_file_excess"] = round(px / fx, 3) if fx > 0 else None
    for name in ("ondemand", "fault-around:16", "prefetch", "prefetch-background", "eager"):
        if name in st and name + ZSTD in st:  # issue 23: compressed prefetch within 1.2x of uncompressed
            ratio = round(st[name + ZSTD]["latency_ms_p50"] / st[name]["latency_ms_p50"], 3)
            checks[f"{name}{ZSTD}_over_{name}"] = ratio
            if name == "prefetch":
                checks[f"{name}{ZSTD}_meets_bar"] = ratio <= 1.2
    if "file-warm" in st:  # the bars: prefetch-2m below the 4 KiB floor, prefetch within 1.1x of it
        floor = st["file-warm"]["latency_ms_p50"]
        for name, bar in (("prefetch", 1.1), ("prefetch-2m", 1.0)):
            if name in st:
                ratio = round(st[name]["latency_ms_p50"] / floor, 3)
                checks[f"{name}_floor_4k_ratio"] = ratio
                checks[f"{name}_meets_bar"] = ratio <= bar if name == "prefetch" else ratio < bar
        huge = [n for n in st if n.endswith(HUGE)]
        if huge:
            best = min(huge, key=lambda n: st[n]["latency_ms_p50"])
            checks["best_2m"] = best
            checks["best_2m_floor_4k_ratio"] = round(st[best]["latency_ms_p50"] / floor, 3)
    return checks


def first_touch_costs(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What one first touch costs, from the rows themselves (medians over repetitions).

    ``*_walk_us_per_4k_page``: the guest's own walk (the probe's TSC cycles from the trigger byte to its
    result) per 4 KiB page it read: with everything installed before resume (prefetch, eager) this is what
    the host's nested paging charges per first guest touch, for 4 KiB and for 2 MiB backing alike.
    ``ondemand-2m``: the server's per-fault service time (read the event, ``UFFDIO_COPY`` of 2 MiB, done)
    and (latency - load) / faults, i.e. everything one 2 MiB fault costs end to end.
    ``*_install_us_per_page``: the page server's install time per page before resume.
    """
    out: dict[str, Any] = {}
    od = results.get("ondemand-2m") or []
    if od:
        out["ondemand_2m_us_per_fault_end_to_end"] = round(statistics.median(
            (r["latency_ms"] - r["load_ms"]) * 1e3 / max(1, r["faults"]) for r in od), 1)
        svc = [r["latency_us"].get("p50") for r in od if r.get("latency_us")]
        if svc:
            out["ondemand_2m_server_us_per_fault_p50"] = round(statistics.median(svc), 1)
    for name in ("prefetch", "prefetch-2m"):  # the page server's install time per page it installed
        per = [r["server"]["install_ms"] * 1e3 / r["server"]["installed"] for r in results.get(name) or []
               if r.get("server", {}).get("installed")]
        if per:
            out[f"{name}_install_us_per_page"] = round(statistics.median(per), 2)
    for name in ("file-warm", "prefetch", "eager", "prefetch-2m", "eager-2m"):  # the guest's own walk
        rs = results.get(name) or []
        if rs:
            out[f"{name}_walk_us_per_4k_page"] = round(statistics.median(
                r["walk_cycles"] / tsc_khz() * 1e3 / max(1, r["pages"]) for r in rs), 2)
    return out


def warm_pool(pages: int) -> float:
    """Touch ``pages`` pages of the 2 MiB pool once (µs per page): the host's hypervisor backs a page the
    first time it is used, which would otherwise land on whichever row runs first. A host that reserves its
    pool at boot has them backed; so do we. Returns the first-touch cost per page that this measured."""
    from firecracer.uffd import abi

    length = pages * (2 << 20)
    t0 = time.perf_counter()
    addr = abi.mmap(length, abi.PROT_READ | abi.PROT_WRITE,
                    abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_HUGETLB | abi.MAP_POPULATE)
    dt = time.perf_counter() - t0
    abi.munmap(addr, length)
    return dt / pages * 1e6


def tsc_khz() -> float:
    """The TSC rate the probe's ``cycles`` count in (kHz, so cycles / tsc_khz() = ms): the kernel's
    ``tsc: Detected … MHz`` (dmesg), else ``cpu MHz`` of /proc/cpuinfo."""
    import re

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=False).stdout
        m = re.search(r"tsc: (?:Refined TSC clocksource calibration|Detected): ([\d.]+) MHz", out)
        if m:
            return float(m.group(1)) * 1000
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) * 1000
    return float("nan")


def _term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * PS / (1 << 30), 1),
            "kvm": "PVM (nested_pvm)" if "nested_pvm" in _read("/proc/cmdline") + _read("/proc/modules")
            else "kvm"}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=16384, help="working-set pages touched after restore")
    ap.add_argument("--mem-mib", type=int, default=1024, help="guest memory")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--c-pages", type=int, default=5000, help="faults per per-fault measurement")
    ap.add_argument("--c-repeat", type=int, default=15, help="alternating C/Python measurements (median)")
    ap.add_argument("--settle", type=float, default=4.0, help="seconds between a per-fault server's "
                    "ready line and the first fault (same for C and Python)")
    ap.add_argument("--firecracker", help="binary (default: newest installed >= 1.8)")
    ap.add_argument("--workdir", help="keep files here (default: a temp dir on disk, removed)")
    ap.add_argument("--drop-caches", action="store_true", help="echo 3 > /proc/sys/vm/drop_caches "
                    "instead of posix_fadvise on our files")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--json-out", help="also write the JSON summary to this file")
    ap.add_argument("--smoke", action="store_true", help="seconds, not minutes: a 128 MiB guest, 256 pages, "
                    "one repetition of the 4 KiB strategies, 200 faults per per-fault run (the test suite "
                    "runs this so the script cannot rot); its numbers mean nothing")
    args = ap.parse_args()
    if args.smoke:
        args.pages, args.mem_mib, args.repeat = 256, 128, 1
        args.c_pages, args.c_repeat, args.settle = 200, 1, 0.5
        args.strategies = ",".join(s for s in args.strategies.split(",") if not s.endswith(HUGE))

    from firecracer.fcversion import firecracker_version
    from firecracer.vmm.binary import installed_binaries
    from firecracer.vmm.probe import build_probe
    from firecracer.vmm.probe.run import boot_probe

    fc = Path(args.firecracker) if args.firecracker else None
    if fc is None:
        for p in installed_binaries().values():
            if firecracker_version(p).at_least(1, 8):
                fc = p
    if fc is None:
        raise SystemExit("no Firecracker >= 1.8 installed")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fcr-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FIRECRACER_STATE", str(work / "state"))
    strategies = args.strategies.split(",")
    log = sys.stderr

    def say(msg: str) -> None:
        print(msg, file=log, flush=True)

    huge = any(s.split("+")[0].endswith(HUGE) for s in strategies)
    signal.signal(signal.SIGTERM, _term)  # unwind like Ctrl-C: the finally blocks below run
    reservation = None
    pool_touch: float | None = None
    try:
        if huge:  # the pool for one 2 MiB guest at a time (boot, then each restore), given back at the end
            from firecracer.hugepages import Reservation, pages_for

            reservation = Reservation(pages_for(args.mem_mib) + 16)  # margin: other users of the pool
            pool_touch = warm_pool(pages_for(args.mem_mib) + 16)
            say(f"huge pages: {reservation.added} added to the pool for this run (given back at exit); "
                f"first touch of the pool's pages {pool_touch:.0f} µs per 2 MiB page")
        fill, order = layout(args.pages, args.mem_mib, args.seed)
        runs_in_order = 1 + int(np.count_nonzero(np.diff(np.array(order)) != 1))
        elf = build_probe(order, fill, samples=2)
        say(f"probe: {len(fill)} pages in {runs_in_order} runs "
            f"(mean {len(order) / runs_in_order:.2f} pages), "
            f"guest {args.mem_mib} MiB, Firecracker {firecracker_version(fc)}")
        snap = work / "snap"
        rec = work / "rec.npz"
        for suffix in ("", HUGE) if huge else ("",):
            s_dir, r_path = work / f"snap{suffix}", work / f"rec{suffix}.npz"
            if not (s_dir / "snapshot.json").exists():
                vm = boot_probe(elf, fc, mem_size_mib=args.mem_mib, timeout=300,
                                huge_pages="2M" if suffix else None)
                try:
                    vm.snapshot(s_dir, punch_holes=True)
                finally:
                    vm.kill()
            r = one_restore(snap, fc, "ondemand" + suffix, work, rec, "record" + suffix, cold=True,
                            trace=r_path)
            if r["errors"] != 0 or not r_path.with_suffix(".ws").exists():
                raise SystemExit(f"recording restore{suffix} failed: {r}")
            say(f"recorded {r_path} ({r['faults']} faults in the warm-up restore)")
        compression = None
        if any(s.split("+")[0].endswith(ZSTD) for s in strategies):
            compression = c = make_compressed(snap, snap.with_name(snap.name + ZSTD))
            say(f"compressed {snap.name}{ZSTD}/mem.fcz: {c['compressed_bytes'] / MIB:.1f} MiB for "
                f"{c['data_bytes'] / MIB:.1f} MiB of data (ratio {c['ratio']}, {c['frame_size'] >> 10} KiB "
                f"frames, level {c['level']}, {c['compress_ms']:.0f} ms)")
            r_path = work / f"rec{ZSTD}.npz"
            r = one_restore(snap, fc, "ondemand" + ZSTD, work, rec, "record" + ZSTD, cold=True, trace=r_path)
            if r["errors"] != 0 or not r_path.with_suffix(".ws").exists():
                raise SystemExit(f"recording restore{ZSTD} failed: {r}")
            say(f"recorded {r_path} ({r['faults']} faults in the warm-up restore)")

        results: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
        khz = tsc_khz()
        for rep in range(args.repeat):
            for s in strategies:
                if args.drop_caches and s != "file-warm":
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
                tag = f"{s.replace(':', '').replace('+', '-').replace('@', '-')}-{rep}"
                res = one_restore(snap, fc, s, work, rec, tag, cold=s != "file-warm")
                results[s].append(res)
                walk = res["walk_cycles"] / khz
                say(f"  rep {rep} {s:26s} {res['latency_ms']:9.1f} ms  walk {walk:7.1f} ms  "
                    f"faults {res['faults']:7d}  errors {res['errors']}  "
                    f"resident-before {res['resident_before']:.2f}")
        if reservation is not None:
            reservation.close()

        c_handler, c_peer = build_c(work)
        pagesf = work / "cmem"
        rng = np.random.default_rng(1)
        pagesf.write_bytes(rng.integers(0, 256, args.c_pages * PS, dtype=np.uint8).tobytes())
        warm_file(pagesf)
        one = work / "cmem1"  # a 1-page run measures the servers' fixed CPU cost (Python start-up)
        one.write_bytes(b"\1" * PS)
        c_us: list[float] = []
        py_us: list[float] = []
        c_cpu: list[float] = []
        py_cpu: list[float] = []
        sock = work / "pf.sock"

        def c_cmd(f: Path) -> list[str]:
            return [str(c_handler), str(sock), str(f)]

        def py_cmd(f: Path) -> list[str]:
            return [sys.executable, "-m", "firecracer", "uffd", "serve", str(sock), str(f), "-q"]

        for _ in range(args.c_repeat):
            for cmd, us, cpu in ((c_cmd, c_us, c_cpu), (py_cmd, py_us, py_cpu)):
                wall, total = per_fault(cmd(pagesf), c_peer, sock, args.c_pages, args.settle)
                _, fixed = per_fault(cmd(one), c_peer, sock, 1)
                us.append(wall)
                cpu.append(max(0.0, total - fixed) / args.c_pages * 1e6)
        say(f"per fault wall: C {[round(x, 1) for x in c_us]} µs, Python {[round(x, 1) for x in py_us]} µs")
        say(f"server CPU per fault: C {[round(x, 1) for x in c_cpu]} µs, "
            f"Python {[round(x, 1) for x in py_cpu]} µs")
    finally:
        if reservation is not None:
            reservation.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, Any] = {"strategies": {}, "machine": machine(), "pages": args.pages,
                               "mem_mib": args.mem_mib, "repeat": args.repeat,
                               "firecracker": str(firecracker_version(fc)), "runs_mean_pages":
                               round(len(order) / runs_in_order, 2)}
    for s, rs in results.items():
        lat = [r["latency_ms"] for r in rs]
        summary["strategies"][s] = {
            "latency_ms_p50": round(statistics.median(lat), 1), "latency_ms_all": [round(x, 1) for x in lat],
            "faults": int(statistics.median([r["faults"] for r in rs])),
            "bytes": int(statistics.median([r["bytes"] for r in rs])),
            "errors": max(r["errors"] for r in rs),
            "resident_before_max": max(r["resident_before"] for r in rs),
            **({"server": rs[-1]["server"]} if rs and rs[-1].get("server") else {}),
            "walk_ms_p50": round(statistics.median(r["walk_cycles"] for r in rs) / tsc_khz(), 1),
            # the restore's own cost: latency minus the guest's walk (which swings with the host's load)
            "overhead_ms_p50": round(statistics.median(r["latency_ms"] - r["walk_cycles"] / tsc_khz()
                                                       for r in rs), 1),
        }
        demand = [r["server"]["misses"] + r["server"]["late"] for r in rs
                  if isinstance(r.get("server"), dict) and "late" in r["server"]]
        if demand:  # faults the guest still took (prefetch: outside the set; background: before its install)
            summary["strategies"][s]["demand_faults_p50"] = int(statistics.median(demand))
        for key in ("ws_read_ms", "install_ms", "eager_ms", "readahead_ms"):  # the helpers' own times
            vals = [r["server"][key] for r in rs if isinstance(r.get("server"), dict) and key in r["server"]]
            if vals:
                summary["strategies"][s][f"{key}_p50"] = round(statistics.median(vals), 1)
        for key in ("frames_decompressed", "decompress_ms"):  # what serving mem.fcz cost (-zstd rows)
            vals = [r["zstd"][key] for r in rs if isinstance(r.get("zstd"), dict)]
            if vals:
                summary["strategies"][s][f"{key}_p50"] = round(statistics.median(vals), 1)
    if compression is not None:
        summary["compression"] = compression
    if c_us:
        summary["per_fault_us"] = {"c": round(statistics.median(c_us), 2),
                                   "python": round(statistics.median(py_us), 2),
                                   "c_all": [round(x, 2) for x in c_us],
                                   "python_all": [round(x, 2) for x in py_us]}
        summary["python_over_c_per_fault"] = round(statistics.median(py_us) / statistics.median(c_us), 3)
        summary["per_fault_us"]["pairwise_ratio_median"] = round(statistics.median(
            p / c for p, c in zip(py_us, c_us, strict=True)), 3)
        summary["per_fault_us"]["min_ratio"] = round(min(py_us) / min(c_us), 3)
        summary["server_cpu_us_per_fault"] = {"c": round(statistics.median(c_cpu), 2),
                                              "python": round(statistics.median(py_cpu), 2)}
    if "file-warm" in summary["strategies"]:  # every row's p50 as a ratio to the floor
        floor = summary["strategies"]["file-warm"]["latency_ms_p50"]
        for v in summary["strategies"].values():
            v["floor_4k_ratio"] = round(v["latency_ms_p50"] / floor, 3)
    summary["first_touch"] = first_touch_costs(results)
    if pool_touch is not None:
        summary["first_touch"]["fresh_pool_page_us"] = round(pool_touch, 1)
    st = summary["strategies"]
    summary["checks"] = compute_checks(st)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"\nrestore → result latency, {args.pages} pages (mean run {summary['runs_mean_pages']} pages), "
          f"guest {args.mem_mib} MiB, {args.repeat} repeats, Firecracker {summary['firecracker']}")
    print(f"{'strategy':26s} {'p50 ms':>9s} {'÷floor':>7s} {'walk ms':>8s} {'other ms':>8s} {'faults':>8s} "
          f"{'demand':>7s} {'MiB':>8s} {'errors':>6s}  all ms")
    for s, v in st.items():
        print(f"{s:26s} {v['latency_ms_p50']:9.1f} {v.get('floor_4k_ratio', float('nan')):7.3f} "
              f"{v['walk_ms_p50']:8.1f} {v['overhead_ms_p50']:8.1f} {v['faults']:8d} "
              f"{v.get('demand_faults_p50', ''):>7} {v['bytes'] / (1 << 20):8.1f} {v['errors']:6d}  "
              f"{v['latency_ms_all']}")
    if c_us:
        pf = summary["per_fault_us"]
        print(f"per-fault round trip (C peer, {args.c_pages} faults, median of {args.c_repeat}): C {pf['c']} "
              f"µs, Python {pf['python']} µs, ratio {summary['python_over_c_per_fault']} "
              f"(pairwise median {pf['pairwise_ratio_median']}, best-of {pf['min_ratio']})")
        sc = summary["server_cpu_us_per_fault"]
        print(f"server CPU per fault: C {sc['c']} µs, Python {sc['python']} µs")
    for s, v in st.items():
        if "decompress_ms_p50" in v:
            print(f"{s}: {v['frames_decompressed_p50']:.0f} frames decompressed in "
                  f"{v['decompress_ms_p50']} ms (p50)")
    if compression is not None:
        c = compression
        print(f"compression (vm compress, level {c['level']}, {c['frame_size'] >> 10} KiB frames): "
              f"{c['compressed_bytes'] / MIB:.2f} MiB for {c['data_bytes'] / MIB:.2f} MiB of data, "
              f"ratio {c['ratio']} (disk ratio {c['disk_ratio']} vs the sparse mem, "
              f"{c['size'] / c['compressed_bytes']:.0f}x smaller than guest RAM), compress "
              f"{c['compress_ms']} ms, verify {c['verify_ms']} ms")
    for k, v in summary["first_touch"].items():
        print(f"first touch {k}: {v}")
    for k, v in summary["checks"].items():
        print(f"{k}: {v}")
    print(json.dumps(summary["machine"]))


if __name__ == "__main__":
    main()
