"""A minimal Firecracker driver for the probe backend: process, API over the Unix socket, serial lines.

Kept small and private on purpose: it does exactly what a probe run needs (spawn, a handful of API
calls, serial in/out with timestamps, kill) and owns the process's whole lifecycle (own session, killed
and reaped on every exit path, socket directory removed). The project's full control plane is
``firecracer.vmm``; this module is the seam where the experiment runner would use it instead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from firecracer.errors import FirecrackerError
from firecracer.vmm.probe import ProbeBoot, ProbeReady, ProbeResult, parse_line

ProbeLine = ProbeBoot | ProbeReady | ProbeResult


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class FcVm:
    """One Firecracker process. ``logdir`` keeps serial.log, firecracker.err and metrics.json."""

    def __init__(self, binary: Path, logdir: Path, *, sock_dir: Path | None = None) -> None:
        self.binary = binary
        self.logdir = logdir
        self._own_sock_dir = sock_dir is None
        self.sock_dir = sock_dir if sock_dir is not None else Path(tempfile.mkdtemp(prefix="fcx-"))
        self.api_sock = self.sock_dir / "api.sock"
        self.metrics_path = logdir / "metrics.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[tuple[str, float, float]] = []  # text, t_first_byte, t_newline (monotonic)
        self._cursor = 0
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False

    def __enter__(self) -> FcVm:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Spawn Firecracker and wait (bounded) until its API socket answers."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.metrics_path.touch()
        self.api_sock.unlink(missing_ok=True)
        err = open(self.logdir / "firecracker.err", "wb")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [str(self.binary), "--api-sock", str(self.api_sock), "--level", "Warning"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        finally:
            err.close()
        self._reader = threading.Thread(target=self._read_serial, name="fc-serial", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise FirecrackerError(f"{self.binary} exited ({self._proc.returncode}) at start"
                                       f"{self.death_note()}")
            if self.api_sock.exists():
                try:
                    self.api("GET", "/", timeout=2.0)
                    return
                except (FirecrackerError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise FirecrackerError(f"{self.binary}: API socket not ready within {timeout:g} s")
            time.sleep(0.005)

    def kill(self) -> None:
        """Kill the process group, reap it, stop the reader, remove the socket directory."""
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            for f in (self._proc.stdin, self._proc.stdout):
                with contextlib.suppress(OSError):
                    if f is not None:
                        f.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        self.api_sock.unlink(missing_ok=True)
        if self._own_sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    def page_faults(self) -> int:
        """minflt + majflt of the Firecracker process so far (guest first touches show up here)."""
        if self._proc is None:
            return 0
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return 0
        fields = stat.rsplit(")", 1)[1].split()
        return int(fields[7]) + int(fields[9])  # minflt, majflt (fields 10 and 12 of stat)

    def death_note(self) -> str:
        """`` (Firecracker exited N: <last stderr line>)`` when it is dead, else ``""``."""
        if self._proc is None or self._proc.poll() is None:
            return ""
        last = ""
        with contextlib.suppress(OSError):
            lines = [ln for ln in (self.logdir / "firecracker.err").read_text(errors="replace").splitlines()
                     if ln.strip()]
            last = f": {lines[-1].strip()[:300]}" if lines else ""
        return f" (Firecracker exited {self._proc.returncode}{last})"

    # -- API ---------------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: object = None, *, timeout: float = 30.0) -> Any:
        """One API request; non-2xx → ``FirecrackerError`` with Firecracker's ``fault_message``."""
        conn = _UnixHTTP(str(self.api_sock), timeout)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, {"Content-Type": "application/json",
                                                 "Accept": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            raise FirecrackerError(f"{method} {path}: {exc}{self.death_note()}", method=method,
                                   path=path) from None
        finally:
            conn.close()
        parsed: Any = None
        if data:
            with contextlib.suppress(ValueError):
                parsed = json.loads(data)
        if resp.status >= 300:
            fault = parsed.get("fault_message") if isinstance(parsed, dict) else None
            raise FirecrackerError(f"{method} {path}: {resp.status} {fault or data[:200]!r}", method=method,
                                   path=path, status=resp.status, fault_message=fault, body=body)
        return parsed

    def boot(self, kernel: Path, *, mem_size_mib: int, vcpus: int) -> None:
        self.api("PUT", "/boot-source", {"kernel_image_path": str(kernel), "boot_args": "console=ttyS0"})
        self.api("PUT", "/machine-config", {"vcpu_count": vcpus, "mem_size_mib": mem_size_mib})
        self.api("PUT", "/actions", {"action_type": "InstanceStart"})

    # -- serial ------------------------------------------------------------------------------------
    def send_serial(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except OSError as exc:
            raise FirecrackerError(f"serial input: {exc}{self.death_note()}") from None

    def wait_line(self, pred: Callable[[ProbeLine], bool],
                  timeout: float) -> tuple[ProbeLine, float, float] | None:
        """Next probe line (after the previous match) satisfying ``pred``, with the monotonic times of
        its first byte and its newline; ``None`` on timeout or when Firecracker's output ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor < len(self._lines):
                    text, t_first, t_end = self._lines[self._cursor]
                    self._cursor += 1
                    parsed = parse_line(text)
                    if parsed is not None and pred(parsed):
                        return parsed, t_first, t_end
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def _read_serial(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        t_first: float | None = None
        with open(self.logdir / "serial.log", "ab") as log:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                now = time.monotonic()
                if not chunk:
                    break
                log.write(chunk)
                if t_first is None:
                    t_first = now
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    with self._cond:
                        self._lines.append((line.decode(errors="replace"), t_first or now, now))
                        self._cond.notify_all()
                    t_first = now if buf else None
        with self._cond:
            self._eof = True
            self._cond.notify_all()


def read_metrics(path: Path) -> dict[str, Any]:
    """The last complete JSON object Firecracker flushed to its metrics file ({} if none)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return {}
