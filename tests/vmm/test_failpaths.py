"""Failure paths with real Firecracker and the probe guest: nothing hangs, nothing is orphaned, no wrong
input is accepted, nothing half-written is left (issue 14, and the vm items of issues 13 and 17).

Each test kills or breaks something for real (SIGKILL, a page server that dies, a file of the wrong
size or from another snapshot) and checks the one-line error, the time it took to notice, and that no
process started for the VM survives.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cli import fcr, one_line_error
from tests.vmm.hostcaps import can_boot, uffd_unsupported

from firecracer.errors import FirecracerError, FirecrackerError, FormatError
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.lifeline import processes_in
from firecracer.vmm.machine import MicroVM
from firecracer.vmm.probe import build_probe
from firecracer.vmm.probe.run import boot_probe, trigger
from firecracer.vmm.snapshot import Snapshot

pytestmark = pytest.mark.firecracker

HERE = Path(__file__).parent
FILL = range(4096, 4096 + 256)
TRACE = [*range(4096, 4096 + 64), *range(6000, 6016)]




def gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except OSError:
        return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.02)
    return [p for p in pids if not gone(p)]


@pytest.fixture(scope="module")
def fc() -> Path:
    from tests.conftest import FC_BINARIES, _need_kvm

    if _need_kvm():
        pytest.skip(str(_need_kvm()))
    usable = [b for b in FC_BINARIES.values() if can_boot(b) and not uffd_unsupported(b)]
    if not usable:
        pytest.skip("needs a Firecracker that boots here and can do Uffd restores (>= 1.8)")
    return usable[-1]


@pytest.fixture(scope="module")
def elf() -> Path:
    return build_probe(TRACE, FILL, writes=[i % 5 == 0 for i in range(len(TRACE))])


@pytest.fixture(scope="module")
def snaps(fc: Path, elf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Snapshot]]:
    """A Full snapshot, a Diff on top of it, and a Full snapshot of another probe (another seed)."""
    base = tmp_path_factory.mktemp("snaps")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRECRACER_STATE", str(base / "state"))
        mp.setenv("FIRECRACER_CACHE", str(base / "cache"))
        out: dict[str, Snapshot] = {}
        with boot_probe(elf, fc, track_dirty_pages=True) as vm:
            out["full"] = vm.snapshot(base / "full")
            vm.resume()
            trigger(vm)
            out["diff"] = vm.snapshot(base / "diff", SnapshotType.DIFF)
        other = build_probe(TRACE, FILL, seed=0x0DD5EED)
        with boot_probe(other, fc) as vm:
            out["other"] = vm.snapshot(base / "other")
        yield out


def state() -> Path:
    return Path(os.environ["FIRECRACER_STATE"])


def run_dir_processes() -> dict[str, list[int]]:
    vms = state() / "vms"
    return {d.name: processes_in(d) for d in vms.iterdir()} if vms.is_dir() else {}


# -- a page server that dies -------------------------------------------------------------------------
@pytest.mark.parametrize("moment", ["after-listen", "after-accept", "after-handshake"])
def test_page_server_dying_during_load_is_reported_at_once(fc: Path, snaps: dict[str, Snapshot],
                                                           moment: str) -> None:
    """Before: PUT /snapshot/load hung 300 s, then a generic API timeout (or a 'successful' restore)."""
    argv = [sys.executable, str(HERE / "dying_server.py"), moment, "{socket}"]
    t_start = time.monotonic()
    with pytest.raises(FirecrackerError) as exc:
        MicroVM.restore(snaps["full"], firecracker=fc, backend=MemBackend.UFFD, page_server=argv, name="dies")
    t_err = time.monotonic_ns()
    msg = str(exc.value)
    assert "the page server (pid" in msg and "dying_server.py) was killed by SIGKILL" in msg, msg
    assert "its last log line: dying_server: dying at" in msg, msg
    assert re.search(r"Firecracker \(pid \d+\) was killed", msg), msg
    died = int(re.search(r"dying at (\d+)", msg).group(1))  # type: ignore[union-attr]
    assert (t_err - died) / 1e9 < 5, f"reported {(t_err - died) / 1e9:.1f} s after the death"
    assert time.monotonic() - t_start < 60
    rec = json.loads((state() / "vms" / "dies" / "vm.json").read_text())
    assert rec["state"] == "dead" and gone(rec["pid"]) and gone(rec["page_server_pid"])
    assert run_dir_processes() == {"dies": []}


def test_page_server_dying_after_restore_stops_pause_and_snapshot(fc: Path, snaps: dict[str, Snapshot],
                                                                   tmp_path: Path) -> None:
    """Before: pause/snapshot blocked 30 s and failed with 'Failed to message the vCPUs'."""
    vm = MicroVM.restore(snaps["full"], firecracker=fc, backend=MemBackend.UFFD, name="ps-gone")
    with vm:
        assert vm.page_server is not None and vm.page_server.pid is not None
        fc_pid = vm.pid
        os.kill(vm.page_server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        # the death is seen by whichever request comes first after it: the pause, or (if the page server
        # was reaped only after PATCH /vm answered) the snapshot; both must fail fast and say so
        with pytest.raises(FirecrackerError, match=r"ps-gone: the page server \(pid \d+, firecracer uffd "
                                                   r"serve\) was killed by SIGKILL during (PATCH /vm|PUT "
                                                   r"/snapshot/create); its last log line: .*Firecracker "
                                                   r"\(pid \d+\) was killed"):
            vm.snapshot(tmp_path / "s")
        assert time.monotonic() - t0 < 5
        assert not vm.alive() and gone(fc_pid)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.partial-*"))


def test_detached_vm_dies_with_its_page_server(fc: Path, snaps: dict[str, Snapshot]) -> None:
    """`vm restore --uffd` leaves the VM to its supervisor: page server killed -> Firecracker killed,
    `vm ls` says why, `vm pause` fails in one line. Before: 'running' in vm ls, pause blocked 30 s."""
    res = fcr("vm", "restore", str(snaps["full"].dir), "--uffd", "--name", "det1", "--firecracker", str(fc),
              "--json")
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    fc_pid, ps_pid = rec["pid"], rec["page_server_pid"]
    try:
        os.kill(ps_pid, signal.SIGKILL)
        assert wait_gone([fc_pid], 5) == [], "Firecracker survived its page server by 5 s"
        deadline = time.monotonic() + 5
        while (listed := json.loads(fcr("vm", "ls", "--all", "--json").stdout)[0])["state"] != "dead":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "page server" in listed["dead_reason"] and listed["processes"] == []
        assert json.loads(fcr("vm", "ls", "--json").stdout) == []
        line = one_line_error(fcr("vm", "pause", "det1"))
        assert "det1: the VM is not running (the page server" in line
    finally:
        fcr("vm", "kill", "det1")


def test_restore_uses_the_firecracker_recorded_in_the_snapshot(fc: Path, snaps: dict[str, Snapshot],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: $FIRECRACKER / the cache / PATH decided, whatever binary made the snapshot."""
    recorded = snaps["full"].files["firecracker"]
    monkeypatch.setenv("FIRECRACKER", "/nonexistent/firecracker")  # would be taken before the snapshot's
    res = fcr("vm", "restore", str(snaps["full"].dir), "--name", "rec1", "--json")
    try:
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["state"] == "running"
        assert f"at {recorded} (recorded in {snaps['full'].json_path})" in res.stderr
    finally:
        fcr("vm", "kill", "rec1")


# -- a command that is killed -----------------------------------------------------------------------
SLOW_SERVER = [sys.executable, "-c", "import time; time.sleep(60)"]  # never listens


def test_sigkill_of_vm_restore_leaves_nothing_running(fc: Path, snaps: dict[str, Snapshot]) -> None:
    """SIGKILL while `vm restore --uffd` waits for its page server. Before: Firecracker (and the page
    server) ran on, unknown to `vm ls`, unreachable by `vm kill`."""
    proc = subprocess.Popen([sys.executable, "-m", "firecracer", "vm", "restore", str(snaps["full"].dir),
                             "--uffd", "--name", "k1", "--firecracker", str(fc), "--strategy", "eager"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = state() / "vms" / "k1"
    try:
        deadline = time.monotonic() + 30
        while not (run_dir / "uffd.log").exists() or not (run_dir / "api.sock").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "restore never got going"
            time.sleep(0.005)
        started = processes_in(run_dir)
        assert started, "nothing runs for the VM yet"
        proc.kill()
        proc.wait()
        left = wait_gone(started, 10)
        assert left == [], f"still running 10 s after SIGKILL: {left}"
    finally:
        fcr("vm", "kill", "k1")
    rec = json.loads(fcr("vm", "ls", "--all", "--json").stdout)
    assert [(r["name"], r["state"], r["processes"]) for r in rec] == [("k1", "dead", [])]


def test_sigkill_of_a_library_owner_kills_its_vm(fc: Path, snaps: dict[str, Snapshot],
                                                 tmp_path: Path) -> None:
    """A script using MicroVM (as experiments and selftest do) is SIGKILLed: Firecracker and the page
    server die with it (PR_SET_PDEATHSIG), and the run directory is listed as dead."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from firecracer.vmm.machine import MicroVM\n"
        "from firecracer.vmm.config import MemBackend\n"
        f"vm = MicroVM.restore({str(snaps['full'].dir)!r}, firecracker={str(fc)!r}, backend=MemBackend.UFFD,"
        " name='lib1')\n"
        "print(vm.pid, vm.page_server.pid, flush=True)\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        proc.kill()
        proc.wait()
        assert wait_gone(pids, 10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fcr("vm", "kill", "lib1")
    rec = json.loads(fcr("vm", "ls", "--all", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rec] == [("lib1", "dead")]


def test_vm_kill_finds_processes_without_a_record(fc: Path, snaps: dict[str, Snapshot]) -> None:
    """Whatever survives is killable: `vm kill` finds a run directory's processes even when vm.json is
    gone (the command died before writing the pid)."""
    vm = MicroVM.restore(snaps["full"], firecracker=fc, name="norec", lifeline=False)
    pid = vm.pid
    vm.detach()
    (vm.run_dir / "vm.json").unlink()
    listed = json.loads(fcr("vm", "ls", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listed] == [("norec", "leftover")]
    assert pid in listed[0]["processes"]
    res = fcr("vm", "kill", "norec")
    assert res.returncode == 0 and "killed norec" in res.stdout
    assert wait_gone([pid], 5) == [] and processes_in(vm.run_dir) == []


def test_prune_removes_dead_run_directories_and_keeps_the_newest(fc: Path,
                                                                 snaps: dict[str, Snapshot]) -> None:
    for i in range(3):
        with MicroVM.restore(snaps["full"], firecracker=fc, name=f"p{i}"):
            pass
        time.sleep(0.02)  # distinct ages
    live = MicroVM.restore(snaps["full"], firecracker=fc, name="alive", lifeline=False)
    live.detach()
    try:
        res = fcr("vm", "ls")
        assert "alive" in res.stdout and "p0" not in res.stdout
        assert "3 dead VM run directories not shown" in res.stderr
        res = fcr("vm", "prune", "--keep", "1", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert sorted(out["removed"]) == ["p0", "p1"] and out["kept"] == ["p2"]
        assert sorted(p.name for p in (state() / "vms").iterdir()) == ["alive", "p2"]
        assert (state() / "vms" / "p2" / "firecracker.log").exists()  # logs kept for post-mortem
    finally:
        fcr("vm", "kill", "alive")


def test_prune_acts_on_run_directories_not_on_the_names_their_records_give(
        fc: Path, snaps: dict[str, Snapshot], monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead VM's record naming another VM (a copied or hand-edited run directory) must not make
    prune sweep that other, live VM."""
    with MicroVM.restore(snaps["full"], firecracker=fc, name="dead1"):
        pass
    live = MicroVM.restore(snaps["full"], firecracker=fc, name="live1", lifeline=False)
    live.detach()
    try:
        rec = state() / "vms" / "dead1" / "vm.json"
        rec.write_text(json.dumps({**json.loads(rec.read_text()), "name": "live1"}))
        listed = {r["name"]: r for r in json.loads(fcr("vm", "ls", "--all", "--json").stdout)}
        assert listed["dead1"]["record_name"] == "live1" and listed["live1"]["state"] == "running"
        monkeypatch.setenv("COLUMNS", "400")  # the table on one line per VM
        assert "dead1 (its vm.json says live1)" in fcr("vm", "ls", "--all").stdout
        res = fcr("vm", "prune", "--keep", "0", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["removed"] == ["dead1"]
        assert sorted(p.name for p in (state() / "vms").iterdir()) == ["live1"]
        assert (live.run_dir / "api.sock").exists()
        assert fcr("vm", "ls", "--json").stdout.count('"running"') == 1
    finally:
        fcr("vm", "kill", "live1")


# -- wrong input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [MemBackend.FILE, MemBackend.UFFD])
@pytest.mark.parametrize("size", [2 << 30, 1 << 40])
def test_memory_file_of_the_wrong_size_is_refused_before_firecracker_starts(
        fc: Path, snaps: dict[str, Snapshot], tmp_path: Path, backend: MemBackend, size: int) -> None:
    """Before: the File backend accepted it; Uffd died with 'killed by SIGKILL', the reason in uffd.log."""
    d = tmp_path / "s"
    shutil.copytree(snaps["full"].dir, d)
    with open(d / "mem", "r+b") as f:
        f.truncate(size)  # sparse: costs nothing
    with pytest.raises(FirecracerError, match=rf"{d / 'mem'}: memory file is {size:,} bytes, but the "
                                              r"snapshot's guest has 134,217,728 bytes of RAM"):
        MicroVM.restore(d, firecracker=fc, backend=backend, name="wrongsize")
    assert not (state() / "vms" / "wrongsize").exists()


def test_diff_without_dirty_tracking_is_refused(fc: Path, elf: Path, tmp_path: Path) -> None:
    """Before: `vm snapshot --diff` on a VM booted without tracking wrote a full-size 'Diff' quietly."""
    res = fcr("vm", "boot", "--probe", "--name", "nodirty", "--firecracker", str(fc))
    assert res.returncode == 0, res.stderr
    try:
        assert fcr("vm", "snapshot", "nodirty", str(tmp_path / "full")).returncode == 0
        line = one_line_error(fcr("vm", "snapshot", "nodirty", str(tmp_path / "diff"), "--diff"))
        assert "needs dirty-page tracking" in line and "--track-dirty-pages" in line
        assert not (tmp_path / "diff").exists()
    finally:
        fcr("vm", "kill", "nodirty")


def test_diff_whose_parent_was_replaced_is_refused(fc: Path, snaps: dict[str, Snapshot],
                                                   tmp_path: Path) -> None:
    """Before: the Diff was merged onto whatever sat at the parent's path, and the stale merge reused."""
    parent, diff = tmp_path / "full", tmp_path / "diff"
    shutil.copytree(snaps["full"].dir, parent)
    # cp keeps the Diff's holes (its data ranges are the dirty pages); shutil.copytree would fill them
    subprocess.run(["cp", "-a", "--sparse=always", str(snaps["diff"].dir), str(diff)], check=True)
    data = json.loads((diff / "snapshot.json").read_text())
    data["parent"] = str(parent)
    (diff / "snapshot.json").write_text(json.dumps(data))
    with MicroVM.restore(diff, firecracker=fc) as vm:  # the right parent: merges, restores, verifies
        assert trigger(vm, b"a").errors == 0
    merged_before = (diff / "mem.merged").stat().st_mtime_ns
    shutil.rmtree(parent)
    shutil.copytree(snaps["other"].dir, parent)  # another guest at the parent's path
    with pytest.raises(FirecracerError, match=rf"this Diff was taken on top of snapshot {snaps['full'].id}, "
                                              rf"but {parent} now holds snapshot {snaps['other'].id}"):
        MicroVM.restore(diff, firecracker=fc)
    # the parent put back: restores again; a merge is reused only while its inputs are unchanged
    shutil.rmtree(parent)
    shutil.copytree(snaps["full"].dir, parent)
    os.utime(parent / "mem", ns=(merged_before + 10**9, merged_before + 10**9))
    with MicroVM.restore(diff, firecracker=fc) as vm:
        assert trigger(vm, b"a").errors == 0
    assert (diff / "mem.merged").stat().st_mtime_ns != merged_before  # remade: its base changed


def test_prefetch_trace_of_another_snapshot_is_refused(fc: Path, snaps: dict[str, Snapshot],
                                                       tmp_path: Path) -> None:
    """Before: the other snapshot's pages were installed, the guest broke silently, restore returned 0."""
    trace = tmp_path / "other.npz"
    with MicroVM.restore(snaps["other"], firecracker=fc, backend=MemBackend.UFFD, trace=trace) as vm:
        trigger(vm)
    assert trace.with_suffix(".ws").exists()
    res = fcr("vm", "restore", str(snaps["full"].dir), "--uffd", "--strategy", f"prefetch:{trace}",
              "--firecracker", str(fc), "--name", "pf")
    line = one_line_error(res)
    assert f"trace {trace} does not belong to memory file {snaps['full'].mem_file}" in line
    assert snaps["other"].id in line and snaps["full"].id in line
    assert processes_in(state() / "vms" / "pf") == []
    # the same trace on its own snapshot works
    with MicroVM.restore(snaps["other"], firecracker=fc, backend=MemBackend.UFFD,
                         strategy=f"prefetch:{trace}") as vm:
        assert trigger(vm, b"a").errors == 0


def test_uffd_working_set_checks_its_memory_file_and_never_overwrites(fc: Path, snaps: dict[str, Snapshot],
                                                                        tmp_path: Path) -> None:
    trace = tmp_path / "t.npz"
    with MicroVM.restore(snaps["full"], firecracker=fc, backend=MemBackend.UFFD, trace=trace) as vm:
        trigger(vm)
    ws = trace.with_suffix(".ws")
    before = ws.read_bytes()
    line = one_line_error(fcr("uffd", "working-set", str(trace), str(snaps["full"].mem_file)))
    assert f"{ws} exists; pass --force" in line
    line = one_line_error(fcr("uffd", "working-set", str(trace), str(snaps["other"].mem_file), "--force"))
    assert "does not belong to memory file" in line and snaps["other"].id in line
    assert ws.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    assert fcr("uffd", "working-set", str(trace), str(snaps["full"].mem_file), "--force").returncode == 0
    # a working set built from another memory file is refused by prefetch, naming both
    shutil.copyfile(snaps["other"].mem_file, tmp_path / "mem")
    res = fcr("uffd", "working-set", str(trace), str(tmp_path / "mem"), "--mem-id", snaps["full"].id,
              "--force")
    assert res.returncode == 0, res.stderr  # told it is the same snapshot: content check catches it later
    with pytest.raises(FirecracerError, match=r"working set .* was recorded from another snapshot|differs"):
        MicroVM.restore(snaps["full"], firecracker=fc, backend=MemBackend.UFFD, strategy=f"prefetch:{trace}")


def test_snapshot_into_an_unwritable_place_is_one_line(fc: Path, tmp_path: Path) -> None:
    res = fcr("vm", "boot", "--probe", "--name", "unw", "--firecracker", str(fc))
    assert res.returncode == 0, res.stderr
    try:
        (tmp_path / "file").write_text("x")
        line = one_line_error(fcr("vm", "snapshot", "unw", str(tmp_path / "file" / "snap")))
        assert f"{tmp_path / 'file' / 'snap'}: cannot write the snapshot there (Not a directory)" in line
        line = one_line_error(fcr("vm", "snapshot", "unw", "/proc/version/snap"))
        assert "cannot write the snapshot there" in line
        listed = json.loads(fcr("vm", "ls", "--json").stdout)
        assert listed[0]["state"] == "running"  # nothing was paused for a snapshot that cannot be written
    finally:
        fcr("vm", "kill", "unw")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "huge", "garbage"])
def test_hostile_snapshot_json_is_one_line_in_bounded_time(fc: Path, snaps: dict[str, Snapshot],
                                                           tmp_path: Path, kind: str) -> None:
    d = tmp_path / "s"
    shutil.copytree(snaps["full"].dir, d)
    j = d / "snapshot.json"
    j.unlink()
    if kind == "fifo":
        os.mkfifo(j)
    elif kind == "device":
        j.symlink_to("/dev/zero")
    elif kind == "directory":
        j.mkdir()
    elif kind == "huge":
        with open(j, "wb") as f:
            f.truncate(8 << 30)
    else:
        j.write_bytes(os.urandom(4096))
    t0 = time.monotonic()
    line = one_line_error(fcr("vm", "restore", str(d), "--firecracker", str(fc), timeout=60))
    assert time.monotonic() - t0 < 30
    assert str(j) in line
    expect: dict[str, Any] = {"fifo": "is a FIFO", "device": "is a character device",
                              "directory": "is a directory", "huge": "more than the",
                              "garbage": "not UTF-8|NUL bytes"}
    assert re.search(expect[kind], line), line


def test_format_error_for_missing_snapshot_dir() -> None:
    with pytest.raises(FormatError, match="it does not exist"):
        Snapshot.load("/nonexistent/snap")


def test_helpers_run_the_same_code_with_a_relative_pythonpath(fc: Path) -> None:
    """The supervisor and the page server run in the run directory: a relative PYTHONPATH (as in
    'PYTHONPATH=src python -m firecracer …' from a checkout) must still find this code, not another
    install's. Before: the supervisor could not import and the hand-over failed."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": "src"}
    res = subprocess.run([sys.executable, "-m", "firecracer", "vm", "boot", "--probe", "--name", "rel",
                          "--firecracker", str(fc), "--json"], capture_output=True, text=True, cwd=root,
                         env=env, timeout=120, check=False)
    try:
        assert res.returncode == 0, res.stderr
        rec = json.loads((state() / "vms" / "rel" / "vm.json").read_text())
        assert rec["state"] == "running" and not gone(rec["supervisor_pid"])
    finally:
        fcr("vm", "kill", "rel")


# -- a guest that dies before it is ready ----------------------------------------------------------------
@pytest.mark.parametrize(("log", "said"), [
    ("jvm-crash.log", r"A fatal error has been detected by the Java Runtime Environment: / "
                      r"SIGSEGV \(0xb\) at pc=0x00007fdde1826c80, pid=38, tid=39 / "
                      r"firecracer-init: jvm pid=38 exited with status -6; rebooting"),
    ("init-panic.log", r"MemoryError / Kernel panic - not syncing: Attempted to kill init!"),
])
def test_wait_ready_ends_at_once_when_the_guest_dies(fc: Path, elf: Path, log: str, said: str) -> None:
    """A guest that panics or whose JVM crashes (consoles recorded in the lab) ends the wait for
    readiness at once, with what the console said, not after the timeout with 'connection refused'."""
    from firecracer.experiment.backend import RunFailed
    from firecracer.experiment.backends.jvm import GuestDriver

    vm = boot_probe(elf, fc)
    with vm:
        os.kill(vm.fc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while vm.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(vm.serial_log, "ab") as f:  # what the real guest printed before it went
            f.write((HERE.parent / "fixtures" / "serial" / log).read_bytes())
        t0 = time.monotonic()
        with pytest.raises(RunFailed, match=r"the guest died before it was ready: .*SIGKILL.*the guest said: "
                           + said):
            GuestDriver(vm.vsock_path).wait_ready(120, vm)
        assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(("log", "said"), [
    ("jvm-sigill-then-stall.log",
     r"the JVM crashed: SIGILL \(0x4\) at pc=0x00007f05dd99f7c4, pid=37, tid=38"),
    ("rcu-stall.log", r"rcu: INFO: rcu_sched detected stalls on CPUs/tasks:"),
])
def test_wait_ready_ends_at_once_when_the_live_guest_cannot_recover(fc: Path, elf: Path, log: str,
                                                                     said: str) -> None:
    """Seen in the lab: the JVM crashed and a guest CPU stalled while Firecracker kept running; the wait
    for readiness ends when the console says so, not after the timeout (900 s in the study)."""
    from firecracer.experiment.backend import RunFailed
    from firecracer.experiment.backends.jvm import GuestDriver

    with boot_probe(elf, fc) as vm:
        with open(vm.serial_log, "ab") as f:  # what the real guest printed (its console, recorded in L1)
            f.write((HERE.parent / "fixtures" / "serial" / log).read_bytes())
        t0 = time.monotonic()
        with pytest.raises(RunFailed, match=r"the guest broke before it was ready: " + said):
            GuestDriver(vm.vsock_path).wait_ready(120, vm)
        assert time.monotonic() - t0 < 5 and vm.alive()


def test_wait_ready_timeout_says_where_the_console_got_to(fc: Path, elf: Path) -> None:
    """A guest alive but not ready in time: the message says what its console printed last."""
    from firecracer.experiment.backend import RunFailed
    from firecracer.experiment.backends.jvm import GuestDriver

    vm = boot_probe(elf, fc)
    with vm:
        with open(vm.serial_log, "ab") as f:
            f.write(b"\nfirecracer-init: jvm started pid=212\n  \n")
        with pytest.raises(RunFailed, match=r"guest not ready within 0.5 s: .*; the console's last line: "
                                            r"firecracer-init: jvm started pid=212$"):
            GuestDriver(vm.vsock_path).wait_ready(0.5, vm)


@pytest.mark.parametrize(("console", "said"), [
    # the OOM killer's line is the verdict, whatever the init printed after it
    ("[  88.1] Out of memory: Killed process 212 (java) total-vm:2816000kB\n"
     "firecracer-init: jvm pid=212 was killed by SIGKILL; rebooting\n",
     "Out of memory: Killed process 212 (java) total-vm:2816000kB / "
     "firecracer-init: jvm pid=212 was killed by SIGKILL; rebooting"),
    # no verdict: the last three lines, since one cut line ("firecrace") says nothing
    ("a\nb\nPetClinic: started\nfirecrace", "b / PetClinic: started / firecrace"),
])
def test_guest_death_quotes_the_verdict_or_the_last_lines(fc: Path, tmp_path: Path, console: str,
                                                          said: str) -> None:
    vm = MicroVM(fc, name="dead", run_dir=tmp_path / "dead")
    vm.run_dir.mkdir()
    vm.serial_log.write_text(console)
    assert vm.guest_death("gone") == f"gone; the guest said: {said}"
