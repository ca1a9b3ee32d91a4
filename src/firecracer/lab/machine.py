"""One L1 machine: QEMU (TCG, AMD SVM with nested paging) running one command, and always powered off.

The L1 sees this host's root read-only (9p, under a tmpfs overlay, so nothing needs building or
installing) and the caller's writable shares at their own paths, so results land where the caller
expects them. Output comes back live over a virtio-serial port (:mod:`firecracer.lab.inside` has the
frames); the console goes to ``console.log`` in the lab's run directory, kept for post-mortems.

QEMU runs in its own session with ``PR_SET_PDEATHSIG(SIGKILL)``: if this process is killed, even with
SIGKILL, QEMU dies with it. Ctrl-C and SIGTERM are forwarded to the command inside L1 (so it can clean
up), then L1 is powered off; a second Ctrl-C, a timeout or an unresponsive L1 kill QEMU outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from firecracer.lab import inside
from firecracer.lab.assets import Assets, LabError, Progress, lab_dir, prepare

#: what a recording made in the lab says about its host (and ``FIRECRACER_LAB`` carries into L1)
LAB_HOST = "lab (QEMU TCG, emulated SVM)"
QEMU = "qemu-system-x86_64"
#: QEMU's CPU model: an AMD one with SVM and nested paging (TCG has no VMX); qemu64 lacks XSAVE, which
#: Firecracker requires. AVX2 stays on: with ``-avx2`` the JVM in L2 crashed in C1-compiled code or its
#: guest stalled in 5 boots of 23, and in plain TCG too (``image check``); with AVX2 no such loss was seen
#: in the sessions before. Without AVX as well (``-avx``) the guest's Python died at once. What TCG does
#: get wrong with AVX2 is numpy's AVX2 sort, so L1 runs numpy without its AVX2 kernels
#: (:func:`lab_env`). ``FIRECRACER_LAB_CPU`` overrides the model (for trying another QEMU).
CPU_MODEL = os.environ.get("FIRECRACER_LAB_CPU") or "EPYC,+svm,+npt"
DEFAULT_MEM_MIB = 8192
DEFAULT_CPUS = 2
#: the caller's environment goes into L1 except what only makes sense in this host session
_ENV_DROP = re.compile(r"^(SSH_|DISPLAY$|WAYLAND_|XDG_RUNTIME_DIR$|DBUS_|TMUX|STY$|WINDOWID$|"
                       r"GPG_AGENT|KRB5CCNAME$|PYTEST_|INVOCATION_ID$|JOURNAL_STREAM$|NOTIFY_SOCKET$)")
KEEP_RUNS = 20
GRACE_S = 10.0


@dataclass(frozen=True)
class LabSpec:
    """The L1 machine: memory, CPUs, writable shares (mounted at their own paths), time limit."""

    mem_mib: int = DEFAULT_MEM_MIB
    cpus: int = DEFAULT_CPUS
    shares: tuple[Path, ...] = ()
    timeout_s: float | None = None
    cpu_model: str = CPU_MODEL
    kernel_args: str = ""


@dataclass
class LabResult:
    """How the command ended, and where the time went.

    ``stages`` are L1 uptimes (s) stamped by the init and the runner (``init``, ``module:<name>``,
    ``root``, ``chroot``, ``runner``); ``host_s`` are host wall times (s) from QEMU's start
    (``connected``: QEMU listening; ``running``: the command started; ``exited``; ``off``: QEMU gone).
    """

    rc: int
    signal: str | None
    run_dir: Path
    stages: dict[str, float] = field(default_factory=dict)
    host_s: dict[str, float] = field(default_factory=dict)
    leftover: list[str] = field(default_factory=list)
    timed_out: bool = False
    interrupted: str | None = None

    def stage_durations(self) -> dict[str, float]:
        """Seconds per stage: kernel boot, each module, root mount, command start (from the stamps)."""
        out: dict[str, float] = {}
        prev = 0.0
        for name, t in sorted(self.stages.items(), key=lambda kv: kv[1]):
            out[name] = round(t - prev, 3)
            prev = t
        return out


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``_Interrupted`` while the lab runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _die_with_parent(parent: int) -> Callable[[], None]:
    def pre() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    return pre


def _qopt(value: str | Path) -> str:
    """A value inside a QEMU ``-opt a=b,c=d`` list: commas are doubled."""
    return str(value).replace(",", ",,")


def find_qemu() -> Path:
    exe = shutil.which(QEMU)
    if not exe:
        raise LabError(f"{QEMU} not found: the lab needs QEMU (apt-get install qemu-system-x86)")
    return Path(exe)


def mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def check_memory(mem_mib: int) -> None:
    """L1's RAM must fit: QEMU backs it lazily, but a JVM guest plus snapshots in L1's tmpfs touch most."""
    avail = mem_available_mib()
    if avail < mem_mib + 256:
        raise LabError(f"the lab's L1 needs {mem_mib} MiB of RAM but only {avail} MiB are available here "
                       "(use --mem with less, at least 3072 for the JVM image)")


def qemu_argv(qemu: Path, assets: Assets, spec: LabSpec, run_dir: Path, sock: Path,
              tags: Sequence[str]) -> list[str]:
    """The QEMU command line for one L1 (pure: tested without running QEMU)."""
    append = f"console=ttyS0 panic=-1 loglevel=4 mitigations=off lab.dir={run_dir} {spec.kernel_args}"
    argv = [str(qemu), "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-no-reboot", "-accel", "tcg,thread=multi", "-M", "q35", "-cpu", spec.cpu_model,
            "-smp", str(spec.cpus), "-m", f"{spec.mem_mib}M",
            "-kernel", str(assets.kernel.vmlinuz), "-initrd", str(assets.initramfs),
            "-append", append.strip(),
            "-chardev", f"file,id=con,path={_qopt(run_dir / 'console.log')}", "-serial", "chardev:con",
            "-device", "virtio-rng-pci",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=ctl,path={_qopt(sock)},server=on,wait=on",
            "-device", f"virtserialport,bus=vser.0,chardev=ctl,name={inside.PORT_NAME}",
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"]
    for tag, path in zip(tags, spec.shares, strict=True):
        argv += ["-fsdev", f"local,id={tag},path={_qopt(path)},security_model=passthrough,multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    return argv


def numpy_without_avx2() -> str:
    """``NPY_DISABLE_CPU_FEATURES`` that keeps numpy off AVX2 (names changed in numpy 2.3: levels)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("numpy").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return "AVX2 AVX512F"
    return "X86_V3 X86_V4" if (major, minor) >= (2, 3) else "AVX2 AVX512F"


def lab_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the command sees in L1: the caller's, minus host-session variables.

    numpy runs without its AVX2 kernels unless the caller set ``NPY_DISABLE_CPU_FEATURES`` (even empty):
    QEMU 7.2's TCG returned *unsorted* results from numpy's AVX2 argsort of uint64, which silently
    turned a real restore's 100 % attribution into 97.7 %; the SSE kernels are right.
    """
    src = dict(os.environ if env is None else env)
    out = {k: v for k, v in src.items() if not _ENV_DROP.match(k)}
    out["FIRECRACER_LAB"] = LAB_HOST
    out.setdefault("NPY_DISABLE_CPU_FEATURES", numpy_without_avx2())
    return out


def _new_run_dir() -> Path:
    runs = lab_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    d = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    n = 0
    while True:
        cand = d if n == 0 else d.with_name(f"{d.name}-{n}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            n += 1


def prune_runs(keep: int = KEEP_RUNS) -> None:
    runs = sorted((lab_dir() / "runs").glob("*"), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep] if keep else runs:
        shutil.rmtree(old, ignore_errors=True)


def console_tail(run_dir: Path, n: int = 30) -> list[str]:
    try:
        lines = (run_dir / "console.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln.rstrip("\r") for ln in lines[-n:]]


def _death_reason(run_dir: Path, qemu_rc: int | None) -> str:
    tail = console_tail(run_dir, 200)
    for ln in reversed(tail):
        if "lab-init:" in ln or "Kernel panic" in ln:
            return ln.strip()
    qlog = (run_dir / "qemu.log").read_text(errors="replace").strip().splitlines() \
        if (run_dir / "qemu.log").exists() else []
    if qlog:
        return f"QEMU: {qlog[-1].strip()}"
    if tail:
        return f"last console line: {tail[-1].strip()}"
    return f"QEMU exited with status {qemu_rc}"


class LabMachine:
    """Run commands in a fresh L1, one L1 per :meth:`run`."""

    def __init__(self, spec: LabSpec | None = None, *, progress: Progress | None = None,
                 assets: Assets | None = None) -> None:
        self.spec = spec or LabSpec()
        self._progress: Progress = progress or (lambda _m: None)
        self._assets = assets

    def run(self, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
            stdout: Callable[[bytes], None] | None = None,
            stderr: Callable[[bytes], None] | None = None) -> LabResult:
        """Run ``argv`` in L1 with ``cwd`` and ``env``; stream its output to the callbacks.

        Raises :class:`LabError` when L1 cannot start or dies before the command finishes (the line
        names the console's last words). Ctrl-C/SIGTERM are forwarded to the command and set
        ``interrupted``; a timeout sets ``timed_out`` (rc 124).
        """
        if not argv:
            raise LabError("lab run: no command given")
        cwd = Path(cwd or Path.cwd()).resolve()
        qemu = find_qemu()
        check_memory(self.spec.mem_mib)
        assets = self._assets or prepare(progress=self._progress)
        shares = self._shares(cwd)
        run_dir = _new_run_dir()
        if re.search(r"\s", str(run_dir)):
            raise LabError(f"{run_dir}: the lab's run directory may not contain whitespace "
                           "(set FIRECRACER_CACHE to a path without spaces)")
        tags = [f"share{i}" for i in range(len(shares))]
        (run_dir / "shares").write_text("".join(f"{t}\t{p}\n" for t, p in zip(tags, shares, strict=True)))
        (run_dir / "job.json").write_text(json.dumps(
            {"argv": list(argv), "cwd": str(cwd), "env": lab_env(env)}, indent=1))
        (run_dir / "launch.sh").write_text(
            "#!/bin/sh\nexec " + " ".join(shlex.quote(str(a)) for a in (
                sys.executable, Path(inside.__file__).resolve(), run_dir / "job.json")) + "\n")
        spec = LabSpec(self.spec.mem_mib, self.spec.cpus, tuple(shares), self.spec.timeout_s,
                       self.spec.cpu_model, self.spec.kernel_args)
        sockdir = Path(tempfile.mkdtemp(prefix="fcl-"))
        sock = sockdir / "ctl.sock"
        argv_q = qemu_argv(qemu, assets, spec, run_dir, sock, tags)
        (run_dir / "qemu.argv").write_text(shlex.join(argv_q) + "\n")
        result = LabResult(rc=-1, signal=None, run_dir=run_dir)
        proc: subprocess.Popen[bytes] | None = None
        t0 = time.monotonic()
        try:
            with _signals_as_exceptions():
                try:
                    with (run_dir / "qemu.log").open("wb") as qlog:
                        proc = subprocess.Popen(argv_q, stdin=subprocess.DEVNULL, stdout=qlog,
                                                stderr=subprocess.STDOUT, start_new_session=True,
                                                preexec_fn=_die_with_parent(os.getpid()))
                    self._progress(f"L1 starting (QEMU pid {proc.pid}, {spec.mem_mib} MiB, {spec.cpus} CPUs)")
                    conn = self._connect(proc, sock, run_dir)
                    result.host_s["connected"] = round(time.monotonic() - t0, 3)
                    self._relay(conn, proc, result, t0, stdout or (lambda _b: None),
                                stderr or (lambda _b: None))
                except _Interrupted as exc:
                    result.interrupted = str(exc)
                    result.rc = 128 + exc.signum
        finally:
            if proc is not None:
                self._power_off(proc, result, t0)
            shutil.rmtree(sockdir, ignore_errors=True)
            with contextlib.suppress(OSError):
                prune_runs()
        return result

    # -- internals -------------------------------------------------------------------------------
    def _shares(self, cwd: Path) -> list[Path]:
        wanted = [cwd, *(Path(s).resolve() for s in self.spec.shares)]
        out: list[Path] = []
        for p in wanted:
            if p == Path("/"):
                raise LabError("lab: the working directory (or a share) is '/', which cannot be shared "
                               "writable; cd to the directory whose files the command needs")
            if not p.is_dir():
                raise LabError(f"{p}: a lab share must be an existing directory")
            if re.search(r"[\t\n]", str(p)):
                raise LabError(f"{p}: a lab share may not contain tabs or newlines")
            if p not in out:
                out.append(p)
        return sorted(out, key=lambda p: len(p.parts))  # parents are mounted before children

    def _connect(self, proc: subprocess.Popen[bytes], sock: Path, run_dir: Path) -> socket.socket:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"QEMU exited at start (status {proc.returncode}): "
                               f"{_death_reason(run_dir, proc.returncode)}")
            if sock.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(str(sock))
                    return s
                except OSError:
                    s.close()
            time.sleep(0.05)
        raise LabError("QEMU did not open its control socket within 60 s")

    def _relay(self, conn: socket.socket, proc: subprocess.Popen[bytes], result: LabResult, t0: float,
               out: Callable[[bytes], None], err: Callable[[bytes], None]) -> None:
        buf = b""
        deadline = t0 + self.spec.timeout_s if self.spec.timeout_s else None
        kill_sent_at: float | None = None
        interrupted: _Interrupted | None = None
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now > deadline and kill_sent_at is None:
                    result.timed_out = True
                    self._send_kill(conn, signal.SIGTERM)
                    kill_sent_at = now
                if kill_sent_at is not None and now - kill_sent_at > GRACE_S:
                    break  # the command ignores the signal: power off by force
                try:
                    ready = sel.select(timeout=0.5)
                except _Interrupted as exc:
                    if interrupted is not None:  # a second Ctrl-C: no more grace
                        raise
                    interrupted = exc
                    result.interrupted = str(exc)
                    self._send_kill(conn, exc.signum)
                    kill_sent_at = time.monotonic()
                    continue
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                data = conn.recv(1 << 16)
                if not data:
                    break
                buf += data
                while len(buf) >= inside.FRAME.size:
                    kind, n = inside.FRAME.unpack_from(buf)
                    if n > inside.MAX_FRAME:
                        raise LabError(f"lab control port: a frame of {n} bytes (protocol error)")
                    if len(buf) < inside.FRAME.size + n:
                        break
                    payload = buf[inside.FRAME.size:inside.FRAME.size + n]
                    buf = buf[inside.FRAME.size + n:]
                    if kind == inside.STDOUT:
                        out(payload)
                    elif kind == inside.STDERR:
                        err(payload)
                    elif kind == inside.STATUS:
                        result.stages.update(json.loads(payload).get("stages", {}))
                        result.host_s.setdefault("running", round(time.monotonic() - t0, 3))
                    elif kind == inside.EXIT:
                        facts: dict[str, Any] = json.loads(payload)
                        result.rc = int(facts.get("rc", 125))
                        result.signal = facts.get("signal")
                        result.leftover = list(facts.get("leftover", []))
                        result.stages["exit"] = float(facts.get("uptime", 0.0))
                        result.host_s["exited"] = round(time.monotonic() - t0, 3)
                        if result.timed_out:
                            result.rc = 124
                        return
        finally:
            sel.close()
            conn.close()
        if result.timed_out:
            result.rc = 124
            return
        if interrupted is not None:
            result.rc = 128 + interrupted.signum
            return
        proc_rc = proc.poll()
        raise LabError(f"L1 stopped before the command finished: {_death_reason(result.run_dir, proc_rc)} "
                       f"(console: {result.run_dir / 'console.log'})")

    @staticmethod
    def _send_kill(conn: socket.socket, signum: int) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(inside.encode(inside.KILL, json.dumps({"signal": int(signum)}).encode()))

    @staticmethod
    def _power_off(proc: subprocess.Popen[bytes], result: LabResult, t0: float) -> None:
        """Wait for L1 to power itself off; kill QEMU when it does not. Always reaps."""
        try:
            proc.wait(timeout=30 if result.rc >= 0 and not result.interrupted else 3)
        except (subprocess.TimeoutExpired, _Interrupted, KeyboardInterrupt):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        result.host_s["off"] = round(time.monotonic() - t0, 3)
