"""A minimal QMP (QEMU Machine Protocol) client over a Unix socket: commands, replies, bounded waits."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError


class QmpError(FirecracerError):
    """QEMU refused a QMP command, or its monitor socket went away."""


class Qmp:
    """One QMP session. Events are collected in ``events`` as they pass by."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(self.path)
                break
            except OSError as exc:
                self._sock.close()
                last = exc
                if time.monotonic() > deadline:
                    raise QmpError(f"QMP {self.path}: cannot connect: {last}") from exc
                time.sleep(0.1)
        self._buf = b""
        greeting = self._read(timeout)
        if "QMP" not in greeting:
            raise QmpError(f"QMP {self.path}: unexpected greeting {greeting!r}")
        self.version = greeting["QMP"].get("version", {}).get("qemu", {})
        self.command("qmp_capabilities")

    def close(self) -> None:
        """Close the socket (QEMU keeps running)."""
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"QMP {self.path}: no reply within {timeout:.0f} s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise QmpError(f"QMP {self.path}: {exc}") from exc
            if not chunk:
                raise QmpError(f"QMP {self.path}: QEMU closed the monitor (did it exit?)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def command(self, name: str, args: dict[str, Any] | None = None, *, timeout: float = 60.0) -> Any:
        """Run ``name`` and return its ``return`` value; an ``error`` reply raises ``QmpError``."""
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read(timeout)
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(f"QMP {name}: {err.get('class')}: {err.get('desc')}")
            return msg.get("return")

    def hmp(self, line: str) -> str:
        """A human-monitor command through QMP (for things QMP lacks); returns its text."""
        return str(self.command("human-monitor-command", {"command-line": line}))

    def wait_migration(self, *, timeout: float) -> dict[str, Any]:
        """Poll ``query-migrate`` until completed (returned) or failed (raises), bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = self.command("query-migrate") or {}
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise QmpError(f"QMP {self.path}: migration {status}: {info.get('error-desc', '')}")
            if time.monotonic() > deadline:
                raise QmpError(f"QMP {self.path}: migration still {status} after {timeout:.0f} s")
            time.sleep(0.05)

    def wait_status(self, wanted: set[str], *, timeout: float) -> str:
        """Poll ``query-status`` until the run state is one of ``wanted``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            st = str((self.command("query-status") or {}).get("status"))
            if st in wanted:
                return st
            if time.monotonic() > deadline:
                raise QmpError(f"QMP {self.path}: run state {st!r}, not {sorted(wanted)} "
                               f"after {timeout:.0f} s")
            time.sleep(0.05)
