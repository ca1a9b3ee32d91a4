"""Host-side client of the guest agent (runs on the host only; the transport is ``firecracer.vmm.vsock``).

Addresses:
  ``vsock:UDS:PORT``  Firecracker's host end of the guest vsock (``uds_path`` of ``PUT /vsock``): connect
                      to the Unix socket, send ``CONNECT PORT\\n``, expect ``OK <n>\\n``, then JSON lines.
  ``tcp:HOST:PORT``   e.g. a QEMU user-mode forward on 127.0.0.1 (no vhost-vsock on our hosts).
  ``unix:PATH``       an agent listening on a Unix socket (tests, or a virtio-serial bridge).

Usage::

    with AgentClient.connect("vsock:/run/vm1/v.sock:52") as agent:
        agent.ping()
        res = agent.exec(["uname", "-a"], timeout_s=10)   # for `firecracer vm exec`

Errors raise :class:`AgentError` (a ``FirecracerError``), one line naming the address/command and what went
wrong.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from firecracer.errors import FirecracerError
from firecracer.vmm.vsock import VsockError, open_stream

MAX_REPLY = 512 << 20


class AgentError(FirecracerError):
    """The agent could not be reached, or answered with an error (``code`` says which kind)."""

    def __init__(self, message: str, code: str = "connection") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ExecResult:
    """What ``exec`` returned: exit code and decoded output."""

    rc: int
    stdout: str
    stderr: str
    seconds: float


class AgentClient:
    """One connection to the agent; requests are sent one at a time (the protocol is synchronous)."""

    def __init__(self, sock: socket.socket, address: str, *, max_reply: int = MAX_REPLY) -> None:
        self._sock = sock
        self.address = address
        self.max_reply = max_reply
        self._buf = bytearray()
        self._next_id = 1

    @classmethod
    def connect(cls, address: str, *, timeout: float = 10.0, retries: int = 0,
                retry_delay: float = 0.5) -> AgentClient:
        """Connect to ``address``, retrying ``retries`` times (right after a restore vsock resets)."""
        last: AgentError | None = None
        for attempt in range(retries + 1):
            try:
                return cls(open_stream(address, timeout), address)
            except VsockError as exc:
                last = AgentError(str(exc))
                if attempt < retries:
                    time.sleep(retry_delay)
        assert last is not None
        raise last

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 120.0) -> dict[str, Any]:
        """Send one request, return its ``result``; ``AgentError(code=...)`` on an error reply."""
        rid = self._next_id
        self._next_id += 1
        line = json.dumps({"cmd": cmd, "args": args or {}, "id": rid}).encode() + b"\n"
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(line)
            reply_line = self._read_line(timeout)
        except TimeoutError:
            raise AgentError(f"{self.address}: {cmd!r} got no reply within {timeout:g} s",
                             "timeout") from None
        except OSError as exc:
            raise AgentError(f"{self.address}: {cmd!r}: {exc.strerror or exc}") from None
        try:
            reply = json.loads(reply_line)
        except ValueError:
            raise AgentError(f"{self.address}: {cmd!r}: reply is not JSON: {reply_line[:100]!r}",
                             "bad-reply") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise AgentError(f"{self.address}: {cmd!r}: malformed reply {reply_line[:100]!r}", "bad-reply")
        if not reply["ok"]:
            err = reply.get("error")
            if not isinstance(err, dict):
                err = {}
            raise AgentError(f"agent {cmd!r} failed: {err.get('message', '?')}",
                             str(err.get("code", "error")))
        if reply.get("id") != rid:
            raise AgentError(f"{self.address}: {cmd!r}: reply id {reply.get('id')!r} != {rid}", "bad-reply")
        result = reply.get("result")
        if not isinstance(result, dict):
            raise AgentError(f"{self.address}: {cmd!r}: reply has no result object", "bad-reply")
        return result

    def _read_line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.max_reply:
                raise AgentError(f"{self.address}: reply exceeds {self.max_reply} bytes", "reply-too-large")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            got = self._sock.recv(1 << 20)
            if not got:
                raise AgentError(f"{self.address}: the agent closed the connection", "connection")
            self._buf += got

    # -- convenience wrappers ------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.call("ping", timeout=30)

    def exec(self, argv: list[str], *, timeout_s: float = 30.0, max_output: int | None = None,
             stdin: str = "") -> ExecResult:
        """Run ``argv`` in the guest (what ``firecracer vm exec VM -- CMD`` calls)."""
        args: dict[str, Any] = {"argv": argv, "timeout_s": timeout_s}
        if max_output is not None:
            args["max_output"] = max_output
        if stdin:
            args["stdin"] = stdin
        r = self.call("exec", args, timeout=timeout_s + 30)
        return ExecResult(int(r["rc"]), str(r["stdout"]), str(r["stderr"]), float(r["seconds"]))

    def nmt(self, pid: int | None = None, mode: str = "detail") -> tuple[int, str]:
        """``(pid, jcmd VM.native_memory text)`` of the guest's JVM."""
        args: dict[str, Any] = {"mode": mode}
        if pid is not None:
            args["pid"] = pid
        r = self.call("nmt", args, timeout=180)
        return int(r["pid"]), str(r["text"])

    def smaps(self, pid: int | None = None) -> tuple[int, str]:
        r = self.call("smaps", {"pid": pid} if pid is not None else {}, timeout=60)
        return int(r["pid"]), str(r["text"])

    def collect_memmap(self, pids: list[int] | None = None, sections: list[str] | None = None,
                       timeout: float = 1800.0) -> bytes:
        """The guest's ``memmap.npz`` bytes."""
        return self.collect_memmap_info(pids, sections, timeout)[0]

    def collect_memmap_info(self, pids: list[int] | None = None, sections: list[str] | None = None,
                            timeout: float = 1800.0) -> tuple[bytes, dict[str, Any]]:
        """``(memmap.npz bytes, the rest of the reply: pages, owners, skipped, seconds in the guest)``."""
        args: dict[str, Any] = {}
        if pids is not None:
            args["pids"] = pids
        if sections is not None:
            args["sections"] = sections
        r = self.call("collect-memmap", args, timeout=timeout)
        try:
            data = base64.b64decode(r.pop("npz_b64"), validate=True)
            return data, r
        except (KeyError, ValueError):
            raise AgentError(f"{self.address}: collect-memmap reply has no valid npz_b64",
                             "bad-reply") from None

    def prepare(self, steps: list[str] | None = None, pid: int | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if steps is not None:
            args["steps"] = steps
        if pid is not None:
            args["pid"] = pid
        return self.call("prepare", args, timeout=600)

    def after_restore(self, *, entropy: bytes | None = None, time_ns: int | None = None,
                      generation: int = 0, steps: list[str] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"generation": generation}
        if entropy is not None:
            args["entropy_b64"] = base64.b64encode(entropy).decode()
        if time_ns is not None:
            args["time_ns"] = time_ns
        if steps is not None:
            args["steps"] = steps
        return self.call("after-restore", args, timeout=300)


def agent_exec(address: str, argv: list[str], *, timeout_s: float = 30.0, connect_timeout: float = 10.0,
               retries: int = 3) -> ExecResult:
    """One-shot ``exec`` for ``firecracer vm exec``: connect (with retries), run, close."""
    with AgentClient.connect(address, timeout=connect_timeout, retries=retries) as agent:
        return agent.exec(argv, timeout_s=timeout_s)
