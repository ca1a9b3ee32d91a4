"""Request bodies per Firecracker version: only fields that version accepts (deny_unknown_fields)."""

from __future__ import annotations

from pathlib import Path

import pytest

from firecracer.fcversion import Version
from firecracer.vmm import config as cfg
from firecracer.vmm.api import Unsupported

V14, V17, V112, V113, V114 = (Version(1, 4), Version(1, 7), Version(1, 12), Version(1, 13), Version(1, 14, 2))


def test_load_renames_dirty_tracking_by_version() -> None:
    load = cfg.SnapshotLoad("/s/vmstate", "/s/mem", cfg.MemBackend.FILE, track_dirty_pages=True,
                            resume_vm=True)
    for v in (V14, V17, V112):
        body = load.body(v)
        assert body["enable_diff_snapshots"] is True and "track_dirty_pages" not in body
    for v in (V113, V114):
        body = load.body(v)
        assert body["track_dirty_pages"] is True and "enable_diff_snapshots" not in body
    assert load.body(V14)["mem_backend"] == {"backend_type": "File", "backend_path": "/s/mem"}
    assert "mem_file_path" not in load.body(V114)


def test_load_omits_unset_optionals() -> None:
    body = cfg.SnapshotLoad("/s/vmstate", "uffd.sock", cfg.MemBackend.UFFD).body(V114)
    assert body == {"snapshot_path": "/s/vmstate", "mem_backend": {"backend_type": "Uffd",
                                                                   "backend_path": "uffd.sock"}}


def test_network_overrides_need_112() -> None:
    load = cfg.SnapshotLoad("/s", "/m", network_overrides=(("eth0", "tap1"),))
    assert load.body(V112)["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": "tap1"}]
    with pytest.raises(Unsupported, match=r"network_overrides.*1\.12.*1\.7\.0"):
        load.body(V17)


def test_machine_config_huge_pages() -> None:
    assert "huge_pages" not in cfg.MachineConfig().body(V14)
    assert "huge_pages" not in cfg.MachineConfig(huge_pages="None").body(V14)
    assert cfg.MachineConfig(huge_pages="2M").body(V17)["huge_pages"] == "2M"
    with pytest.raises(Unsupported, match="huge_pages"):
        cfg.MachineConfig(huge_pages="2M").body(V14)
    assert "smt" not in cfg.MachineConfig().body(V114)


def test_snapshot_create_never_sends_version() -> None:
    body = cfg.SnapshotCreate("/d/vmstate", "/d/mem", cfg.SnapshotType.DIFF).body(V14)
    assert body == {"snapshot_path": "/d/vmstate", "mem_file_path": "/d/mem", "snapshot_type": "Diff"}


def test_logger_and_balloon_fields() -> None:
    assert cfg.Logger("/l", "Trace").body(V14)["level"] == "Debug"
    assert cfg.Logger("/l", "Trace").body(V17)["level"] == "Trace"
    assert "free_page_hinting" not in cfg.Balloon(16).body(V114)
    assert cfg.Balloon(16, free_page_reporting=True).body(V114)["free_page_reporting"] is True
    with pytest.raises(Unsupported):
        cfg.Balloon(16, free_page_hinting=True).body(V113)


def test_drive_always_sends_fields_14_requires() -> None:
    body = cfg.Drive("rootfs", "/r.ext4", is_root_device=True).body(V14)
    assert body["is_read_only"] is False and body["path_on_host"] == "/r.ext4"
    assert "partuuid" not in body


def test_vsock_never_sends_deprecated_id() -> None:
    assert cfg.Vsock(3, "v.sock").body(V14) == {"guest_cid": 3, "uds_path": "v.sock"}


def test_vsock_http_protocol(tmp_path: Path) -> None:
    """Our side of Firecracker's host-initiated vsock protocol, against a stand-in for its socket:
    ``CONNECT <port>\\n`` → ``OK <n>\\n`` → raw stream; a refused port is one clear error."""
    import socket
    import threading

    from firecracer.errors import FirecracerError
    from firecracer.vmm.vsock import vsock_http

    path = tmp_path / "v.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)
    seen: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                hello = conn.recv(64)
                seen.append(hello)
                if hello != b"CONNECT 8080\n":
                    continue  # Firecracker closes the connection when nobody listens on the port
                conn.sendall(b"OK 1073741824\n")
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

    t = threading.Thread(target=serve)
    t.start()
    try:
        reply = vsock_http(path, 8080, "/health")
        assert (reply.status, reply.body, reply.headers["content-length"]) == (200, b"hi", "2")
        assert reply.latency_ms > 0
        with pytest.raises(FirecracerError, match="nothing listens on guest port 9"):
            vsock_http(path, 9, retries=1)
    finally:
        t.join(timeout=10)
        srv.close()
    assert seen == [b"CONNECT 8080\n", b"CONNECT 9\n"]
