"""A page server that dies by SIGKILL at a chosen moment of a Uffd restore (for failure-path tests).

usage: python dying_server.py MOMENT SOCKET
MOMENT: ``after-listen`` (0.2 s after listening, before Firecracker connects), ``after-accept`` (right
after accepting Firecracker's connection) or ``after-handshake`` (right after the uffd arrived). Before
dying it writes ``dying_server: dying at <CLOCK_MONOTONIC ns>`` to stderr, so a test can measure how
long the death took to be reported.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def die() -> None:
    sys.stderr.write(f"dying_server: dying at {time.monotonic_ns()}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    moment, path = sys.argv[1], sys.argv[2]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    sys.stderr.write(f"dying_server: listening on {path}, dying {moment}\n")
    sys.stderr.flush()
    if moment == "after-listen":
        time.sleep(0.2)
        die()
    conn, _ = srv.accept()
    if moment == "after-accept":
        die()
    conn.recvmsg(65536, socket.CMSG_SPACE(16))
    die()


if __name__ == "__main__":
    main()
