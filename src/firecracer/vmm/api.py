"""HTTP/1.1 client for Firecracker's API socket (AF_UNIX), standard library only.

One connection per request: Firecracker's micro-http server is single-threaded and cheap to
connect to, and a fresh connection never inherits a half-read response from a failed call.
Every non-2xx answer, and every transport failure, becomes a :class:`FirecrackerError` that names
the request; ``describe_death`` lets the owner of the process explain *why* the socket went away
(exit status, last log line) instead of a bare "connection refused".
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firecracer.errors import FirecrackerError
from firecracer.fcversion import Version

_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


class Unsupported(FirecrackerError):
    """The requested feature cannot work with this Firecracker version on this host; ``reason`` says why."""

    def __init__(self, reason: str, **kw: Any) -> None:
        self.reason = reason
        super().__init__(f"unsupported: {reason}", **kw)


def connect_unix(path: str | os.PathLike[str], timeout: float | None) -> socket.socket:
    """Connect an AF_UNIX stream socket, even when ``path`` is longer than ``sun_path`` allows.

    Long paths (deep pytest or state dirs) are reached through ``/proc/self/fd/<dirfd>/<name>``.
    """
    path = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(path)
        else:
            dfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
            finally:
                os.close(dfd)
    except BaseException:
        sock.close()
        raise
    return sock


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, self.timeout)


@dataclass(frozen=True)
class Watch:
    """Something whose end must abort a waiting request at once, instead of after its timeout.

    ``fd()`` gives a file descriptor that turns readable when it happened (a pidfd of the page server),
    or -1 if it cannot be watched. ``fire("METHOD /path")`` is called when it did: it cleans up (kills
    Firecracker, which would hang) and returns the whole error message.
    """

    fd: Callable[[], int]
    fire: Callable[[str], str]


def _brief(body: object) -> str:
    text = json.dumps(body, separators=(",", ":"), default=str)
    return text if len(text) <= 300 else text[:297] + "..."


class ApiClient:
    """Talks to one Firecracker process; knows its version once :meth:`version` was asked.

    :param socket_path: the ``--api-sock`` path.
    :param timeout: seconds per request (connect + send + full response).
    :param describe_death: called when the transport fails; returns a sentence like
        ``"Firecracker exited with status 1: <last log line>"`` or None if the process still runs.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 30.0,
                 describe_death: Callable[[], str | None] | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.describe_death = describe_death
        self.watches: list[Watch] = []
        self._version: Version | None = None

    # -- transport ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: object = None, *, timeout: float | None = None) -> Any:
        """Send one request; return the decoded JSON answer (None for 204).

        :raises FirecrackerError: non-2xx status (with ``fault_message``), or the socket failed.
        """
        payload = None if body is None else json.dumps(body).encode()
        conn = _UnixConnection(str(self.socket_path), self.timeout if timeout is None else timeout)
        what = f"{method} {path}" + (f" {_brief(body)}" if body is not None else "")
        self._check_watches(what, None, 0)
        try:
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            if self.watches and conn.sock is not None:
                self._await_reply(conn.sock, what, self.timeout if timeout is None else timeout)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            death = self.describe_death() if self.describe_death else None
            why = death or f"{type(exc).__name__}: {exc}"
            raise FirecrackerError(f"{what}: no answer from Firecracker at {self.socket_path} ({why})",
                                   method=method, path=path, body=body) from exc
        finally:
            conn.close()
        data: Any = None
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw.decode(errors="replace")
        if 200 <= status < 300:
            return data
        fault = data.get("fault_message") if isinstance(data, dict) else None
        fault = fault if isinstance(fault, str) else str(data)
        raise FirecrackerError(f"{what}: Firecracker answered {status}: {fault}", method=method, path=path,
                               status=status, fault_message=fault, body=body)

    def _check_watches(self, what: str, sock: socket.socket | None, wait: float) -> bool:
        """Poll the watches (and ``sock``) for up to ``wait`` s; raise if a watch fired, True if the
        socket has something to read."""
        fds = {w.fd(): w for w in self.watches}
        fds.pop(-1, None)
        rlist: list[int] = list(fds) + ([sock.fileno()] if sock is not None else [])
        if not rlist:
            return sock is None
        ready, _, _ = select.select(rlist, [], [], wait)
        for fd in ready:
            if fd in fds:
                method, _, rest = what.partition(" ")
                path = rest.split(" ", 1)[0]
                raise FirecrackerError(fds[fd].fire(f"{method} {path}"), method=method, path=path)
        return bool(ready)

    def _await_reply(self, sock: socket.socket, what: str, timeout: float) -> None:
        """Wait until the answer starts arriving, watching the watches meanwhile (see :class:`Watch`)."""
        deadline = time.monotonic() + timeout
        while not self._check_watches(what, sock, max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:g} s")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def put(self, path: str, body: object, *, timeout: float | None = None) -> Any:
        return self.request("PUT", path, body, timeout=timeout)

    def patch(self, path: str, body: object, *, timeout: float | None = None) -> Any:
        return self.request("PATCH", path, body, timeout=timeout)

    # -- readiness and version ---------------------------------------------------------------
    def wait_ready(self, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> None:
        """Poll until the socket answers ``GET /`` or ``timeout`` passes (or ``alive()`` turns false)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                break
            if self.socket_path.exists():
                try:
                    self.request("GET", "/", timeout=2.0)
                    return
                except FirecrackerError as exc:
                    if exc.status is not None:  # it answered: the server is up
                        return
                    last = exc
            time.sleep(0.005)
        death = self.describe_death() if self.describe_death else None
        raise FirecrackerError(f"API socket {self.socket_path} did not come up within {timeout:g} s"
                               + (f" ({death})" if death else f" ({last})" if last else ""))

    def version(self) -> Version:
        """``GET /version`` (cached): the running Firecracker's release."""
        if self._version is None:
            ans = self.get("/version")
            if not isinstance(ans, dict) or "firecracker_version" not in ans:
                raise FirecrackerError(f"GET /version: unexpected answer {ans!r}", method="GET",
                                       path="/version")
            self._version = Version.parse(str(ans["firecracker_version"]))
        return self._version
