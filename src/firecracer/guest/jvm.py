"""Talk to HotSpot JVMs: find them, and run diagnostic commands (``jcmd``) in them.

Two ways, same output: the HotSpot *attach protocol* spoken directly over the JVM's Unix socket
(``/tmp/.java_pid<pid>``; no second JVM is started, which matters under QEMU TCG where starting ``jcmd``
costs seconds), and the ``jcmd`` binary as a fallback. Output is what ``jcmd PID CMD`` prints: a
``PID:`` line, then the JVM's answer verbatim (docs/formats.md, nmt.txt).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from firecracer.guest import procfs

#: Largest jcmd answer we accept (NMT detail of a big JVM is a few MiB).
MAX_OUTPUT = 64 << 20

#: the JVM's fatal-error banner on a console, up to its signal line (``sig``): one pattern for every
#: reader of guest consoles (readiness waits, ``image check``)
JVM_CRASH_RX = re.compile(r"A fatal error has been detected by the Java Runtime Environment(?:.*\n)+?"
                          r"#\s+(?P<sig>SIG\w+ \(0x\w+\) at pc.*)")
#: what a live guest's console shows when its JVM crashed (``vmm.console.Console.broken``'s ``also``)
JVM_CRASH = (JVM_CRASH_RX, "the JVM crashed")
#: the banner's lines that say why a guest's JVM died (``MicroVM.guest_death``'s ``also``)
JVM_DEATH_RX = re.compile(r"A fatal error has been detected.*|^#\s+(?P<sig>SIG\w+ \(0x\w+\) at pc.*)",
                          re.MULTILINE)


class JvmError(Exception):
    """A JVM could not be reached or refused the command; the message names the pid and why."""


def is_java(pid: int) -> bool:
    """True if ``pid``'s executable is called ``java`` (the launcher HotSpot runs in)."""
    exe = procfs.exe_of(pid)
    return exe is not None and os.path.basename(exe.removesuffix(" (deleted)")) == "java"


def java_pids() -> list[int]:
    """Every running ``java`` process, ascending."""
    return [p for p in procfs.list_pids() if is_java(p)]


def _ns_pid(pid: int) -> int:
    """The pid as the JVM itself sees it (innermost pid namespace), from /proc/PID/status ``NSpid``."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


def _socket_path(pid: int) -> str:
    return f"/proc/{pid}/root/tmp/.java_pid{_ns_pid(pid)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_attach_listener(pid: int, timeout: float) -> str:
    """Make the JVM open its attach socket (touch ``.attach_pid<pid>``, send SIGQUIT), wait for it."""
    sock = _socket_path(pid)
    if os.path.exists(sock):
        return sock
    nspid = _ns_pid(pid)
    trigger = None
    for d in (f"/proc/{pid}/cwd", f"/proc/{pid}/root/tmp"):
        cand = f"{d}/.attach_pid{nspid}"
        try:
            with open(cand, "w"):
                pass
            trigger = cand
            break
        except OSError:
            continue
    if trigger is None:
        raise JvmError(f"pid {pid}: cannot create the .attach_pid trigger file (cwd and /tmp not writable)")
    try:
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while not os.path.exists(sock):
            if not _alive(pid):
                raise JvmError(f"pid {pid}: the JVM exited")
            if time.monotonic() > deadline:
                raise JvmError(f"pid {pid}: no attach socket after {timeout:.0f} s (started with "
                               "-XX:+DisableAttachMechanism, or not a HotSpot JVM?)")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(trigger)
    return sock


def attach_jcmd(pid: int, command: str, *, timeout: float = 30.0, max_output: int = MAX_OUTPUT) -> str:
    """Run diagnostic ``command`` (e.g. ``"VM.native_memory detail"``) through the attach socket.

    Returns jcmd's stdout: ``"<pid>:\\n"`` + the JVM's answer. Raises ``JvmError`` if the process is not
    running, is not a JVM, does not answer within ``timeout`` s, or answers more than ``max_output`` bytes.
    """
    if not _alive(pid):
        raise JvmError(f"pid {pid}: no such process")
    if not is_java(pid):
        raise JvmError(f"pid {pid}: not a java process ({procfs.exe_of(pid) or 'no exe'})")
    path = _start_attach_listener(pid, timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as exc:
            raise JvmError(f"pid {pid}: cannot connect to {path}: {exc.strerror or exc}") from None
        # protocol version 1, then the operation and three NUL-terminated arguments
        s.sendall(b"1\0jcmd\0" + command.encode() + b"\0\0\0")
        chunks: list[bytes] = []
        total = 0
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise JvmError(f"pid {pid}: {command!r} did not finish within {timeout:.0f} s")
            try:
                got = s.recv(1 << 16)
            except TimeoutError:
                raise JvmError(f"pid {pid}: {command!r} did not finish within {timeout:.0f} s") from None
            if not got:
                break
            total += len(got)
            if total > max_output:
                raise JvmError(f"pid {pid}: {command!r} output exceeds {max_output} bytes")
            chunks.append(got)
    finally:
        s.close()
    data = b"".join(chunks)
    code, nl, body = data.partition(b"\n")
    if not nl:
        raise JvmError(f"pid {pid}: truncated attach reply {data[:80]!r}")
    if code.strip() != b"0":
        raise JvmError(f"pid {pid}: {command!r} failed with code {code.decode(errors='replace')}: "
                       f"{body.decode(errors='replace').strip()[:500]}")
    return f"{pid}:\n" + body.decode("utf-8", "replace")


def binary_jcmd(pid: int, command: str, *, timeout: float = 60.0, max_output: int = MAX_OUTPUT) -> str:
    """Run ``jcmd PID COMMAND`` (the JDK tool) and return its stdout; ``JvmError`` on failure."""
    exe = procfs.exe_of(pid)
    cands = [shutil.which("jcmd")]
    if exe:
        cands.insert(0, str(Path(exe).with_name("jcmd")))
    jcmd = next((c for c in cands if c and os.access(c, os.X_OK)), None)
    if jcmd is None:
        raise JvmError(f"pid {pid}: no jcmd binary (next to {exe} or on PATH)")
    try:
        proc = subprocess.run([jcmd, str(pid), *command.split()], capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise JvmError(f"pid {pid}: jcmd {command!r} did not finish within {timeout:.0f} s") from None
    if len(proc.stdout) > max_output:
        raise JvmError(f"pid {pid}: jcmd {command!r} output exceeds {max_output} bytes")
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        raise JvmError(f"pid {pid}: jcmd {command!r} exited {proc.returncode}: {msg[:500]}")
    return proc.stdout.decode("utf-8", "replace")


def jcmd(pid: int, command: str, *, timeout: float = 30.0, max_output: int = MAX_OUTPUT,
         method: str = "auto") -> str:
    """jcmd via the attach socket, falling back to the jcmd binary (``method``: auto|attach|binary)."""
    if method == "binary":
        return binary_jcmd(pid, command, timeout=timeout, max_output=max_output)
    try:
        return attach_jcmd(pid, command, timeout=timeout, max_output=max_output)
    except JvmError:
        if method == "attach" or not _alive(pid) or not is_java(pid):
            raise
        return binary_jcmd(pid, command, timeout=timeout, max_output=max_output)


def native_memory(pid: int, detail: bool = True, **kw: object) -> str:
    """``jcmd PID VM.native_memory detail|summary`` verbatim; ``JvmError`` if NMT is off in that JVM."""
    out = jcmd(pid, "VM.native_memory " + ("detail" if detail else "summary"), **kw)  # type: ignore[arg-type]
    if "Native memory tracking is not enabled" in out:
        raise JvmError(f"pid {pid}: native memory tracking is not enabled "
                       "(start the JVM with -XX:NativeMemoryTracking=detail)")
    return out


def jvm_options(pid: int) -> list[str]:
    """The JVM's command line (argv), from /proc/PID/cmdline."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []
