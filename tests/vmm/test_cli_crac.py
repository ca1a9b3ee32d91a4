"""``firecracer crac`` on the host side and ``vm boot --drive``: a scratch drive made and attached for real
(the CRIU steps themselves run in our guest: tests/guestvm/test_crac.py, in the lab)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tests.cli import fcr
from tests.vmm.hostcaps import can_boot

from firecracer.vmm.machine import BRAND_OLD_FC, MicroVM


def test_crac_scratch_is_a_sparse_ext4_image(tmp_path: Path) -> None:
    p = tmp_path / "scratch.ext4"
    res = fcr("crac", "scratch", str(p), "--size-mib", "512")
    assert res.returncode == 0, res.stderr
    data = p.read_bytes()[:2048]
    assert struct.unpack_from("<H", data, 1080)[0] == 0xEF53  # the ext superblock's magic
    st = p.stat()
    assert st.st_size == 512 << 20 and st.st_blocks * 512 < st.st_size // 4  # sparse


def test_crac_commands_name_a_missing_vm_in_one_line() -> None:
    for args in (("check", "nope"), ("checkpoint", "nope"), ("restore", "nope")):
        res = fcr("crac", *args)
        assert res.returncode == 1, res
        assert res.stderr.strip().startswith("firecracer: error: no VM named 'nope'"), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = fcr("crac", "restore", "nope", "-o", "x")
    assert res.returncode == 2 and "--from" in res.stderr


@pytest.mark.firecracker
def test_vm_boot_attaches_more_drives_in_order(firecracker_bin: Path, tmp_path: Path) -> None:
    if not can_boot(firecracker_bin):
        pytest.skip(BRAND_OLD_FC)
    a, b = tmp_path / "a.ext4", tmp_path / "b.img"
    assert fcr("crac", "scratch", str(a), "--size-mib", "64").returncode == 0
    b.write_bytes(b"\0" * (1 << 20))
    res = fcr("vm", "boot", "--probe", "--name", "drv", "--firecracker", str(firecracker_bin), "--drive",
              str(a), "--drive", f"{b}:ro", "--json")
    try:
        assert res.returncode == 0, res.stderr
        cfg = MicroVM.attach("drv").api.get("/vm/config")
        drives = {d["drive_id"]: d for d in cfg["drives"]}
        assert drives["drive1"]["path_on_host"] == str(a) and drives["drive1"]["is_read_only"] is False
        assert drives["drive2"]["path_on_host"] == str(b) and drives["drive2"]["is_read_only"] is True
        rec = json.loads(fcr("vm", "ls", "--json").stdout)
        assert [r["name"] for r in rec] == ["drv"]
    finally:
        fcr("vm", "kill", "drv", "--purge")
    res = fcr("vm", "boot", "--probe", "--name", "drv2", "--drive", str(tmp_path / "missing"))
    assert res.returncode == 2 and "is not a file" in res.stderr
