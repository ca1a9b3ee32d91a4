"""MicroVM against real Firecracker binaries (every installed version via ``fc_any``).

Every test ends with the VM's process gone and no socket/FIFO left in its run directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.vmm.hostcaps import can_boot, uffd_unsupported

from firecracer.errors import FirecracerError, FirecrackerError, FormatError
from firecracer.fcversion import Version, firecracker_version
from firecracer.vmm.api import Unsupported
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.machine import BRAND_OLD_FC, UFFD_OLD_FC, UFFD_V14_FC, MicroVM, VMConfig
from firecracer.vmm.probe import build_probe, probe_info
from firecracer.vmm.probe.run import boot_probe, probe_config, trigger
from firecracer.vmm.snapshot import Snapshot

pytestmark = pytest.mark.firecracker

FILL = range(4096, 4096 + 256)
TRACE = [*range(4096, 4096 + 64), *range(6000, 6016)]  # 64 filled pages, then 16 zero pages
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def elf() -> Path:
    return build_probe(TRACE, FILL, writes=[i % 5 == 0 for i in range(len(TRACE))])


def _can_boot(fc: Path) -> bool:
    return can_boot(fc)


def _boot_or_skip(elf: Path, fc: Path, **kw: object) -> MicroVM:
    """Boot the probe; on Firecracker < 1.5 assert the clear Unsupported error, then skip."""
    if not _can_boot(fc):
        with pytest.raises(Unsupported) as exc:
            boot_probe(elf, fc, **kw)  # type: ignore[arg-type]
        assert exc.value.reason == BRAND_OLD_FC
        pytest.skip(f"Firecracker {firecracker_version(fc)}: {BRAND_OLD_FC}")
    return boot_probe(elf, fc, **kw)  # type: ignore[arg-type]


def _pid_gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except OSError:
        return True


def assert_clean(vm: MicroVM) -> None:
    assert _pid_gone(vm.pid), f"Firecracker pid {vm.pid} still running"
    if vm.page_server is not None:
        assert _pid_gone(vm.page_server.pid), "page server still running"
    left = [p.name for p in vm.run_dir.glob("*") if p.is_socket() or p.is_fifo()]
    assert left == [], f"left behind in {vm.run_dir}: {left}"


# -- configuration accepted by every version ------------------------------------------------------
def test_every_configure_request_is_accepted(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    """All optional devices at once (read-only rootfs, vsock, balloon, dirty tracking): no 400."""
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * (1 << 20))
    config = VMConfig(kernel=str(elf), boot_args="console=ttyS0", rootfs=str(rootfs), vcpu_count=1,
                      mem_size_mib=64, track_dirty_pages=True, vsock_cid=3, balloon_mib=0)
    with MicroVM(fc_any) as vm:
        vm.boot(config, start=False)
        assert vm.api.get("/version")["firecracker_version"].lstrip("v").startswith(str(vm.version))
        assert Version.parse(vm.api.get("/version")["firecracker_version"]) == firecracker_version(fc_any)
        assert vm.api.get("/machine-config")["track_dirty_pages"] is True
    assert_clean(vm)


# -- full lifecycle -----------------------------------------------------------------------------------
def test_boot_pause_snapshot_restore_file(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    vm = _boot_or_skip(elf, fc_any, track_dirty_pages=True)
    with vm:
        first = trigger(vm)
        assert (first.kind, first.pages, first.errors) == ("trace", len(TRACE), 0)
        vm.pause()
        vm.resume()
        full = vm.snapshot(tmp_path / "full", punch_holes=True, labels={"jvm_options": ["-Xmx64m"]})
        assert full.mem["holes_punched"] and full.mem["allocated_bytes"] < full.mem["size"] // 4
        vm.resume()
        assert trigger(vm).errors == 0
        diff = vm.snapshot(tmp_path / "diff", SnapshotType.DIFF)
        metrics = vm.flush_metrics()
        assert metrics, "Firecracker wrote no metrics"
        vm.ctrl_alt_del()  # accepted; the probe has no keyboard driver and keeps running
    assert_clean(vm)

    on_disk = Snapshot.load(tmp_path / "full")
    assert on_disk.firecracker_version == str(firecracker_version(fc_any))
    assert on_disk.labels["jvm_options"] == ["-Xmx64m"]
    assert on_disk.labels["probe"]["key"] == probe_info(elf).key
    assert on_disk.files["kernel"]["sha256"] and on_disk.vm["mem_size_mib"] == 128
    assert Snapshot.load(tmp_path / "diff").parent == full.dir and diff.type is SnapshotType.DIFF

    for snap in (full, diff):
        with MicroVM.restore(snap.dir, firecracker=fc_any) as r:
            res = trigger(r)
            assert (res.errors, res.pages) == (0, len(TRACE))
            everything = trigger(r, b"a")
            assert (everything.kind, everything.errors, everything.pages) == ("verify", 0, len(FILL))
            assert r.timings_ms["load_snapshot"] > 0
        assert_clean(r)


def test_restore_paused_then_resume_and_guest_reset(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    with MicroVM.restore(snap, firecracker=fc_any, resume=False) as r:
        assert r.state == "paused"
        r.resume()
        assert trigger(r).errors == 0
        r.send_serial(b"q")  # the probe resets via the i8042: Firecracker exits by itself
        assert r.wait_exit(30) is not None
        # a reboot is named as such, not blamed on an old warning of Firecracker's log
        assert r.fc.describe_death() == (f"Firecracker (pid {r.fc.pid}) exited with status 0 "
                                         "(the guest reset the VM)")
    assert_clean(r)


def test_corrupted_memory_is_detected_by_the_probe(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    """The probe's check can fail: flip the pattern in one traced page of the memory file."""
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    with open(snap.mem_file, "r+b") as f:
        f.seek(TRACE[3] * 4096)
        f.write(b"\xff" * 8)
    with MicroVM.restore(snap, firecracker=fc_any) as r:
        assert trigger(r).errors == 1
    assert_clean(r)


# -- Uffd backend -----------------------------------------------------------------------------------
def test_uffd_restore_or_clear_unsupported(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    trace = tmp_path / "trace.npz"
    why = uffd_unsupported(fc_any)
    if why:
        # known before anything starts: no run directory, no process (v1.4: PR 4086; < 1.8: #4578)
        with pytest.raises(Unsupported) as exc:
            MicroVM.restore(snap, firecracker=fc_any, backend=MemBackend.UFFD, name="uffd-old")
        assert exc.value.reason == why
        expect = UFFD_V14_FC if not firecracker_version(fc_any).at_least(1, 5) else UFFD_OLD_FC
        assert str(exc.value).startswith(f"unsupported: {expect}")
        assert not (Path(os.environ["FIRECRACER_STATE"]) / "vms" / "uffd-old").exists()
        return
    with MicroVM.restore(snap, firecracker=fc_any, backend=MemBackend.UFFD, trace=trace) as r:
        assert r.page_server is not None and r.page_server.alive()
        assert (trigger(r).errors, trigger(r, b"a").errors) == (0, 0)
    assert_clean(r)
    assert trace.is_file(), "the page server wrote no trace"


def test_uffd_restore_with_custom_page_server(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    if not firecracker_version(fc_any).at_least(1, 8):
        pytest.skip(f"Firecracker {firecracker_version(fc_any)}: {UFFD_OLD_FC}")
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    argv = [sys.executable, str(HERE / "uffd_min_server.py"), "{socket}", "{mem}"]
    with MicroVM.restore(snap, firecracker=fc_any, backend=MemBackend.UFFD, page_server=argv) as r:
        assert trigger(r, b"a").errors == 0
    assert_clean(r)


def test_page_server_that_dies_before_listening(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    if uffd_unsupported(fc_any):
        pytest.skip(str(uffd_unsupported(fc_any)))
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('ERROR: no way\\n'); sys.exit(3)"]
    with pytest.raises(FirecracerError, match=r"page server exited with status 3.*no way"):
        MicroVM.restore(snap, firecracker=fc_any, backend=MemBackend.UFFD, page_server=argv, name="ps-dead")
    run_dir = Path(os.environ["FIRECRACER_STATE"]) / "vms" / "ps-dead"
    assert not [p for p in run_dir.glob("*") if p.is_socket() or p.is_fifo()]


# -- bad cases ------------------------------------------------------------------------------------------
def test_missing_kernel(fc_any: Path, tmp_path: Path) -> None:
    with pytest.raises(FirecracerError, match="kernel file not found"):
        MicroVM(fc_any).boot(VMConfig(kernel=str(tmp_path / "nope")))
    # and when only Firecracker notices (the file vanished after our check): its 400, named request
    with MicroVM(fc_any) as vm:
        vm.boot(VMConfig(kernel=str(build_probe([], []))), start=False)
        with pytest.raises(FirecrackerError) as exc:
            vm.api.put("/boot-source", {"kernel_image_path": str(tmp_path / "nope")})
        assert exc.value.status == 400 and exc.value.path == "/boot-source" and exc.value.fault_message
        assert "PUT /boot-source" in str(exc.value) and str(tmp_path / "nope") in str(exc.value)
    assert_clean(vm)


def test_corrupt_snapshot_file(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    data = snap.vmstate.read_bytes()
    snap.vmstate.write_bytes(data[: len(data) // 3])  # truncated state file
    with pytest.raises(FirecracerError) as exc:
        MicroVM.restore(snap, firecracker=fc_any, name="corrupt")
    assert "vmstate" in str(exc.value)
    # without the up-front check Firecracker itself refuses, and its process is not left behind
    with pytest.raises(FirecrackerError) as exc2:
        MicroVM.restore(snap, firecracker=fc_any, name="corrupt2", check=False)
    assert "/snapshot/load" in str(exc2.value)
    for name in ("corrupt", "corrupt2"):
        run_dir = Path(os.environ["FIRECRACER_STATE"]) / "vms" / name
        assert not [p for p in run_dir.glob("*") if p.is_socket() or p.is_fifo()]
    with pytest.raises(FormatError, match=r"snapshot\.json"):
        (snap.dir / "snapshot.json").write_text("{")
        MicroVM.restore(snap.dir, firecracker=fc_any)


def test_snapshot_from_another_version(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    mine = firecracker_version(fc_any)
    siblings = {Version.parse(p.name): p for p in fc_any.parent.glob("firecracker-v*")}  # the installed set
    others = [b for v, b in sorted(siblings.items()) if v.at_least(1, 5) and v.minor != mine.minor]
    if not others:
        pytest.skip("needs a second bootable Firecracker of another minor version")
    maker = others[-1]
    with boot_probe(elf, maker) as vm:
        snap = vm.snapshot(tmp_path / "s")
    with pytest.raises(FirecracerError) as exc:
        MicroVM.restore(snap, firecracker=fc_any, name="foreign")
    msg = str(exc.value)
    assert f"Firecracker {firecracker_version(maker)}" in msg
    assert f"Firecracker {firecracker_version(fc_any)}" in msg
    run_dir = Path(os.environ["FIRECRACER_STATE"]) / "vms" / "foreign"
    assert not run_dir.exists() or not [p for p in run_dir.glob("*") if p.is_socket()]


def test_socket_path_in_use(fc_any: Path, elf: Path) -> None:
    with MicroVM(fc_any, name="dup") as first:
        first.boot(probe_config(elf), start=False)
        with pytest.raises(FirecrackerError, match="socket path in use"):
            MicroVM(fc_any, name="dup").boot(probe_config(elf), start=False)
        assert first.alive() and (first.run_dir / "api.sock").is_socket()
        assert first.api.get("/machine-config")["mem_size_mib"] == 128  # untouched
    assert_clean(first)
    # a foreign process listening there
    run_dir = Path(os.environ["FIRECRACER_STATE"]) / "vms" / "squat"
    run_dir.mkdir(parents=True)
    squatter = socket.socket(socket.AF_UNIX)
    squatter.bind(str(run_dir / "api.sock"))
    squatter.listen(1)
    try:
        with pytest.raises(FirecrackerError, match="socket path in use"):
            MicroVM(fc_any, name="squat").boot(probe_config(elf), start=False)
    finally:
        squatter.close()
    # a stale socket file (nobody listening) is simply replaced
    with MicroVM(fc_any, name="squat") as vm:
        vm.boot(probe_config(elf), start=False)
    assert_clean(vm)


def test_firecracker_killed_between_calls(fc_any: Path, elf: Path) -> None:
    with MicroVM(fc_any) as vm:
        vm.boot(probe_config(elf), start=False)
        assert vm.pid is not None
        os.kill(vm.pid, signal.SIGKILL)
        with pytest.raises(FirecrackerError, match=r"PUT /actions.*killed by SIGKILL"):
            vm.start()
    assert_clean(vm)


def test_firecracker_dying_mid_call(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    """Kill Firecracker while it is writing a snapshot (the memory file exists, no answer yet)."""
    vm = _boot_or_skip(elf, fc_any, mem_size_mib=1024)
    dest = tmp_path / "s"
    killed = threading.Event()

    def killer() -> None:  # the snapshot is written beside dest, then renamed into place
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(tmp_path.glob(".s.partial-*/mem")):
            time.sleep(0.0005)
        assert vm.pid is not None
        os.kill(vm.pid, signal.SIGKILL)
        killed.set()

    with vm:
        vm.pause()
        t = threading.Thread(target=killer)
        t.start()
        try:
            with pytest.raises(FirecrackerError) as exc:
                vm.snapshot(dest)
        finally:
            t.join()
        assert killed.is_set()
        assert "PUT /snapshot/create" in str(exc.value) and "killed by SIGKILL" in str(exc.value)
        assert not dest.exists(), "partial snapshot directory left behind"
        assert not list(tmp_path.glob(".s.partial-*")), "partial snapshot directory left behind"
    assert_clean(vm)


def test_keyboard_interrupt_cleans_up(fc_any: Path, elf: Path) -> None:
    vm = MicroVM(fc_any)
    with pytest.raises(KeyboardInterrupt), vm:
        vm.boot(probe_config(elf), start=False)
        raise KeyboardInterrupt
    assert_clean(vm)


def test_attach_by_name_and_kill(fc_any: Path, elf: Path) -> None:
    with MicroVM(fc_any, name="attach-me") as vm:
        vm.boot(probe_config(elf), start=False)
        vm.detach()
    other = MicroVM.attach("attach-me")
    assert other.pid == vm.pid and other.alive() and other.config is not None
    assert other.api.get("/machine-config")["vcpu_count"] == 1
    other.kill()
    assert_clean(other)
    assert MicroVM.attach("attach-me").state == "dead"
    with pytest.raises(FirecracerError, match="no VM named"):
        MicroVM.attach("never-was")


@pytest.mark.parametrize("first_kill", ["before", "after"])
def test_a_dead_vm_spares_the_next_vm_of_its_name(fc_any: Path, elf: Path, first_kill: str) -> None:
    """Before: the lab's boot retry lost its second VM to a SIGKILL 5 s into its boot — the first VM's
    object, collected later, ran ``kill()`` (again) and swept the run directory both share, sockets too.
    ``after``: the first VM died by itself and its object is killed only once the second one runs."""
    if not _can_boot(fc_any):
        pytest.skip(BRAND_OLD_FC)
    first = MicroVM(fc_any, name="again")
    first.boot(probe_config(elf), start=False)
    if first_kill == "before":
        first.kill()
    else:
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        assert first.fc.wait(10) is not None
    with MicroVM(fc_any, name="again") as second:
        second.boot(probe_config(elf), start=False)
        assert second.run_dir == first.run_dir
        first.kill()
        first.__del__()
        assert second.alive(), "the dead VM's kill() took its successor with it"
        assert second.api.get("/machine-config")["vcpu_count"] == 1  # its API socket is still there
        assert MicroVM.attach("again").pid == second.pid  # and so is its record
        assert first.state == "dead"
    assert_clean(second)


# -- networking -------------------------------------------------------------------------------------
@pytest.mark.root
def test_tap_in_own_namespace_for_vm_and_clones(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")
    if not _can_boot(fc_any):
        pytest.skip(f"Firecracker {firecracker_version(fc_any)}: {BRAND_OLD_FC}")
    mmds = {"latest": {"who": "probe"}}
    config = VMConfig(**{**probe_config(elf).to_json(), "network": True, "mmds": mmds})
    with MicroVM(fc_any, name="net0") as vm:
        vm.boot(config)
        vm.wait_serial(r"PROBE READY")
        assert vm.netns is not None and vm.netns.exists()
        assert vm.api.get("/mmds") == mmds
        assert "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off" in vm.api.get("/vm/config")[
            "boot-source"]["boot_args"]
        assert os.readlink(f"/proc/{vm.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        snap = vm.snapshot(tmp_path / "s")
    assert not Path("/run/netns/fcr-net0").exists()
    clones = [MicroVM.restore(snap, firecracker=fc_any, name=f"clone{i}") for i in range(2)]
    try:
        assert {c.netns.name for c in clones if c.netns} == {"fcr-clone0", "fcr-clone1"}
        assert all(trigger(c).errors == 0 for c in clones)
    finally:
        for c in clones:
            c.kill()
    assert not Path("/run/netns/fcr-clone0").exists() and not Path("/run/netns/fcr-clone1").exists()
    for c in clones:
        assert_clean(c)


def test_replay_a_recorded_restore_order(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    """Record a Uffd restore's trace, then replay its first-fault order with a fresh probe."""
    from firecracer.vmm.probe.replay import replay_pages

    if not firecracker_version(fc_any).at_least(1, 8):
        pytest.skip(f"Firecracker {firecracker_version(fc_any)}: {UFFD_OLD_FC}")
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s", punch_holes=True)  # never-filled pages become zero pages
    trace = tmp_path / "rec.npz"
    with MicroVM.restore(snap, firecracker=fc_any, backend=MemBackend.UFFD, trace=trace) as r:
        assert trigger(r).errors == 0
    pages, fill = replay_pages(trace)
    assert set(TRACE) <= set(pages)  # the walk faulted every traced page (plus image/page tables)
    assert set(FILL) & set(TRACE) <= set(fill)
    assert not set(range(6000, 6016)) & set(fill)  # served as zero pages, so not filled in the replay
    replay = build_probe(pages, fill, skip_reserved=True)
    assert probe_info(replay).trace_pages >= len(TRACE)
    with boot_probe(replay, fc_any) as again:
        res = trigger(again)
        assert (res.errors, res.pages) == (0, probe_info(replay).trace_pages)


def test_page_server_dying_mid_run_is_reported_and_cleaned(fc_any: Path, elf: Path, tmp_path: Path) -> None:
    if not firecracker_version(fc_any).at_least(1, 8):
        pytest.skip(f"Firecracker {firecracker_version(fc_any)}: {UFFD_OLD_FC}")
    vm = _boot_or_skip(elf, fc_any)
    with vm:
        snap = vm.snapshot(tmp_path / "s")
    argv = [sys.executable, str(HERE / "uffd_min_server.py"), "{socket}", "{mem}"]
    r = MicroVM.restore(snap, firecracker=fc_any, backend=MemBackend.UFFD, page_server=argv)
    with r:
        assert r.page_server is not None and r.page_server.pid is not None
        os.kill(r.page_server.pid, signal.SIGKILL)
        with pytest.raises(FirecrackerError, match=r"the page server \(pid \d+, uffd_min_server.py\) was "
                           r"killed by SIGKILL while the VM ran; .*Firecracker \(pid \d+\) was killed"):
            trigger(r, b"a", timeout=60)  # the walk faults on pages nobody serves any more
        assert not r.alive()
    assert_clean(r)
