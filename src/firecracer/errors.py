"""Typed errors. The CLI turns every ``FirecracerError`` into one line and a non-zero exit.

Each error's ``str()`` is that line: it names the thing (file, request, binary) and what is wrong.
"""

from __future__ import annotations

from pathlib import Path


class FirecracerError(Exception):
    """Base class of every error the tool reports to a user."""


class NotImplementedYet(FirecracerError):
    """A command group whose implementation lands later; says so instead of pretending."""


class FirecrackerError(FirecracerError):
    """Firecracker refused a request or died: carries its ``fault_message`` and the request."""

    def __init__(self, message: str, *, method: str = "", path: str = "", status: int | None = None,
                 fault_message: str | None = None, body: object = None) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message
        self.body = body
        super().__init__(message)


class HandshakeError(FirecracerError):
    """The uffd hand-off from Firecracker was malformed or inconsistent with the memory file.

    ``peer_sent_uffd``: the peer did hand over a userfaultfd, so its guest memory is registered and it
    would hang on its next fault without a server (the server then kills it); a peer that sent none (a
    stray client, a port scanner, a test harness) is only disconnected.
    """

    def __init__(self, message: str, *, peer_sent_uffd: bool = False) -> None:
        self.peer_sent_uffd = peer_sent_uffd
        super().__init__(message)


class FormatError(FirecracerError):
    """A file we parse is malformed: names the file, the line (1-based, 0 if not line-based) and why."""

    def __init__(self, path: str | Path, line: int, why: str) -> None:
        self.path = str(path)
        self.line = line
        self.why = why
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {why}")


class BinaryNotFound(FirecracerError):
    """A required external program (Firecracker, QEMU, jcmd …) is missing."""
