"""The guest agent: a JSON-lines server the host drives over vsock (or TCP/Unix under QEMU).

Run as root by the guest's init::

    python3 -m firecracer.guest.agent --listen vsock:52 [--listen tcp:0.0.0.0:5252]
                                      [--forward vsock:8080=127.0.0.1:8080] [--hooks-dir DIR]

Protocol: one JSON object per line each way. Request ``{"cmd": NAME, "args": {...}, "id": ANY}``
(``args`` and ``id`` optional; ``id`` is echoed). Reply ``{"id": ..., "ok": true, "result": {...}}`` or
``{"id": ..., "ok": false, "error": {"code": CODE, "message": ONE_LINE}}``. Requests are at most
``--max-request`` bytes, replies at most ``--max-reply`` bytes (a larger reply becomes a
``reply-too-large`` error). Commands: ``ping``, ``collect-memmap``, ``nmt``, ``smaps``, ``exec``,
``prepare``, ``after-restore``, ``criu-check``, ``checkpoint``, ``restore``, ``help``. The handler never
raises: any failure is an error reply.

Standard library only: this file is copied into the guest image.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import platform
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.guest import agentnet, crac, jvm, memmap

AGENT_VERSION = 1
DEFAULT_PORT = 52
MAX_REQUEST = 1 << 20
MAX_REPLY = 256 << 20
MAX_EXEC_OUTPUT = 1 << 20
MAX_EXEC_TIMEOUT = 3600.0
DEFAULT_HOOKS_DIR = "/etc/firecracer/hooks"
DEFAULT_NOTIFY_DIR = "/run/firecracer/notify"

log = logging.getLogger("firecracer.agent")


class RequestError(Exception):
    """A request cannot be served; becomes ``{"ok": false, "error": {"code", "message"}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AgentConfig:
    """Limits and locations; the defaults are what init gets."""

    max_request: int = MAX_REQUEST
    max_reply: int = MAX_REPLY
    max_exec_output: int = MAX_EXEC_OUTPUT
    hooks_dir: str = DEFAULT_HOOKS_DIR
    notify_dir: str = DEFAULT_NOTIFY_DIR
    jvm_timeout: float = 60.0
    started: float = field(default_factory=time.monotonic)


# ---------------------------------------------------------------------------------------------- args

def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None,
         *, required: bool = False) -> Any:
    """Typed argument lookup; wrong type → ``bad-request`` naming the argument."""
    if name not in args or args[name] is None:
        if required:
            raise RequestError("bad-request", f"missing argument {name!r}")
        return default
    val = args[name]
    if kind is int and isinstance(val, bool):
        raise RequestError("bad-request", f"argument {name!r} must be an integer, got a boolean")
    if not isinstance(val, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RequestError("bad-request", f"argument {name!r} must be {want}, got {type(val).__name__}")
    return val


def _int_list(args: dict[str, Any], name: str) -> list[int] | None:
    val = _arg(args, name, list)
    if val is None:
        return None
    if len(val) > 100000 or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
        raise RequestError("bad-request", f"argument {name!r} must be a list of integers")
    return list(val)


def _pid_arg(args: dict[str, Any]) -> int:
    """``args.pid``, or the only running JVM (the workload); clear errors for none or several."""
    pid = _arg(args, "pid", int)
    if pid is not None:
        if pid <= 0 or pid > 1 << 22:
            raise RequestError("bad-request", f"pid {pid} is out of range")
        if not os.path.exists(f"/proc/{pid}"):
            raise RequestError("no-such-process", f"pid {pid}: no such process")
        return int(pid)
    pids = jvm.java_pids()
    if not pids:
        raise RequestError("no-jvm", "no java process is running (pass 'pid' to choose another process)")
    if len(pids) > 1:
        raise RequestError("ambiguous-jvm", f"several java processes {pids}: pass 'pid'")
    return pids[0]


# ------------------------------------------------------------------------------------------ commands

def cmd_help(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """List the commands and their one-line descriptions."""
    return {"commands": {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in COMMANDS.items()}}


def cmd_ping(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Liveness: uptime, kernel, running JVMs, agent version."""
    try:
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        uptime = -1.0
    return {"agent_version": AGENT_VERSION, "uptime_s": uptime, "kernel": platform.release(),
            "hostname": socket.gethostname(), "jvm_pids": jvm.java_pids(), "agent_pid": os.getpid(),
            "agent_uptime_s": round(time.monotonic() - cfg.started, 3), "time_ns": time.time_ns(),
            "python": platform.python_version()}


def cmd_collect_memmap(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Collect memmap.npz (processes, kernel, page cache, free pages); reply carries it base64-encoded."""
    pids = _int_list(args, "pids")
    sections = _arg(args, "sections", list, list(memmap.SECTIONS))
    if not all(isinstance(s, str) for s in sections):
        raise RequestError("bad-request", "argument 'sections' must be a list of strings")
    t0 = time.monotonic()
    try:
        mm = memmap.collect(pids, sections=tuple(sections), exclude=(os.getpid(),), source="guest")
    except memmap.NoSuchProcess as exc:
        raise RequestError("no-such-process", str(exc)) from None
    except memmap.CollectError as exc:
        raise RequestError("collect-error", str(exc)) from None
    data = mm.to_bytes()
    return {"npz_b64": base64.b64encode(data).decode(), "npz_bytes": len(data), "pages": mm.n_pages,
            "owners": len(mm.owner_pid), "skipped": mm.meta.get("skipped", []),
            "seconds": round(time.monotonic() - t0, 3)}


def cmd_nmt(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """jcmd VM.native_memory detail|summary of the JVM (args: pid, mode)."""
    mode = _arg(args, "mode", str, "detail")
    if mode not in ("detail", "summary"):
        raise RequestError("bad-request", f"mode must be 'detail' or 'summary', got {mode!r}")
    pid = _pid_arg(args)
    try:
        text = jvm.native_memory(pid, detail=mode == "detail", timeout=cfg.jvm_timeout,
                                 max_output=cfg.max_reply // 2)
    except jvm.JvmError as exc:
        raise RequestError("jvm-error", str(exc)) from None
    return {"pid": pid, "mode": mode, "text": text, "options": jvm.jvm_options(pid)}


def cmd_jcmd(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Any jcmd diagnostic command in the JVM (args: command, pid)."""
    command = _arg(args, "command", str, required=True)
    if not command.strip() or "\0" in command or len(command) > 4096:
        raise RequestError("bad-request", "argument 'command' must be a non-empty jcmd command line")
    pid = _pid_arg(args)
    try:
        text = jvm.jcmd(pid, command, timeout=cfg.jvm_timeout, max_output=cfg.max_reply // 2)
    except jvm.JvmError as exc:
        raise RequestError("jvm-error", str(exc)) from None
    return {"pid": pid, "text": text}


def cmd_smaps(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """/proc/PID/smaps verbatim (args: pid; default the JVM)."""
    pid = _pid_arg(args)
    try:
        with open(f"/proc/{pid}/smaps", "rb") as fh:
            data = fh.read(cfg.max_reply // 2 + 1)
    except OSError as exc:
        raise RequestError("no-such-process", f"/proc/{pid}/smaps: {exc.strerror}") from None
    if len(data) > cfg.max_reply // 2:
        raise RequestError("output-too-large", f"/proc/{pid}/smaps exceeds {cfg.max_reply // 2} bytes")
    return {"pid": pid, "text": data.decode("utf-8", "replace")}


def run_bounded(argv: list[str], *, timeout: float, max_output: int, stdin: bytes = b"",
                env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Run ``argv`` with a timeout and an output bound; kills the process group on either.

    Returns ``{"rc", "stdout", "stderr", "seconds"}``; raises ``RequestError`` (``exec-failed``,
    ``timeout``, ``output-too-large``) — the last two after the process has been killed.
    """
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                start_new_session=True)
    except OSError as exc:
        raise RequestError("exec-failed", f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    out = {"stdout": bytearray(), "stderr": bytearray()}
    sel = selectors.DefaultSelector()
    try:
        if stdin and proc.stdin is not None:
            # fed from a thread: a child that writes output before reading all its input must not
            # deadlock against us writing into a full pipe
            threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        deadline = t0 + timeout
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestError("timeout", f"{argv[0]!r} did not finish within {timeout:g} s (killed)")
            for key, _ in sel.select(min(left, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                out[key.data] += chunk
                if len(out["stdout"]) + len(out["stderr"]) > max_output:
                    raise RequestError("output-too-large",
                                       f"{argv[0]!r} wrote more than {max_output} bytes (killed); "
                                       "raise max_output or redirect to a file")
        left = max(0.0, deadline - time.monotonic())
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            raise RequestError("timeout", f"{argv[0]!r} did not exit within {timeout:g} s (killed)") from None
    finally:
        sel.close()
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    return {"rc": rc, "stdout": out["stdout"].decode("utf-8", "replace"),
            "stderr": out["stderr"].decode("utf-8", "replace"), "seconds": round(time.monotonic() - t0, 3)}


def _feed(pipe: Any, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        pipe.write(data)
    with contextlib.suppress(OSError, ValueError):
        pipe.close()


def cmd_exec(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Run a command (args: argv list or sh string, timeout_s, max_output, stdin)."""
    argv = _arg(args, "argv", list)
    sh = _arg(args, "sh", str)
    if (argv is None) == (sh is None):
        raise RequestError("bad-request", "pass exactly one of 'argv' (list of strings) or 'sh' (string)")
    if sh is not None:
        argv = ["/bin/sh", "-c", sh]
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise RequestError("bad-request", "argument 'argv' must be a non-empty list of strings")
    timeout = _arg(args, "timeout_s", (int, float), 30.0)
    if isinstance(timeout, bool) or not 0 < timeout <= MAX_EXEC_TIMEOUT:
        raise RequestError("bad-request", f"timeout_s must be in (0, {MAX_EXEC_TIMEOUT:g}]")
    max_output = _arg(args, "max_output", int, min(cfg.max_exec_output, cfg.max_reply // 2))
    if not 0 < max_output <= cfg.max_reply // 2:
        raise RequestError("bad-request", f"max_output must be in (0, {cfg.max_reply // 2}]")
    stdin = _arg(args, "stdin", str, "")
    return run_bounded(list(argv), timeout=float(timeout), max_output=max_output, stdin=stdin.encode())


def _write_sysctl(path: str, value: str) -> str:
    with open(path, "w") as fh:
        fh.write(value)
    return f"{path} = {value}"


def _run_hooks(cfg: AgentConfig, event: str, env_extra: dict[str, str]) -> dict[str, Any]:
    """Run ``<hooks_dir>/<event>.d/*`` executables and notify ``<notify_dir>/*.sock`` listeners.

    Order follows CRaC (and the seed's FirecrackerContext): ``after-restore`` in name order,
    ``before-snapshot`` in reverse name order. Each hook gets 60 s and 64 KiB of output; each listener
    60 s to answer (a JVM's resources closing pools under emulation). ``detail`` is one line naming what
    failed and why (a listener's own ``error …`` answer), first in the dict so a caller quoting the
    step's start shows it.
    """
    results: list[dict[str, Any]] = []
    hook_dir = Path(cfg.hooks_dir) / f"{event}.d"
    hooks = sorted(p for p in hook_dir.glob("*") if p.is_file() and os.access(p, os.X_OK)) \
        if hook_dir.is_dir() else []
    socks = sorted(Path(cfg.notify_dir).glob("*.sock")) if Path(cfg.notify_dir).is_dir() else []
    if event == "before-snapshot":
        hooks.reverse()
        socks.reverse()
    env = {**os.environ, "FIRECRACER_EVENT": event, **env_extra}
    for h in hooks:
        try:
            r = run_bounded([str(h), event], timeout=60.0, max_output=1 << 16, env=env)
            results.append({"hook": str(h), "ok": r["rc"] == 0, "rc": r["rc"],
                            "output": (r["stdout"] + r["stderr"])[-2000:]})
        except RequestError as exc:
            results.append({"hook": str(h), "ok": False, "error": exc.message})
    line = (event + " " + env_extra.get("FIRECRACER_GENERATION", "0")).encode() + b"\n"
    for s in socks:
        results.append(_notify(str(s), line))
    failed = []
    for r in results:
        if not r["ok"]:
            who = Path(r.get("hook") or r.get("notify") or "?").name
            why = r.get("answer") or r.get("error") or f"exit status {r.get('rc')}: {r.get('output', '')}"
            failed.append(f"{who}: {' '.join(str(why).split())}")
    ok = not failed
    detail = f"{len(results)} notified" if ok else "; ".join(failed)[:1000]
    return {"ok": ok, "detail": detail, "hooks": results}


def _notify(path: str, line: bytes, timeout: float = 60.0, eof_wait: float = 2.0) -> dict[str, Any]:
    """Send one event line to an app's Unix socket and wait (``timeout`` s) for its one-line answer.

    After the answer, wait up to ``eof_wait`` s for the app to close its end (``eof``): the firecracer
    CRaC agent does, so that no established connection is left in the JVM when it is checkpointed
    right after this returns. A socket file nobody listens on (refused: its process is gone) is skipped.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            return {"notify": path, "ok": True, "skipped": True, "detail": "nobody listens (stale socket)"}
        sock.sendall(line)
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < 4096:
            got = sock.recv(4096)
            if not got:
                break
            answer += got
        text = answer.decode(errors="replace").strip()
        eof = not answer.endswith(b"\n")  # the app closed without (finishing) a line
        if not eof:
            sock.settimeout(eof_wait)
            try:
                eof = sock.recv(1) == b""
            except OSError:  # timeout: the app keeps its end open
                eof = False
        return {"notify": path, "ok": text.lower().startswith("ok"), "answer": text[:1000], "eof": eof}
    except OSError as exc:
        return {"notify": path, "ok": False, "error": f"{exc.strerror or exc}"}
    finally:
        sock.close()


PREPARE_STEPS = ("hooks", "gc", "trim", "sysctl", "drop-caches", "compact")


def cmd_prepare(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Before a snapshot: hooks, GC, native trim, compaction sysctls, drop caches, compact.

    args: ``steps`` (subset of PREPARE_STEPS, in order), ``pid`` (default: the only JVM).
    """
    steps = _arg(args, "steps", list, list(PREPARE_STEPS))
    bad = [s for s in steps if s not in PREPARE_STEPS]
    if bad:
        raise RequestError("bad-request", f"unknown prepare step(s) {bad}; known: {', '.join(PREPARE_STEPS)}")
    pid: int | None = None
    if any(s in ("gc", "trim") for s in steps):
        try:
            pid = _pid_arg(args)
        except RequestError as exc:
            if "pid" in args:
                raise
            pid = None
            log.info("prepare: %s", exc.message)
    report: list[dict[str, Any]] = []
    for step in steps:
        t0 = time.monotonic()
        entry: dict[str, Any] = {"step": step}
        try:
            if step == "hooks":
                entry.update(_run_hooks(cfg, "before-snapshot", {}))
            elif step in ("gc", "trim"):
                if pid is None:
                    entry.update(ok=False, skipped=True, detail="no single JVM to act on")
                else:
                    cmd = "GC.run" if step == "gc" else "System.trim_native_heap"
                    try:
                        out = jvm.jcmd(pid, cmd, timeout=cfg.jvm_timeout)
                        entry.update(ok=True, detail=out.strip()[-500:])
                    except jvm.JvmError as exc:
                        unknown = "Unknown diagnostic command" in str(exc)
                        entry.update(ok=False, skipped=unknown, detail=str(exc)[:500])
            elif step == "sysctl":
                done = [_write_sysctl("/proc/sys/vm/compaction_proactiveness", "0"),
                        _write_sysctl("/proc/sys/vm/compact_unevictable_allowed", "0")]
                entry.update(ok=True, detail="; ".join(done))
            elif step == "drop-caches":
                os.sync()
                entry.update(ok=True, detail=_write_sysctl("/proc/sys/vm/drop_caches", "3"))
            elif step == "compact":
                entry.update(ok=True, detail=_write_sysctl("/proc/sys/vm/compact_memory", "1"))
        except OSError as exc:
            entry.update(ok=False, detail=f"{exc.filename or step}: {exc.strerror or exc}")
        entry["seconds"] = round(time.monotonic() - t0, 3)
        report.append(entry)
    return {"steps": report, "ok": all(e.get("ok") or e.get("skipped") for e in report)}


RNDADDENTROPY = 0x40085203
AFTER_RESTORE_STEPS = ("entropy", "clock", "hooks")


def cmd_after_restore(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """After a restore: reseed entropy, set the clock, run hooks and notify apps.

    args: ``entropy_b64`` (16..4096 random bytes from the host), ``time_ns`` (host CLOCK_REALTIME),
    ``generation`` (restore counter passed to hooks), ``steps``.
    """
    steps = _arg(args, "steps", list, list(AFTER_RESTORE_STEPS))
    bad = [s for s in steps if s not in AFTER_RESTORE_STEPS]
    if bad:
        raise RequestError("bad-request",
                           f"unknown after-restore step(s) {bad}; known: {', '.join(AFTER_RESTORE_STEPS)}")
    seed_b64 = _arg(args, "entropy_b64", str)
    time_ns = _arg(args, "time_ns", int)
    generation = _arg(args, "generation", int, 0)
    report: list[dict[str, Any]] = []
    for step in steps:
        entry: dict[str, Any] = {"step": step}
        try:
            if step == "entropy":
                if not seed_b64:
                    entry.update(ok=False, skipped=True, detail="no entropy_b64 given by the host")
                else:
                    try:
                        seed = base64.b64decode(seed_b64, validate=True)
                    except ValueError:
                        raise RequestError("bad-request", "entropy_b64 is not valid base64") from None
                    if not 16 <= len(seed) <= 4096:
                        raise RequestError("bad-request", "entropy_b64 must decode to 16..4096 bytes")
                    with open("/dev/urandom", "wb") as fh:
                        fcntl.ioctl(fh.fileno(), RNDADDENTROPY,
                                    struct.pack("ii", len(seed) * 8, len(seed)) + seed)
                    entry.update(ok=True, detail=f"credited {len(seed) * 8} bits")
            elif step == "clock":
                if time_ns is None:
                    entry.update(ok=False, skipped=True, detail="no time_ns given by the host")
                else:
                    before = time.time_ns()
                    time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)
                    entry.update(ok=True, detail=f"clock stepped by {(time_ns - before) / 1e9:+.3f} s")
            elif step == "hooks":
                entry.update(_run_hooks(cfg, "after-restore", {"FIRECRACER_GENERATION": str(generation)}))
        except OSError as exc:
            entry.update(ok=False, detail=f"{exc.filename or step}: {exc.strerror or exc}")
        report.append(entry)
    return {"steps": report, "ok": all(e.get("ok") or e.get("skipped") for e in report)}


# ------------------------------------------------------------- process checkpoint/restore (CRIU, CRaC)

#: what ``checkpoint`` runs before the dump: the app's hooks (beforeCheckpoint), then a full GC and a
#: native trim, as CRaC's JDK does before it calls CRIU (smaller images)
CHECKPOINT_STEPS = ("hooks", "gc", "trim")
_lazy_daemons: list[crac.LazyDaemon] = []


def _crac_error(exc: crac.CracError) -> RequestError:
    return RequestError(exc.code, exc.message)


def _failed_steps(rep: dict[str, Any]) -> str:
    """One line naming each failed prepare/hook step and why."""
    out = []
    for s in rep.get("steps", []):
        if s.get("ok") or s.get("skipped"):
            continue
        hooks = [h for h in s.get("hooks", []) if not h.get("ok")]
        why = "; ".join(str(h.get("answer") or h.get("error") or h.get("output") or "failed").strip()
                        for h in hooks) or str(s.get("detail") or "failed")
        out.append(f"{s.get('step')}: {why}")
    return "; ".join(out)[:1000]


def cmd_criu_check(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """``criu check``: whether this guest's kernel has what CRIU needs (``ok``, CRIU's words)."""
    try:
        return crac.criu_check(timeout=float(_arg(args, "timeout", (int, float), 60.0)))
    except crac.CracError as exc:
        raise _crac_error(exc) from None


def cmd_checkpoint(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint the JVM with CRIU onto the scratch drive: its hooks, GC, trim, then ``criu dump``.

    args: ``name`` (default ``jvm``), ``pid`` (default: the only JVM), ``steps`` (default
    CHECKPOINT_STEPS), ``device`` (``/dev/vdb``), ``leave_running``, ``timeout``. A failed hook stops
    before the dump; a failed dump runs the after-restore hooks (CRaC does: the JVM goes on) and quotes
    CRIU. Reply: images' bytes and pages, seconds, the steps' report.
    """
    name = crac.check_name(_arg(args, "name", str, "jvm"))
    pid = _pid_arg(args)
    steps = _arg(args, "steps", list, list(CHECKPOINT_STEPS))
    timeout = float(_arg(args, "timeout", (int, float), 600.0))
    t0 = time.monotonic()
    rep = cmd_prepare(cfg, {"steps": steps, "pid": pid})
    if not rep["ok"]:
        after = _run_hooks(cfg, "after-restore", {"FIRECRACER_GENERATION": "0"}) if "hooks" in steps else {}
        raise RequestError("checkpoint-hooks-failed", f"before the checkpoint of pid {pid}: "
                           f"{_failed_steps(rep)}; no checkpoint was made, the JVM goes on"
                           + ("" if after.get("ok", True) else " (its after-restore hooks failed too)"))
    prepared = time.monotonic() - t0
    try:
        facts = crac.dump(pid, name, device=_arg(args, "device", str, crac.SCRATCH_DEVICE), timeout=timeout,
                          leave_running=bool(_arg(args, "leave_running", bool, False)))
    except crac.CracError as exc:
        if "hooks" in steps and os.path.exists(f"/proc/{pid}"):
            _run_hooks(cfg, "after-restore", {"FIRECRACER_GENERATION": "0"})
        raise _crac_error(exc) from None
    return {**facts, "prepare": rep, "prepare_seconds": round(prepared, 6)}


def _reap_lazy_daemons() -> None:
    for d in list(_lazy_daemons):
        if d.proc.poll() is not None:
            _lazy_daemons.remove(d)


def cmd_restore(cfg: AgentConfig, args: dict[str, Any]) -> dict[str, Any]:
    """Restore a CRIU checkpoint of the scratch drive: ``criu restore``, eager or ``lazy``, then the
    after-restore hooks, then (``request``: ``{"port", "path", "timeout"}``) the first request from
    inside the guest, timed from the restore command.

    A lazy restore's reply carries the faults CRIU's lazy-pages daemon logged until the response
    (``faults``: ``t_s`` in the daemon's clock, ``pid``, ``addr``, ``zero``), the clock's offsets, and
    when its background push of the remaining pages began (``background_start_s``).
    """
    _reap_lazy_daemons()
    name = crac.check_name(_arg(args, "name", str, "jvm"))
    lazy = bool(_arg(args, "lazy", bool, False))
    hooks = bool(_arg(args, "hooks", bool, True))
    request = _arg(args, "request", dict)
    t0 = time.monotonic()
    try:
        facts, daemon = crac.restore(name, device=_arg(args, "device", str, crac.SCRATCH_DEVICE), lazy=lazy,
                                     timeout=float(_arg(args, "timeout", (int, float), 600.0)))
    except crac.CracError as exc:
        raise _crac_error(exc) from None
    if daemon is not None:
        _lazy_daemons.append(daemon)
    try:
        if hooks:
            h0 = time.monotonic()
            facts["hooks"] = _run_hooks(cfg, "after-restore", {"FIRECRACER_GENERATION": "1"})
            facts["hooks_seconds"] = round(time.monotonic() - h0, 6)
        facts["running_seconds"] = round(time.monotonic() - t0, 6)
        if request is not None:
            port = _arg(request, "port", int, 8080)
            path = _arg(request, "path", str, "/")
            fr = crac.first_request(port, path, float(_arg(request, "timeout", (int, float), 120.0)))
            t_resp = time.monotonic()
            facts["first_request"] = fr
            facts["first_response_seconds"] = round(t_resp - t0, 6)
            if daemon is not None:
                cut = t_resp - daemon.started
                faults = crac.parse_lazy_log(daemon.log.read_text(errors="replace"))
                facts["faults"] = faults.until(cut).to_json()
                facts["faults_total_so_far"] = len(faults.t_s)
                facts["response_daemon_s"] = round(cut, 6)
    except crac.CracError as exc:
        raise _crac_error(exc) from None
    return facts


COMMANDS: dict[str, Callable[[AgentConfig, dict[str, Any]], dict[str, Any]]] = {
    "help": cmd_help,
    "ping": cmd_ping,
    "collect-memmap": cmd_collect_memmap,
    "nmt": cmd_nmt,
    "jcmd": cmd_jcmd,
    "smaps": cmd_smaps,
    "exec": cmd_exec,
    "prepare": cmd_prepare,
    "after-restore": cmd_after_restore,
    "criu-check": cmd_criu_check,
    "checkpoint": cmd_checkpoint,
    "restore": cmd_restore,
}


# ------------------------------------------------------------------------------------------- handler

_error = agentnet.error_reply


def handle_request(cfg: AgentConfig, line: bytes) -> bytes:
    """One request line in, one reply line out (``\\n``-terminated). Never raises."""
    rid: Any = None
    try:
        reply = _dispatch(cfg, line)
        rid = reply.get("id")
        out = json.dumps(reply, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
        if len(out) > cfg.max_reply:
            out = json.dumps(_error(rid, "reply-too-large",
                                    f"reply of {len(out)} bytes exceeds the agent's limit of "
                                    f"{cfg.max_reply} bytes")).encode() + b"\n"
        return out
    except Exception as exc:  # the agent must survive anything a request can trigger
        log.exception("internal error")
        return json.dumps(_error(rid, "internal", f"{type(exc).__name__}: {exc}")).encode() + b"\n"


def _dispatch(cfg: AgentConfig, line: bytes) -> dict[str, Any]:
    if len(line) > cfg.max_request:
        return _error(None, "too-large", f"request of {len(line)} bytes exceeds {cfg.max_request} bytes")
    try:
        req = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return _error(None, "bad-json", f"request is not JSON: {str(exc)[:200]}")
    if not isinstance(req, dict):
        return _error(None, "bad-request", f"request must be a JSON object, got {type(req).__name__}")
    rid = req.get("id")
    if not isinstance(rid, (str, int, float, type(None))) or isinstance(rid, bool):
        rid = None
    if isinstance(rid, str):
        rid = rid[:200]
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        return _error(rid, "bad-request", "request needs a string 'cmd'")
    fn = COMMANDS.get(cmd)
    if fn is None:
        return _error(rid, "unknown-command",
                      f"unknown command {cmd[:100]!r}; known: {', '.join(sorted(COMMANDS))}")
    args = req.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return _error(rid, "bad-request", f"'args' must be a JSON object, got {type(args).__name__}")
    try:
        result = fn(cfg, args)
    except RequestError as exc:
        return _error(rid, exc.code, exc.message)
    return {"id": rid, "ok": True, "result": result}


# -------------------------------------------------------------------------------------------- server

class Agent(agentnet.LineServer):
    """The agent's listeners and connections (``guest.agentnet``), answering with :func:`handle_request`."""

    def __init__(self, cfg: AgentConfig, listens: list[str], forwards: list[tuple[str, str]]) -> None:
        self.cfg = cfg
        super().__init__(lambda line: handle_request(cfg, line), cfg.max_request, listens, forwards)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m firecracer.guest.agent``."""
    ap = argparse.ArgumentParser(prog="firecracer.guest.agent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", action="append", metavar="ADDR",
                    help=f"vsock:PORT | tcp:HOST:PORT | unix:PATH (repeatable; default vsock:{DEFAULT_PORT})")
    ap.add_argument("--forward", action="append", default=[], type=agentnet.parse_forward,
                    metavar="LISTEN=[HOST:]PORT",
                    help="forward connections on LISTEN to a guest TCP port (repeatable)")
    ap.add_argument("--hooks-dir", default=DEFAULT_HOOKS_DIR)
    ap.add_argument("--notify-dir", default=DEFAULT_NOTIFY_DIR)
    ap.add_argument("--max-request", type=int, default=MAX_REQUEST)
    ap.add_argument("--max-reply", type=int, default=MAX_REPLY)
    ap.add_argument("--log-level", default="INFO")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr,
                        format="firecracer-agent: %(levelname)s %(message)s")
    cfg = AgentConfig(max_request=ns.max_request, max_reply=ns.max_reply, hooks_dir=ns.hooks_dir,
                      notify_dir=ns.notify_dir)
    try:
        agent = Agent(cfg, ns.listen or [f"vsock:{DEFAULT_PORT}"], ns.forward)
    except (OSError, ValueError) as exc:
        log.error("cannot listen: %s", exc)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    log.info("listening on %s", ", ".join(spec for _, _, spec in agent._socks))
    try:
        agent.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
