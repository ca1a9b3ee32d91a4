"""Checkpoint and restore the JVM *process* with CRIU inside the guest (CRaC's engine; standard library only).

A VM snapshot keeps the whole guest; a process checkpoint keeps one process tree, in CRIU's image files,
and a later boot of the same image brings it back. What this module relies on, and why:

* **The scratch drive** (``/dev/vdb``, an ext4 image the host attaches) holds the images, so a checkpoint
  made in one boot restores in another. A checkpoint mounts it read-write; a restore mounts it read-only
  under an overlay whose upper layer is tmpfs (CRIU writes a ``stats-restore`` file into the images
  directory), so one checkpoint serves any number of restores unchanged.
* **A JVM that CRIU can dump** is started by the image's init with ``FC_CRAC=on``: CRIU cannot dump the
  serial console (``ttyS0``), so the JVM's output goes to :data:`JVM_LOG`; CRIU restores exact pids, so
  the JVM's ids start above the init's ``CRAC_MIN_PID``; ``-XX:-UsePerfData`` (its mmap'ed file lives in
  the boot's tmpfs). The log file must have the size it had at the dump when the restore opens it again,
  so its bytes are kept with the images and put back first.
* **Lazy restores**: ``criu lazy-pages`` serves the restored process through a userfaultfd; at ``-v4`` it
  logs every fault (``uffd: PID-FD: #PF at 0xADDR``, one page each) with the seconds since it started.
  After one second without faults it starts pushing every remaining page ("Start handling remaining
  pages"), so the pages a first request needed are the faults logged before the response, and a
  background push that began earlier is reported (the count is then a lower bound).

Errors raise :class:`CracError` with one line that quotes CRIU's own reason (its log's first ``Error``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_DIR = Path("/run/firecracer")
#: the JVM's stdout+stderr under FC_CRAC=on (the image's init writes it; same path there)
JVM_LOG = RUN_DIR / "jvm.log"
#: present while a dump runs and after it succeeded: the init then does not reboot when the JVM ends
CHECKPOINTED = RUN_DIR / "jvm-checkpointed"
JVM_JSON = RUN_DIR / "jvm.json"
SCRATCH_DEVICE = "/dev/vdb"
SCRATCH = RUN_DIR / "scratch"
SCRATCH_RO = RUN_DIR / "scratch-ro"
#: CRIU's work directories (logs, the lazy-pages socket): tmpfs, never the images' drive
WORK = RUN_DIR / "criu"
IMAGES = "crac"  # <scratch>/crac/<name>/
PAGE = 4096
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PF = re.compile(r"^\((\d+\.\d+)\)\s+uffd: (\d+)-\d+: #PF at 0x([0-9a-f]+)", re.M)
_ZERO = re.compile(r"^\((\d+\.\d+)\)\s+uffd: (\d+)-\d+: zero page at 0x([0-9a-f]+)", re.M)
_REMAINING = re.compile(r"^\((\d+\.\d+)\)\s+.*Start handling remaining pages", re.M)
_TRANSFERRED = re.compile(r"UFFD transferred pages: \((\d+)/(\d+)\)")
_ERROR = re.compile(r"^\(\s*\d+\.\d+\)\s+(?:\d+: )?Error \(([^)]*)\):\s*(.*)$", re.M)


class CracError(Exception):
    """A checkpoint or restore step failed; ``code`` is the agent's error code, the message one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CracError("bad-request", f"checkpoint name {name[:80]!r}: letters, digits, '_', '.', '-' "
                                       "(at most 64)")
    return name


def criu_reason(log: Path, fallback: str = "") -> str:
    """CRIU's own reason for a failure: the first ``Error (file:line): why`` lines of its log, joined."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return fallback or f"no log at {log}"
    errors = [f"{why.strip()} ({where})" for where, why in _ERROR.findall(text)]
    if errors:
        # the first error is the cause; the rest are its consequences ("Dumping FAILED.")
        useful = [e for e in errors if not e.startswith(("Dumping FAILED", "Restoring FAILED"))] or errors
        return "; ".join(useful[:2])[:400]
    tail = [ln for ln in text.splitlines() if ln.strip()][-1:]
    return (tail[0].strip()[:400] if tail else fallback) or "CRIU failed without a message"


def _run(argv: list[str], timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    except FileNotFoundError:
        raise CracError("criu-missing", f"{argv[0]} is not installed in this guest (the image needs "
                                        "Debian's criu: rebuild it with 'firecracer image rootfs')") from None
    except subprocess.TimeoutExpired:
        raise CracError("timeout", f"{' '.join(argv[:2])} did not finish within {timeout:g} s "
                                   "(killed)") from None


def criu_check(timeout: float = 60.0) -> dict[str, Any]:
    """``criu check``: whether this kernel has what CRIU needs. ``ok`` only for "Looks good."."""
    version = _run(["criu", "--version"], timeout).stdout.strip().splitlines()
    r = _run(["criu", "check"], timeout)
    out = (r.stdout + r.stderr).strip()
    return {"ok": r.returncode == 0 and "Looks good" in out, "rc": r.returncode, "output": out[-4000:],
            "version": version[0] if version else ""}


def _mounted(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as fh:
            return any(line.split()[1] == str(path) for line in fh)
    except OSError:
        return False


def _mount(argv: list[str], what: str) -> None:
    r = _run(["mount", *argv], 60.0)
    if r.returncode != 0:
        raise CracError("mount-failed", f"{what}: {(r.stderr or r.stdout).strip()[:300]}")


def _umount(path: Path) -> None:
    if _mounted(path):
        _run(["umount", str(path)], 60.0)


def mount_scratch(device: str, writable: bool) -> Path:
    """The scratch drive at :data:`SCRATCH`: read-write, or read-only under a tmpfs overlay."""
    if not Path(device).exists():
        raise CracError("no-scratch", f"{device}: no such device (boot the VM with a scratch drive: "
                                      "the host attaches it as the second drive)")
    unmount_scratch()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    if writable:
        _mount([device, str(SCRATCH)], f"mount {device} read-write")
        return SCRATCH
    SCRATCH_RO.mkdir(parents=True, exist_ok=True)
    # noload: no journal replay on a read-only mount (the drive may come from a VM that was killed)
    _mount(["-o", "ro,noload", device, str(SCRATCH_RO)], f"mount {device} read-only")
    upper = WORK / "scratch-overlay"
    shutil.rmtree(upper, ignore_errors=True)
    (upper / "upper").mkdir(parents=True)
    (upper / "work").mkdir()
    _mount(["-t", "overlay", "overlay", "-o",
            f"lowerdir={SCRATCH_RO},upperdir={upper / 'upper'},workdir={upper / 'work'}", str(SCRATCH)],
           "overlay on the scratch drive")
    return SCRATCH


def unmount_scratch() -> None:
    _umount(SCRATCH)
    _umount(SCRATCH_RO)


def images_dir(name: str) -> Path:
    return SCRATCH / IMAGES / check_name(name)


def image_stats(d: Path) -> dict[str, Any]:
    """Bytes of the images and the memory pages they hold (``pages-*.img`` hold page contents only)."""
    total = pages = 0
    files = 0
    for p in d.iterdir():
        if p.is_file():
            n = p.stat().st_size
            total += n
            files += 1
            if p.name.startswith("pages-") and p.name.endswith(".img"):
                pages += n // PAGE
    return {"bytes": total, "pages": pages, "files": files}


PE_LAZY = 1 << 1  # pagemap entry flag: the page may be served lazily (criu/include/pagemap.h)


def _is_lazy(flags: object) -> int:
    """A pagemap entry's ``flags`` as crit prints them: an int, or ``"PE_LAZY | PE_PRESENT"`` (pretty)."""
    if isinstance(flags, int):
        return int(bool(flags & PE_LAZY))
    return int("PE_LAZY" in str(flags))


def dumped_ranges(d: Path, timeout: float = 120.0) -> dict[str, list[list[int]]]:
    """Per dumped process, the pages whose contents are in the images: ``{pid: [[vaddr, nr_pages, lazy],
    …]}``, decoded from ``pagemap-PID.img`` with CRIU's own ``crit`` (private file pages that were never
    written are not in the images: a restore maps them from their files again). ``lazy`` 0 marks pages a
    lazy restore still installs before the process runs (CRIU's ``vma_entry_can_be_lazy``: not anonymous
    private memory, or a thread's current stack page)."""
    out: dict[str, list[list[int]]] = {}
    for img in sorted(d.glob("pagemap-*.img")):
        pid = img.name[len("pagemap-"):-len(".img")]
        r = _run(["crit", "decode", "-i", str(img)], timeout)
        if r.returncode != 0:
            raise CracError("crit-failed", f"crit decode {img.name}: {(r.stderr or r.stdout).strip()[:300]}")
        try:
            entries = json.loads(r.stdout).get("entries", [])
        except (ValueError, AttributeError):
            raise CracError("crit-failed", f"crit decode {img.name}: not the JSON it should print") from None
        out[pid] = [[int(str(e["vaddr"]), 0), int(e["nr_pages"]), _is_lazy(e.get("flags", 0))]
                    for e in entries if isinstance(e, dict) and "vaddr" in e and "nr_pages" in e]
    return out


def dump(pid: int, name: str, *, device: str = SCRATCH_DEVICE, timeout: float = 600.0,
         leave_running: bool = False) -> dict[str, Any]:
    """``criu dump`` of the process tree ``pid`` into ``<scratch>/crac/<name>`` (made anew).

    Before: the JVM's maps and ``jvm.json`` go beside the images (to attribute a lazy restore's faults
    to mappings). After a successful dump the JVM has ended (unless ``leave_running``) and its log's
    bytes are copied beside the images; the drive is synced and unmounted. On failure the JVM goes on
    running (CRIU thaws it) and :class:`CracError` quotes CRIU's reason.
    """
    if not Path(f"/proc/{pid}").exists():
        raise CracError("no-such-process", f"pid {pid}: no such process")
    mount_scratch(device, writable=True)
    try:
        d = images_dir(name)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        shutil.copyfile(f"/proc/{pid}/maps", d / "maps.txt")
        if JVM_JSON.exists():
            shutil.copyfile(JVM_JSON, d / "jvm.json")
        argv = ["criu", "dump", "-t", str(pid), "-D", str(d), "-o", "dump.log", "-v4", "--file-locks"]
        if leave_running:
            argv.append("--leave-running")
        CHECKPOINTED.write_text(f"{pid}\n")
        t0 = time.monotonic()
        r = _run(argv, timeout)
        seconds = time.monotonic() - t0
        if r.returncode != 0:
            CHECKPOINTED.unlink(missing_ok=True)
            why = criu_reason(d / "dump.log", (r.stderr or r.stdout).strip())
            alive = Path(f"/proc/{pid}").exists()
            raise CracError("criu-dump-failed", f"criu dump of pid {pid} failed: {why}"
                                                + ("; the JVM is still running" if alive else
                                                   "; the JVM is gone"))
        if not leave_running:
            for _ in range(100):  # CRIU killed it; the log is complete once it is gone
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
        else:
            CHECKPOINTED.unlink(missing_ok=True)
        if JVM_LOG.exists():
            shutil.copyfile(JVM_LOG, d / "jvm.log")
        stats = image_stats(d)
        os.sync()
        return {"name": name, "pid": pid, "seconds": round(seconds, 6), **stats,
                "leave_running": leave_running, "maps": (d / "maps.txt").read_text(errors="replace"),
                "dumped": dumped_ranges(d)}
    finally:
        os.sync()
        unmount_scratch()


@dataclass
class LazyDaemon:
    """``criu lazy-pages`` for one restore: started before ``criu restore --lazy-pages``."""

    proc: subprocess.Popen[bytes]
    work: Path
    started: float  # time.monotonic() just before it was started

    @property
    def log(self) -> Path:
        return self.work / "lazy-pages.log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_lazy(d: Path, work: Path, timeout: float = 60.0) -> LazyDaemon:
    started = time.monotonic()
    proc = subprocess.Popen(["criu", "lazy-pages", "-D", str(d), "-W", str(work), "-o", "lazy-pages.log",
                             "-v4"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    daemon = LazyDaemon(proc, work, started)
    sock = work / "lazy-pages.socket"
    deadline = started + timeout
    while not sock.exists():
        if proc.poll() is not None:
            raise CracError("criu-lazy-failed", "criu lazy-pages ended before it listened: "
                            + criu_reason(daemon.log))
        if time.monotonic() > deadline:
            daemon.stop()
            raise CracError("timeout", f"criu lazy-pages did not listen within {timeout:g} s")
        time.sleep(0.02)
    return daemon


def restore(name: str, *, device: str = SCRATCH_DEVICE, lazy: bool = False,
            timeout: float = 600.0) -> tuple[dict[str, Any], LazyDaemon | None]:
    """``criu restore`` (eager, or ``--lazy-pages`` with a lazy-pages daemon) of checkpoint ``name``.

    Returns the facts and, for a lazy restore, the daemon (still serving; its log gives the faults).
    The restored JVM is detached (``-d``): init reaps it. ``jvm.json`` names it for the other commands.
    """
    mount_scratch(device, writable=False)
    d = images_dir(name)
    if not (d / "inventory.img").is_file():
        unmount_scratch()
        raise CracError("no-checkpoint", f"{d}: no CRIU checkpoint there (inventory.img missing)")
    work = WORK / f"{name}-{time.monotonic_ns()}"
    work.mkdir(parents=True)
    meta: dict[str, Any] = {}
    if (d / "jvm.json").exists():
        meta = json.loads((d / "jvm.json").read_text())
    if (d / "jvm.log").exists():  # CRIU reopens it and wants the size it had at the dump
        shutil.copyfile(d / "jvm.log", JVM_LOG)
    (RUN_DIR / "notify").mkdir(parents=True, exist_ok=True)  # the agent's listening socket is rebound there
    CHECKPOINTED.unlink(missing_ok=True)
    daemon = start_lazy(d, work) if lazy else None
    argv = ["criu", "restore", "-D", str(d), "-W", str(work), "-o", "restore.log", "-v4", "-d",
            "--file-locks"]
    if lazy:
        argv.append("--lazy-pages")
    t0 = time.monotonic()
    try:
        r = _run(argv, timeout)
    except CracError:
        if daemon:
            daemon.stop()
        raise
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        if daemon:
            daemon.stop()
        raise CracError("criu-restore-failed", f"criu restore of {name} failed: "
                        + criu_reason(work / "restore.log", (r.stderr or r.stdout).strip()))
    pid = int(meta.get("pid") or 0)
    if pid:
        JVM_JSON.write_text(json.dumps({**meta, "restored_from": name, "restored_time": time.time()}))
        (RUN_DIR / "jvm.pid").write_text(f"{pid}\n")
    facts = {"name": name, "pid": pid, "lazy": lazy, "seconds": round(seconds, 6),
             "images": image_stats(d), "work": str(work)}
    if daemon:
        facts["lazy_daemon_start_s"] = round(t0 - daemon.started, 6)  # restore start, daemon clock
    return facts, daemon


@dataclass(frozen=True)
class LazyFaults:
    """The lazy-pages daemon's faults, in its clock (seconds since it started)."""

    t_s: list[float]
    pid: list[int]
    addr: list[int]
    zero: list[bool]  # the page was not in the images (zero-filled), so nothing was read for it
    background_start_s: float | None
    transferred: tuple[int, int] | None

    def until(self, t_s: float) -> LazyFaults:
        n = sum(1 for t in self.t_s if t <= t_s)
        return LazyFaults(self.t_s[:n], self.pid[:n], self.addr[:n], self.zero[:n], self.background_start_s,
                          self.transferred)

    def to_json(self) -> dict[str, Any]:
        return {"t_s": self.t_s, "pid": self.pid, "addr": self.addr, "zero": self.zero,
                "background_start_s": self.background_start_s,
                "transferred": list(self.transferred) if self.transferred else None}


def parse_lazy_log(text: str) -> LazyFaults:
    """Faults (``#PF``) and zero-page fills of a ``criu lazy-pages -v4`` log, in log order.

    A ``#PF`` on a page CRIU has already queued is logged again but served once: repeats are dropped.
    A zero-page fill follows its ``#PF`` line at the same address and marks that fault ``zero``.
    """
    zero_at = {(int(p), int(a, 16)) for _t, p, a in _ZERO.findall(text)}
    seen: set[tuple[int, int]] = set()
    t_s: list[float] = []
    pids: list[int] = []
    addrs: list[int] = []
    zero: list[bool] = []
    for t, p, a in _PF.findall(text):
        key = (int(p), int(a, 16))
        if key in seen:
            continue
        seen.add(key)
        t_s.append(float(t))
        pids.append(key[0])
        addrs.append(key[1])
        zero.append(key in zero_at)
    m = _REMAINING.search(text)
    tr = _TRANSFERRED.findall(text)
    transferred = (sum(int(a) for a, _ in tr), sum(int(b) for _, b in tr)) if tr else None
    return LazyFaults(t_s, pids, addrs, zero, float(m.group(1)) if m else None, transferred)


def first_request(port: int, path: str, timeout: float) -> dict[str, Any]:
    """``GET path`` on 127.0.0.1:``port`` inside the guest: status, bytes, seconds to the whole reply."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        first = time.monotonic() - t0
        body = resp.read()
        return {"status": resp.status, "bytes": len(body), "first_byte_s": round(first, 6),
                "seconds": round(time.monotonic() - t0, 6)}
    except (OSError, http.client.HTTPException) as exc:
        raise CracError("first-request-failed", f"GET {path} on port {port} after the restore: "
                                                f"{exc}") from None
    finally:
        conn.close()
