"""A minimal uffd page server for tests (the real one is ``firecracer uffd serve``, issue #4).

usage: python uffd_min_server.py SOCKET MEMFILE
Accepts Firecracker's hand-off, then serves every missing-page fault with one UFFDIO_COPY of the
page from MEMFILE. Exits when Firecracker closes the uffd (POLLHUP) or on SIGTERM.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import json
import mmap
import os
import select
import socket
import struct
import sys

UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy)
UFFD_EVENT_PAGEFAULT = 0x12


def main() -> int:
    sock_path, mem_path = sys.argv[1], sys.argv[2]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    conn, _ = srv.accept()
    fds = array.array("i")
    msg, anc, _flags, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    regions = json.loads(msg)
    uffd = fds[0]
    page = int(regions[0].get("page_size", regions[0].get("page_size_kib", 4096)))
    src = _map_address(mem_path)
    poller = select.poll()
    poller.register(uffd, select.POLLIN)
    served = 0
    while True:
        events = poller.poll(60000)
        if not events:
            continue
        if events[0][1] & (select.POLLHUP | select.POLLERR):
            break
        try:
            data = os.read(uffd, 32 * 64)
        except BlockingIOError:
            continue
        for off in range(0, len(data), 32):
            event = data[off]
            if event != UFFD_EVENT_PAGEFAULT:
                continue
            _flags, address = struct.unpack_from("<QQ", data, off + 8)
            address &= ~(page - 1)
            for r in regions:
                start = int(r["base_host_virt_addr"])
                if start <= address < start + int(r["size"]):
                    file_off = int(r["offset"]) + address - start
                    arg = bytearray(struct.pack("<QQQQq", address, src + file_off, page, 0, 0))
                    try:
                        fcntl.ioctl(uffd, UFFDIO_COPY, arg)
                    except OSError as exc:
                        if exc.errno != 17:  # EEXIST: already present
                            raise
                    served += 1
                    break
    print(f"served {served}", flush=True)
    return 0


def _map_address(path: str) -> int:
    """mmap ``path`` read-only with libc so we know the address to pass as UFFDIO_COPY src."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
    os.close(fd)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return int(addr)


if __name__ == "__main__":
    sys.exit(main())
