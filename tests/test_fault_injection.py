"""Fault injection: SIGKILL the CLI or the page server at random moments of boot, snapshot, restore and
an experiment run, in a loop bounded in count and time, and check the invariants of issue 14 each time:

* every process a killed command started is gone within 10 s, or is listed by ``vm ls --all`` (with
  its pid among the run directory's ``processes``) and gone within 5 s of ``vm kill``;
* a page server that dies is reported within 5 s (the command fails in one line naming the page
  server, or, for a VM already handed over, its supervisor records why), and no Firecracker survives it
  by more than 5 s;
* a snapshot directory is either complete (loadable) or absent; nothing half-written sits in its place.

Only processes this test starts are ever killed: the command it runs, and page servers found among that
command's descendants (the test makes itself a child subreaper, so even orphans stay its descendants).

Default: up to 12 iterations, started within 40 s (CI: the test ends within about a minute). More:
FIRECRACER_FAULT_ITERATIONS=N and FIRECRACER_FAULT_SECONDS=S (or ``pytest -m slow -k
fault_injection_long``: 120 iterations, 15 min).
FIRECRACER_FAULT_SEED replays a sequence; the seed and every iteration are printed and written to
``fault-injection.json`` in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from firecracer.vmm.lifeline import ENV_MARK, cmdline, start_time
from firecracer.vmm.snapshot import Snapshot

pytestmark = pytest.mark.firecracker

PR_SET_CHILD_SUBREAPER = 36
SCENARIOS = ("boot", "snapshot", "restore-file", "restore-uffd", "experiment")


# -- processes ---------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of ``pid``, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        return int(rest[1]), rest[0].decode(), int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, started: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == started and st[1] != "Z"


class Tracker:
    """The processes a command started: its descendants (this test is their subreaper, so orphans stay
    descendants), plus any process younger than the command carrying a run-directory mark under
    ``state`` (a child orphaned between two polls). Polled every 10 ms from a thread; zombies of them
    re-parented to us are reaped (never the command itself, which its Popen reaps)."""

    def __init__(self, root: int, state: Path) -> None:
        self.root = root
        self.root_start = start_time(root) or 0
        self.mark = f"{ENV_MARK}={os.path.realpath(state)}/".encode()
        self.seen: dict[int, tuple[int, list[str]]] = {}  # pid -> (start time, argv)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _started_here(self, pid: int, st: tuple[int, str, int], parents: dict[int, int]) -> bool:
        p, hops = st[0], 0
        while p > 1 and hops < 64:
            if p == self.root:
                return True
            p, hops = parents.get(p, 0), hops + 1
        if st[2] < self.root_start:
            return False
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            return any(v.startswith(self.mark) for v in env)
        return False

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            stats: dict[int, tuple[int, str, int]] = {}
            for e in os.scandir("/proc"):
                if e.name.isdigit() and (st := _stat(int(e.name))) is not None:
                    stats[int(e.name)] = st
            parents = {pid: st[0] for pid, st in stats.items()}
            for pid, st in stats.items():
                if pid in (self.root, me) or pid in self.seen or st[1] == "Z":
                    continue
                if self._started_here(pid, st, parents):
                    self.seen[pid] = (st[2], cmdline(pid))
            for pid, st in stats.items():
                if st[1] == "Z" and st[0] == me and pid in self.seen:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(pid, os.WNOHANG)
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def running(self) -> dict[int, list[str]]:
        return {pid: cmdline(pid) or argv for pid, (st, argv) in self.seen.items() if alive(pid, st)}

    def find(self, word: str) -> list[int]:
        """Running processes whose argv holds ``word`` (read now: a child first seen between its fork and
        its exec showed its parent's argv then)."""
        return [pid for pid, argv in self.running().items() if word in " ".join(argv)]


def wait_until(cond: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _reap_orphans() -> None:
    """Reap zombies re-parented to us (we are their subreaper); our own subprocesses are all waited for
    at this point, so nothing else can be reaped by mistake."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# -- one iteration ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    i: int
    scenario: str
    victim: str
    delay_s: float
    hit: str = ""  # what the kill met: "running", "already done", "no page server yet"
    rc: int | None = None
    error: str = ""
    started: int = 0  # processes the command started (seen by the tracker)
    survived_kill: list[str] = field(default_factory=list)  # listed by vm ls and killed by vm kill
    notes: list[str] = field(default_factory=list)


class Env:
    def __init__(self, root: Path, fc: Path, snap: Path) -> None:
        self.root, self.fc, self.snap = root, fc, snap
        self.env = {**os.environ, "FIRECRACER_STATE": str(root / "state"),
                    "FIRECRACER_CACHE": str(root / "cache")}

    def fcr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                              timeout=timeout, check=False, env=self.env)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "firecracer", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)

    def listed(self) -> list[dict[str, Any]]:
        res = self.fcr("vm", "ls", "--all", "--json")
        assert res.returncode == 0, res.stderr
        out: list[dict[str, Any]] = json.loads(res.stdout)
        return out


def check_nothing_orphaned(env: Env, tr: Tracker, out: Outcome) -> None:
    """Every process the command started: gone within 10 s, or listed by `vm ls --all` and then removed
    by `vm kill` within 5 s."""
    wait_until(lambda: not tr.running(), 10)
    left = tr.running()
    if left:
        listed = {p: r["name"] for r in env.listed() for p in r["processes"]}
        unlisted = {p: argv for p, argv in left.items() if p not in listed}
        assert not unlisted, f"{out}: running 10 s after the kill and not listed by 'vm ls --all': {unlisted}"
        for name in sorted(set(listed[p] for p in left)):
            res = env.fcr("vm", "kill", name)
            assert res.returncode == 0, res.stderr
            out.survived_kill.append(name)
        assert wait_until(lambda: not tr.running(), 5), f"{out}: 'vm kill' left {tr.running()}"


def check_firecracker_follows_page_server(tr: Tracker, out: Outcome, t_kill: float) -> None:
    """No Firecracker of this command runs 5 s after its page server died."""
    fcs = tr.find("firecracker-v") + tr.find("/firecracker ")
    ok = wait_until(lambda: not any(p in tr.running() for p in fcs), max(0.0, t_kill + 5 - time.monotonic()))
    assert ok, f"{out}: Firecracker {fcs} survived its page server by more than 5 s"


def cli_startup_s(env: Env) -> float:
    """How long the CLI takes to start (imports) before it does anything: kills are spread after it."""
    t0 = time.monotonic()
    env.fcr("vm", "ls", "--json")
    return time.monotonic() - t0


def run_iteration(env: Env, i: int, scenario: str, victim: str, rng: random.Random,
                  startup: float = 0.0) -> Outcome:
    name = f"fi{i}"
    args: list[str]
    if scenario == "boot":
        args = ["vm", "boot", "--probe", "--name", name, "--firecracker", str(env.fc), "--track-dirty-pages"]
    elif scenario == "snapshot":
        res = env.fcr("vm", "restore", str(env.snap), "--name", name, "--firecracker", str(env.fc))
        assert res.returncode == 0, res.stderr
        args = ["vm", "snapshot", name, str(env.root / f"snap{i}"), "--punch-holes"]
    elif scenario.startswith("restore"):
        args = ["vm", "restore", str(env.snap), "--name", name, "--firecracker", str(env.fc)]
        if scenario == "restore-uffd":
            args += ["--uffd", "--strategy", rng.choice(["ondemand", "eager", "fault-around:16"])]
    else:
        spec = env.root / f"study{i}.toml"
        spec.write_text('[study]\nname = "fi"\nbackend = "probe"\nrepetitions = 1\n'
                        'strategies = ["ondemand", "file"]\ntimeout_s = 30\nviewer = false\n\n'
                        '[guest]\nmem_size_mib = 128\n\n[[variant]]\nname = "v"\nworking_set_pages = 256\n')
        args = ["experiment", "run", str(spec), "-o", str(env.root / f"results{i}"), "--firecracker",
                str(env.fc)]
    span = {"boot": 2.0, "snapshot": 3.0, "restore-file": 1.5, "restore-uffd": 2.0,
            "experiment": 8.0}[scenario]
    delay = round(rng.uniform(0.5 * startup, startup + span), 3)
    out = Outcome(i, scenario, victim, delay)
    proc = env.popen(*args)
    tr = Tracker(proc.pid, env.root / "state")
    try:
        t_kill = 0.0
        if victim == "cli":
            time.sleep(delay)
            out.hit = "running" if proc.poll() is None else "already done"
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            t_kill = time.monotonic()
        else:  # the page server: wait for one to appear among the command's descendants, then kill it
            found = wait_until(lambda: tr.find("uffd serve"), 20, 0.005)
            if not found:
                out.hit = "no page server (the command ended first)"
            else:
                out.delay_s = delay = round(rng.uniform(0, 1.2), 3)  # from its start: before/after listening
                time.sleep(delay)
                ps = tr.find("uffd serve")
                if ps:
                    for pid in ps:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    t_kill = time.monotonic()
                    out.hit = "running" if proc.poll() is None else "after the command handed the VM over"
                else:
                    out.hit = "the page server had ended"
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{out}: the command did not end within 120 s") from None
        out.rc = proc.returncode
        errors = [ln for ln in stderr.splitlines() if ln.startswith("firecracer: error:")]
        out.error = errors[-1][:300] if errors else ""
        assert "Traceback" not in stderr, f"{out}: {stderr}"
        if victim == "page-server" and t_kill:
            check_firecracker_follows_page_server(tr, out, t_kill)
            if out.hit == "running" and scenario != "experiment" and out.rc != 0:
                assert out.rc == 1 and "page server" in out.error, f"{out}: {stderr}"
                assert len([ln for ln in stderr.splitlines() if ln.strip()]) <= 2, stderr
            if scenario == "experiment":
                assert out.rc in (0, 1), f"{out}: {stderr}"
                if out.rc == 1:  # the run it served was recorded as failed, naming the page server
                    import sqlite3

                    with sqlite3.connect(env.root / f"results{i}" / "results.sqlite") as c:
                        reasons = [r[0] for r in c.execute("SELECT reason FROM runs WHERE status='failed'")]
                    assert any("page server" in (r or "") for r in reasons), f"{out}: {reasons}"
                    out.notes.append(f"recorded: {reasons[0][:120]}")
        if scenario == "snapshot" and victim == "cli":
            d = env.root / f"snap{i}"
            if d.exists():
                Snapshot.load(d)  # complete, or absent: never half-written in place
                out.notes.append("snapshot complete")
            else:
                out.notes.append("no snapshot")
        if scenario == "restore-uffd" and victim == "page-server" and t_kill and out.rc == 0:
            def record() -> dict[str, Any]:
                return next(r for r in env.listed() if r["name"] == name)

            assert wait_until(lambda: record()["state"] == "dead", 5)  # handed over: its supervisor acted
            rec = record()
            assert "page server" in (rec.get("dead_reason") or ""), rec
        if victim == "cli" or scenario == "experiment":
            out.started = len(tr.seen)
            check_nothing_orphaned(env, tr, out)
    finally:
        tr.stop()
        env.fcr("vm", "kill", "--all")
        out.started = out.started or len(tr.seen)
        still = tr.running()
        _reap_orphans()
        assert not still, f"{out}: still running after 'vm kill --all': {still}"
    return out


# -- the loop ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fc() -> Path:
    from tests.conftest import FC_BINARIES, _need_kvm
    from tests.vmm.hostcaps import can_boot, uffd_unsupported

    if _need_kvm():
        pytest.skip(str(_need_kvm()))
    usable = [b for b in FC_BINARIES.values() if can_boot(b) and not uffd_unsupported(b)]
    if not usable:
        pytest.skip("needs a Firecracker that boots here and can do Uffd restores (>= 1.8)")
    return usable[-1]


def _loop(fc: Path, tmp_path: Path, iterations: int, seconds: float) -> list[Outcome]:
    from firecracer.vmm.probe import build_probe
    from firecracer.vmm.probe.run import boot_probe

    seed = int(os.environ.get("FIRECRACER_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    env = Env(tmp_path, fc, tmp_path / "base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRECRACER_STATE", env.env["FIRECRACER_STATE"])
        with boot_probe(build_probe(list(range(4096, 4352)), range(4096, 4352)), fc) as vm:
            vm.snapshot(env.snap)
    outcomes: list[Outcome] = []
    startup = cli_startup_s(env)
    t0 = time.monotonic()
    print(f"\nfault injection: seed {seed}, up to {iterations} iterations / {seconds:g} s; CLI start-up "
          f"{startup:.2f} s")
    with subreaper():
        for i in range(iterations):
            if time.monotonic() - t0 > seconds:
                break
            scenario = SCENARIOS[i % len(SCENARIOS)] if i < len(SCENARIOS) else rng.choice(SCENARIOS)
            victims = ["cli", "page-server"] if scenario in ("restore-uffd", "experiment") else ["cli"]
            victim = rng.choice(victims)
            try:
                out = run_iteration(env, i, scenario, victim, rng, startup)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}, iteration {i}: {exc}") from None
            outcomes.append(out)
            print(f"  {i:3d} {scenario:13s} kill {victim:11s} after {out.delay_s:5.2f} s: {out.hit}; "
                  f"rc={out.rc} started={out.started} {' '.join(out.notes)[:60]} {out.error[:90]}")
    summary = {"seed": seed, "iterations": len(outcomes), "seconds": round(time.monotonic() - t0, 1),
               "cli_startup_s": round(startup, 3), "outcomes": [asdict(o) for o in outcomes]}
    (tmp_path / "fault-injection.json").write_text(json.dumps(summary, indent=1))
    print(f"fault injection: {len(outcomes)} iterations in {summary['seconds']} s, all invariants held "
          f"({tmp_path / 'fault-injection.json'})")
    return outcomes


def test_fault_injection(fc: Path, tmp_path: Path) -> None:
    iterations = int(os.environ.get("FIRECRACER_FAULT_ITERATIONS", "12"))
    seconds = float(os.environ.get("FIRECRACER_FAULT_SECONDS", "40"))
    outcomes = _loop(fc, tmp_path, iterations, seconds)
    assert outcomes, "no iteration ran"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fault_injection_long(fc: Path, tmp_path: Path) -> None:
    outcomes = _loop(fc, tmp_path, int(os.environ.get("FIRECRACER_FAULT_ITERATIONS", "120")),
                     float(os.environ.get("FIRECRACER_FAULT_SECONDS", "900")))
    assert {o.scenario for o in outcomes} == set(SCENARIOS)
