"""The CRaC agent on this host's stock JDK 17, driven through the guest agent's own hooks code.

A small application (``tests/fixtures/crac/CracProbe.java``) registers resources through our ``org.crac``
library (as an unmodified app using the real one would) and through ``jdk.crac`` directly, and prints each
notification; it runs with ``-javaagent`` and the notify directory in a tmp dir. ``cmd_prepare``'s hooks
step and ``cmd_after_restore`` talk to the agent's socket exactly as in a guest. No VM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firecracer.guest import agent
from firecracer.image import crac

PROBE_SOURCES = Path(__file__).resolve().parents[1] / "fixtures" / "crac"
pytestmark = pytest.mark.timeout(300)


@dataclass
class Built:
    java: str
    jars: crac.CracJars
    probe_classes: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None or javac is None:
        pytest.skip("no JDK (apt-get install openjdk-17-jdk-headless)")
    work = tmp_path_factory.mktemp("crac")
    jars = crac.compile_on_host(work)
    classes = work / "probe"
    # jdk.crac comes from the agent jar at compile time, from the boot class path at run time
    subprocess.run([javac, "-d", str(classes), "-cp", f"{jars.library}:{jars.agent}",
                    *map(str, sorted(PROBE_SOURCES.glob("*.java")))], check=True, capture_output=True,
                   timeout=120)
    return Built(java, jars, classes)


class Probe:
    """A started probe JVM (own process group), always stopped."""

    def __init__(self, built: Built, notify: Path, log: Path, resources: list[str], *,
                 with_agent: bool = True) -> None:
        self.log = log
        self.notify = notify
        opts = [f"-javaagent:{built.jars.agent}"] if with_agent else []
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [built.java, "-Xshare:auto", *opts, f"-D{crac.DIR_PROPERTY}={notify}", "-cp",
                 f"{built.probe_classes}:{built.jars.library}", "CracProbe", *resources],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "probe: ready" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"probe not ready: {self.text()[-2000:]}")
            time.sleep(0.1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def hook_lines(self) -> list[str]:
        return re.findall(r"^crac: (\w+ \S+)$", self.text(), re.M)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)


@pytest.fixture
def cfg(tmp_path: Path) -> agent.AgentConfig:
    return agent.AgentConfig(hooks_dir=str(tmp_path / "hooks"), notify_dir=str(tmp_path / "notify"))


@pytest.fixture
def probe(built: Built, cfg: agent.AgentConfig, tmp_path: Path) -> Iterator[Any]:
    started: list[Probe] = []

    def _start(resources: list[str], *, with_agent: bool = True) -> Probe:
        p = Probe(built, Path(cfg.notify_dir), tmp_path / f"probe{len(started)}.log", resources,
                  with_agent=with_agent)
        started.append(p)
        return p

    yield _start
    for p in started:
        p.stop()


def _hooks_step(reply: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in reply["steps"] if s["step"] == "hooks")


def _connected_unix_sockets(pid: int) -> set[tuple[str, str]]:
    """(inode, path) of the Unix sockets ``pid`` holds that are connected (SS_CONNECTED = 03 in
    /proc/PID/net/unix). An accepted connection carries its listener's path."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    out = set()
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[6] in inodes and cols[5] == "03":
            out.add((cols[6], cols[7] if len(cols) > 7 else ""))
    return out


def _listening_on(pid: int, path: str) -> bool:
    inodes = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.is_symlink()}
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[7] == path and f"socket:[{cols[6]}]" in inodes:
            return cols[3] == "00010000"  # __SO_ACCEPTCON: listening
    return False


def test_hooks_run_in_crac_order_and_no_connection_is_left(probe: Any, cfg: agent.AgentConfig) -> None:
    """org.crac finds the agent's jdk.crac by itself (no -D); beforeCheckpoint last-registered first,
    afterRestore first-registered first; a resource nobody holds is collected and never notified."""
    p = probe(["org:one", "jdk:two", "org:three", "org:~ghost"])
    assert "probe: ready implemented=true" in p.text()
    sock = str(Path(cfg.notify_dir) / crac.SOCKET_NAME)
    assert _listening_on(p.proc.pid, sock)
    # NIO keeps one end of a socketpair (peer closed) for closing channels, made at the first close:
    # let a ping make it, then no connected socket may be added by a notification
    assert agent._notify(sock, b"ping\n")["ok"]
    before = _connected_unix_sockets(p.proc.pid)
    assert not [c for c in before if c[1] == sock]

    r = agent.cmd_prepare(cfg, {"steps": ["hooks"]})
    assert r["ok"], r
    (answer,) = _hooks_step(r)["hooks"]
    assert answer["notify"] == sock and answer["answer"].startswith("ok before-snapshot 0:")
    assert answer["eof"], "the agent must close the connection after its answer"
    assert _connected_unix_sockets(p.proc.pid) == before  # nothing CRIU would refuse to dump
    assert _listening_on(p.proc.pid, sock)
    assert p.hook_lines() == ["beforeCheckpoint three", "beforeCheckpoint two", "beforeCheckpoint one"]

    r = agent.cmd_after_restore(cfg, {"steps": ["hooks"], "generation": 4})
    assert r["ok"] and _hooks_step(r)["hooks"][0]["answer"].startswith("ok after-restore 4:"), r
    assert p.hook_lines()[3:] == ["afterRestore one", "afterRestore two", "afterRestore three"]
    assert _connected_unix_sockets(p.proc.pid) == before

    # a second after-restore without a checkpoint in between notifies nobody (and says so)
    r = agent.cmd_after_restore(cfg, {"steps": ["hooks"], "generation": 5})
    assert r["ok"] and "nobody notified" in _hooks_step(r)["hooks"][0]["answer"]
    assert len(p.hook_lines()) == 6 and "ghost" not in p.text()


def test_a_failing_hook_fails_the_step_with_its_message_in_one_line(probe: Any,
                                                                     cfg: agent.AgentConfig) -> None:
    """Every resource is still notified; the checkpoint is aborted and afterRestore runs, as in CRaC."""
    p = probe(["org:good", "org:bad!before", "jdk:last"])
    r = agent.cmd_prepare(cfg, {"steps": ["hooks"]})
    step = _hooks_step(r)
    assert not r["ok"] and not step["ok"]
    detail = step["detail"]
    assert "\n" not in detail
    assert detail.startswith("crac.sock: error before-snapshot 0: OrgResource[bad]: "
                             "java.lang.IllegalStateException: bad refuses"), detail
    assert "checkpoint aborted; afterRestore ran" in detail
    assert p.hook_lines() == ["beforeCheckpoint last", "beforeCheckpoint bad", "beforeCheckpoint good",
                              "afterRestore good", "afterRestore bad", "afterRestore last"]
    assert not [c for c in _connected_unix_sockets(p.proc.pid) if c[1].endswith(crac.SOCKET_NAME)]
    # the JVM goes on, ready for the next attempt
    assert p.proc.poll() is None and agent.cmd_prepare(cfg, {"steps": ["hooks"]})["ok"] is False


def test_a_failing_after_restore_fails_that_step(probe: Any, cfg: agent.AgentConfig) -> None:
    probe(["jdk:first", "org:late!after"])
    assert agent.cmd_prepare(cfg, {"steps": ["hooks"]})["ok"]
    r = agent.cmd_after_restore(cfg, {"steps": ["hooks"], "generation": 1})
    detail = _hooks_step(r)["detail"]
    assert not r["ok"] and "error after-restore 1: OrgResource[late]" in detail and "late refuses" in detail


def test_a_jvm_without_the_agent_is_unaffected(probe: Any, cfg: agent.AgentConfig) -> None:
    """org.crac finds no implementation: registrations are dropped, nothing listens, nothing runs."""
    p = probe(["org:one", "org:two"], with_agent=False)
    assert "probe: ready implemented=false" in p.text()
    assert not Path(cfg.notify_dir).exists() or not list(Path(cfg.notify_dir).iterdir())
    assert agent.cmd_prepare(cfg, {"steps": ["hooks"]})["ok"]
    assert p.hook_lines() == [] and "firecracer-crac" not in p.text()


def test_a_killed_jvm_leaves_a_socket_that_is_skipped(probe: Any, cfg: agent.AgentConfig) -> None:
    """SIGTERM removes the socket (shutdown hook); SIGKILL cannot, and the stale file must not fail
    every later prepare. A new JVM takes the name over."""
    sock = Path(cfg.notify_dir) / crac.SOCKET_NAME
    p = probe(["org:one"])
    p.stop(signal.SIGKILL)
    assert sock.exists()
    r = agent.cmd_prepare(cfg, {"steps": ["hooks"]})
    assert r["ok"] and _hooks_step(r)["hooks"][0].get("skipped"), r
    q = probe(["org:two"])
    assert _listening_on(q.proc.pid, str(sock))
    assert agent.cmd_prepare(cfg, {"steps": ["hooks"]})["ok"] and q.hook_lines() == ["beforeCheckpoint two"]
    q.stop()
    assert not sock.exists()


def test_ping_and_unknown_requests(probe: Any, cfg: agent.AgentConfig) -> None:
    probe(["org:one"])
    path = str(Path(cfg.notify_dir) / crac.SOCKET_NAME)
    assert agent._notify(path, b"ping\n")["answer"] == "ok firecracer-crac jdk.crac provided by the agent"
    bad = agent._notify(path, b"checkpoint-now\n")
    assert not bad["ok"] and bad["answer"].startswith("error unknown request 'checkpoint-now'")


def test_a_checkpoint_stops_at_a_failing_hook_before_criu_with_its_message(
        probe: Any, cfg: agent.AgentConfig) -> None:
    """The guest agent's ``checkpoint`` command: a throwing beforeCheckpoint ends it before any dump
    (CRIU never runs; this host has none to run anyway), in one line that quotes the hook, and the JVM,
    whose afterRestore ran, goes on."""
    p = probe(["org:good", "org:bad!before"])
    with pytest.raises(agent.RequestError) as exc:
        agent.cmd_checkpoint(cfg, {"pid": p.proc.pid, "steps": ["hooks"]})
    assert exc.value.code == "checkpoint-hooks-failed"
    msg = exc.value.message
    assert "\n" not in msg and f"pid {p.proc.pid}" in msg, msg
    assert "OrgResource[bad]: java.lang.IllegalStateException: bad refuses" in msg, msg
    assert msg.endswith("no checkpoint was made, the JVM goes on"), msg
    assert p.proc.poll() is None
    assert p.hook_lines() == ["beforeCheckpoint bad", "beforeCheckpoint good",
                              "afterRestore good", "afterRestore bad"]
