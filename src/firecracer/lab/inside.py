"""The lab's runner inside L1 (standard library only): runs one command and relays it to the host.

Started by the L1 init as PID 1 of the chroot (``python3 inside.py JOB.json``). It speaks to the host
over one virtio-serial port named ``firecracer.lab`` with length-prefixed frames (``FRAME``): the
command's stdout (``o``) and stderr (``e``) as they come, status JSON (``s``: the init's stage stamps),
and finally the exit (``x``: return code, signal, processes still alive). The host may send ``k``
(a signal to forward to the command's process group: Ctrl-C, SIGTERM, timeout). When the command is
done, L1 is synced and powered off; QEMU then exits on the host.

The host side (:mod:`firecracer.lab.machine`) imports the frame constants from here, so the two ends
cannot drift.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORT_NAME = "firecracer.lab"
FRAME = struct.Struct(">cI")
#: guest → host
STDOUT, STDERR, STATUS, EXIT = b"o", b"e", b"s", b"x"
#: host → guest
KILL = b"k"
MAX_FRAME = 1 << 20
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC


def encode(kind: bytes, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def find_port(name: str = PORT_NAME) -> Path:
    for d in sorted(Path("/sys/class/virtio-ports").glob("vport*")):
        with contextlib.suppress(OSError):
            if (d / "name").read_text().strip() == name:
                return Path("/dev") / d.name
    raise SystemExit(f"lab: no virtio-serial port named {name!r} in L1")


class Port:
    """The control port: whole frames out, frames in (parsed from a buffer)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._inbuf = b""

    def send(self, kind: bytes, payload: bytes) -> None:
        view = memoryview(encode(kind, payload))
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def send_json(self, kind: bytes, obj: Any) -> None:
        self.send(kind, json.dumps(obj).encode())

    def receive(self) -> list[tuple[bytes, bytes]]:
        """Frames that arrived (call when readable)."""
        data = os.read(self.fd, 65536)
        self._inbuf += data
        out = []
        while len(self._inbuf) >= FRAME.size:
            kind, n = FRAME.unpack_from(self._inbuf)
            if len(self._inbuf) < FRAME.size + n:
                break
            out.append((kind, self._inbuf[FRAME.size:FRAME.size + n]))
            self._inbuf = self._inbuf[FRAME.size + n:]
        return out


def stages() -> dict[str, float]:
    """The init's stamps (``name uptime`` lines) plus this runner's start."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path("/run/lab-stages").read_text().splitlines():
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    out["runner"] = uptime()
    return out


def leftovers(keep: set[int]) -> list[str]:
    """User processes still alive besides ``keep`` (kernel threads have an empty cmdline)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in keep:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:
            continue
        if cmd:
            out.append(f"{p.name} {cmd.decode(errors='replace')[:200]}")
    return out


def power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)
    time.sleep(30)  # the kernel powers off; if not, PID 1 exiting panics L1 (panic=-1 → QEMU exits)


def run(job: dict[str, Any], port: Port) -> dict[str, Any]:
    """Run the job's command, relaying output and signals; the exit facts."""
    argv = [str(a) for a in job["argv"]]
    env = {str(k): str(v) for k, v in job.get("env", {}).items()}
    try:
        proc = subprocess.Popen(argv, cwd=job.get("cwd") or "/", env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        port.send(STDERR, f"lab: cannot run {argv[0]!r} in L1: {exc.strerror}\n".encode())
        return {"rc": 127, "signal": None}
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, STDOUT)
    sel.register(proc.stderr, selectors.EVENT_READ, STDERR)
    sel.register(port.fd, selectors.EVENT_READ, KILL)
    open_pipes = 2
    exited_at: float | None = None
    while open_pipes:
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        # a daemon that inherited stdout keeps the pipes open: stop 2 s after the command itself exits
        if exited_at is not None and time.monotonic() - exited_at > 2.0:
            break
        for key, _ in sel.select(timeout=0.5):
            if key.data == KILL:
                for kind, payload in port.receive():
                    if kind == KILL:
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.killpg(proc.pid, int(json.loads(payload)["signal"]))
                continue
            chunk = os.read(key.fd, 65536)
            if chunk:
                port.send(key.data, chunk)
            else:
                sel.unregister(key.fileobj)
                open_pipes -= 1
    rc = proc.wait()
    sig = signal.Signals(-rc).name if rc < 0 else None
    return {"rc": 128 - rc if rc < 0 else rc, "signal": sig}


def main(argv: list[str]) -> int:
    port = Port(find_port())
    try:
        port.send_json(STATUS, {"stages": stages()})
        job = json.loads(Path(argv[1]).read_text())
        facts = run(job, port)
        facts["leftover"] = leftovers({os.getpid()})
        facts["uptime"] = uptime()
        port.send_json(EXIT, facts)
    except BaseException as exc:  # tell the host, whatever happened, then power off
        with contextlib.suppress(OSError):
            port.send(STDERR, f"lab: runner failed in L1: {exc!r}\n".encode())
            port.send_json(EXIT, {"rc": 125, "signal": None, "runner_error": repr(exc)})
    finally:
        if os.getpid() == 1:
            power_off()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
