"""The guest agent: every command over a real socket, clear error replies, fuzzing, and the client.

The agent runs here on a Unix socket (this host has no vhost-vsock); the client's vsock path is driven
through a small stand-in for Firecracker's host-side vsock socket (``CONNECT <port>`` / ``OK <n>``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firecracer.agentclient.client import AgentClient, AgentError, agent_exec
from firecracer.guest import agent, agentnet, memmap, npyio, workload

from .conftest import need_root


class RunningAgent:
    def __init__(self, tmp: Path, cfg: agent.AgentConfig,
                 forwards: list[tuple[str, str]] | None = None) -> None:
        self.path = str(tmp / "agent.sock")
        self.address = f"unix:{self.path}"
        self.agent = agent.Agent(cfg, [self.address], forwards or [])
        self.thread = threading.Thread(target=self.agent.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=10)
        self.agent.close()
        assert not self.thread.is_alive()


@pytest.fixture
def cfg(tmp_path: Path) -> agent.AgentConfig:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "notify").mkdir()
    return agent.AgentConfig(hooks_dir=str(tmp_path / "hooks"), notify_dir=str(tmp_path / "notify"))


@pytest.fixture
def running(tmp_path: Path, cfg: agent.AgentConfig) -> Iterator[RunningAgent]:
    ra = RunningAgent(tmp_path, cfg)
    try:
        yield ra
    finally:
        ra.stop()
    assert not os.path.exists(ra.path)


def raw(path: str, payload: bytes, replies: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    """Send raw bytes to the agent and read ``replies`` reply lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < replies:
            got = s.recv(1 << 20)
            if not got:
                break
            buf += got
    return [json.loads(line) for line in buf.splitlines()]


def test_ping_and_help(running: RunningAgent) -> None:
    with AgentClient.connect(running.address) as c:
        p = c.ping()
        assert p["agent_version"] == agent.AGENT_VERSION and p["uptime_s"] > 0
        assert isinstance(p["jvm_pids"], list) and p["kernel"]
        h = c.call("help")
        assert set(h["commands"]) == set(agent.COMMANDS)


@pytest.mark.parametrize(("payload", "code"), [
    (b"{not json\n", "bad-json"),
    (b"[1, 2]\n", "bad-request"),
    (b'{"args": {}}\n', "bad-request"),
    (b'{"cmd": 7}\n', "bad-request"),
    (b'{"cmd": "ping", "args": [1]}\n', "bad-request"),
    (b'{"cmd": "exec", "args": {"argv": "ls"}}\n', "bad-request"),
    (b'{"cmd": "exec", "args": {"argv": ["true"], "timeout_s": true}}\n', "bad-request"),
    (b'{"cmd": "nmt", "args": {"pid": -3}}\n', "bad-request"),
    (b'{"cmd": "nmt", "args": {"mode": "everything", "pid": 1}}\n', "bad-request"),
    (b'{"cmd": "prepare", "args": {"steps": ["reboot"]}}\n', "bad-request"),
    (b'{"cmd": "after-restore", "args": {"steps": ["entropy"], "entropy_b64": "!!"}}\n', "bad-request"),
    (b'{"cmd": "collect-memmap", "args": {"sections": ["swap"]}}\n', "collect-error"),
    (b"\xff\xfe\n", "bad-json"),
])
def test_malformed_requests_get_clear_errors(running: RunningAgent, payload: bytes, code: str) -> None:
    # each bad request is followed by a good one on the same connection: the agent keeps serving
    replies = raw(running.path, payload + b'{"cmd": "ping", "id": "after"}\n', replies=2)
    assert replies[0]["ok"] is False and replies[0]["error"]["code"] == code, replies[0]
    assert replies[0]["error"]["message"] and "\n" not in replies[0]["error"]["message"]
    assert replies[1]["ok"] is True and replies[1]["id"] == "after"


def test_unknown_command_lists_the_known_ones(running: RunningAgent) -> None:
    with AgentClient.connect(running.address) as c, pytest.raises(AgentError) as ei:
        c.call("reboot-host")
    assert ei.value.code == "unknown-command"
    assert "'reboot-host'" in str(ei.value) and "collect-memmap" in str(ei.value)


def test_oversized_request_is_refused_and_the_connection_closed(tmp_path: Path) -> None:
    ra = RunningAgent(tmp_path, agent.AgentConfig(max_request=1000))
    try:
        # a complete over-long line is refused, and the next request on the connection is served
        long_line = b'{"cmd": "ping", "pad": "' + b"x" * 5000 + b'"}\n'
        replies = raw(ra.path, long_line + b'{"cmd": "ping"}\n', replies=2)
        assert replies[0]["error"]["code"] == "too-large" and "1000" in replies[0]["error"]["message"]
        assert replies[1]["ok"] is True
        # no newline within the limit: refused and the connection is closed (cannot resynchronise)
        replies = raw(ra.path, b'{"cmd": "ping", "pad": "' + b"x" * 200_000, replies=2)
        assert len(replies) == 1 and replies[0]["error"]["code"] == "too-large"
        with AgentClient.connect(ra.address) as c:  # a new connection works
            assert c.ping()["agent_version"] == agent.AGENT_VERSION
    finally:
        ra.stop()


def test_exec_output_limits_and_timeout(running: RunningAgent, tmp_path: Path) -> None:
    with AgentClient.connect(running.address) as c:
        r = c.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
        assert c.exec(["cat"], stdin="fed").stdout == "fed"
        big = "0123456789abcdef" * 32768  # 512 KiB: more than a pipe holds, in both directions
        assert c.exec(["cat"], stdin=big, timeout_s=60).stdout == big
        with pytest.raises(AgentError) as ei:
            c.exec(["sh", "-c", "yes | head -c 3000000"])
        assert ei.value.code == "output-too-large" and "1048576" in str(ei.value)
        marker = tmp_path / "survived"
        t0 = time.monotonic()
        with pytest.raises(AgentError) as ei:
            c.exec(["sh", "-c", f"sleep 20; touch {marker}"], timeout_s=0.5)
        assert ei.value.code == "timeout" and time.monotonic() - t0 < 15
        with pytest.raises(AgentError) as ei:
            c.exec(["/nonexistent/binary"])
        assert ei.value.code == "exec-failed" and "/nonexistent/binary" in str(ei.value)
        assert c.ping()  # still serving
    time.sleep(0.2)
    assert not marker.exists()


def test_oversized_reply_becomes_an_error(tmp_path: Path) -> None:
    ra = RunningAgent(tmp_path, agent.AgentConfig(max_reply=4096))
    try:
        with AgentClient.connect(ra.address) as c:
            with pytest.raises(AgentError) as ei:
                c.exec(["head", "-c", "2000", "/dev/zero"])  # 2000 NULs are 12000 bytes of JSON
            assert ei.value.code == "reply-too-large" and "4096" in str(ei.value)
            assert c.exec(["echo", "small"]).stdout == "small\n"
    finally:
        ra.stop()


def test_jvm_errors_dead_jvm_no_nmt_not_java(running: RunningAgent, tmp_path: Path) -> None:
    why = workload.java_available()
    if why:
        pytest.skip(why)
    j = workload.start_jvm(tmp_path / "w", extra=("-XX:NativeMemoryTracking=off",))
    try:
        with AgentClient.connect(running.address) as c:
            with pytest.raises(AgentError) as ei:
                c.nmt(j.pid)
            assert ei.value.code == "jvm-error" and "not enabled" in str(ei.value)
            assert c.call("jcmd", {"pid": j.pid, "command": "VM.version"})["text"].startswith(f"{j.pid}:\n")
            with pytest.raises(AgentError) as ei:
                c.nmt(os.getpid())
            assert ei.value.code == "jvm-error" and "not a java process" in str(ei.value)
            j.stop()
            with pytest.raises(AgentError) as ei:
                c.nmt(j.pid)
            assert ei.value.code == "no-such-process" and str(j.pid) in str(ei.value)
            with pytest.raises(AgentError) as ei:
                c.smaps(j.pid)
            assert ei.value.code == "no-such-process"
    finally:
        j.stop()


def test_collect_nmt_smaps_prepare_over_the_agent(running: RunningAgent, jvm: workload.RunningJvm) -> None:
    need_root()
    with AgentClient.connect(running.address) as c:
        data = c.collect_memmap(pids=[jvm.pid], sections=["processes", "kernel"])
        cols, meta = npyio.read_npz(io.BytesIO(data))
        mm = memmap.Memmap.from_columns(cols, meta)
        assert list(mm.owner_pid) == [jvm.pid, 0] and meta["source"] == "guest"
        pid, text = c.nmt(jvm.pid)
        assert pid == jvm.pid and "Java Heap" in text and text.startswith(f"{jvm.pid}:\n")
        pid, summary = c.nmt(jvm.pid, mode="summary")
        assert "Total: reserved=" in summary
        _, smaps = c.smaps(jvm.pid)
        assert "Rss:" in smaps
        r = c.prepare(steps=["gc", "trim"], pid=jvm.pid)
        assert [s["step"] for s in r["steps"]] == ["gc", "trim"] and r["ok"], r


def test_hooks_and_notify_before_snapshot_and_after_restore(running: RunningAgent,
                                                            cfg: agent.AgentConfig, tmp_path: Path) -> None:
    log = tmp_path / "log"
    for ev in ("before-snapshot", "after-restore"):
        d = Path(cfg.hooks_dir) / f"{ev}.d"
        d.mkdir()
        for name in ("10-first", "20-second"):
            h = d / name
            h.write_text(f'#!/bin/sh\necho "$1 {name} gen=$FIRECRACER_GENERATION" >> {log}\n')
            h.chmod(0o755)
    sock_path = str(Path(cfg.notify_dir) / "app.sock")
    got: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(4)
    srv.settimeout(20)

    def app() -> None:  # what a Java app does with a UnixDomainSocketAddress server
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                got.append(conn.recv(100))
                conn.sendall(b"ok\n")

    t = threading.Thread(target=app, daemon=True)
    t.start()
    try:
        with AgentClient.connect(running.address) as c:
            r = c.prepare(steps=["hooks"])
            assert r["ok"], r
            r = c.after_restore(generation=7, steps=["hooks", "clock"])
            assert r["ok"], r
            clock = next(s for s in r["steps"] if s["step"] == "clock")
            assert clock["skipped"]  # no time_ns: the clock is left alone
        t.join(timeout=20)
    finally:
        srv.close()
    assert log.read_text().splitlines() == [
        "before-snapshot 20-second gen=", "before-snapshot 10-first gen=",  # reverse order, like CRaC
        "after-restore 10-first gen=7", "after-restore 20-second gen=7"]
    assert got == [b"before-snapshot 0\n", b"after-restore 7\n"]


def test_after_restore_reseeds_entropy(running: RunningAgent) -> None:
    need_root()
    with AgentClient.connect(running.address) as c:
        r = c.after_restore(entropy=os.urandom(64), steps=["entropy"])
    assert r["ok"] and "512 bits" in r["steps"][0]["detail"]


def test_port_forward(tmp_path: Path, cfg: agent.AgentConfig) -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    echo.bind(("127.0.0.1", 0))
    echo.listen(1)
    echo.settimeout(20)
    port = echo.getsockname()[1]

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    fwd = str(tmp_path / "fwd.sock")
    ra = RunningAgent(tmp_path, cfg, [(f"unix:{fwd}", f"127.0.0.1:{port}")])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(fwd)
            s.sendall(b"hello java service")
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while data := s.recv(4096):
                buf += data
        assert buf == b"HELLO JAVA SERVICE"
    finally:
        ra.stop()
        echo.close()
        t.join(timeout=10)


class FakeFirecrackerVsock:
    """Firecracker's host side of a vsock device: ``CONNECT <port>\\n`` → ``OK <n>\\n``, then a pipe."""

    def __init__(self, uds: str, ports: dict[int, str]) -> None:
        self.uds = uds
        self.ports = ports
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(uds)
        self.srv.listen(4)
        self.srv.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(20)
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(1)
        port = int(line.split()[1])
        if port not in self.ports:
            conn.close()  # what Firecracker does when nothing listens in the guest
            return
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(self.ports[port])
        conn.sendall(b"OK 1073741824\n")
        t = threading.Thread(target=agentnet.pump, args=(up, conn), daemon=True)
        t.start()
        agentnet.pump(conn, up)
        t.join(timeout=10)
        up.close()
        conn.close()

    def close(self) -> None:
        self.stop.set()
        self.srv.close()
        self.thread.join(timeout=5)


def test_client_over_firecracker_style_vsock(running: RunningAgent, tmp_path: Path) -> None:
    uds = str(tmp_path / "v.sock")
    fc = FakeFirecrackerVsock(uds, {52: running.path})
    try:
        r = agent_exec(f"vsock:{uds}:52", ["echo", "via vsock"])
        assert (r.rc, r.stdout) == (0, "via vsock\n")
        with pytest.raises(AgentError, match="nothing listens on guest port 53"):
            AgentClient.connect(f"vsock:{uds}:53")
    finally:
        fc.close()


@pytest.mark.parametrize("address", ["vsock:52", "tcp:nohost", "unix:", "ftp:x", "vsock:/x:port"])
def test_client_rejects_bad_addresses(address: str) -> None:
    with pytest.raises(AgentError, match="bad agent address"):
        AgentClient.connect(address)


def test_client_names_an_unreachable_agent(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="No such file"):
        AgentClient.connect(f"unix:{tmp_path}/none.sock", retries=1, retry_delay=0.01)


def test_agent_cli_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "cli.sock"
    proc = subprocess.Popen([sys.executable, "-m", "firecracer.guest.agent", "--listen", f"unix:{path}",
                             "--hooks-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        with AgentClient.connect(f"unix:{path}") as c:
            assert c.ping()["agent_pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_agent_cli_rejects_bad_arguments() -> None:
    out = subprocess.run([sys.executable, "-m", "firecracer.guest.agent", "--listen", "carrier-pigeon:1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and "bad listen address 'carrier-pigeon:1'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "firecracer.guest.agent", "--forward", "8080"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "bad --forward" in out.stderr


def test_cli_collect_over_the_agent(tmp_path: Path, jvm: workload.RunningJvm) -> None:
    need_root()
    path = tmp_path / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "firecracer.guest.agent", "--listen", f"unix:{path}"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        out = tmp_path / "rec"
        res = subprocess.run([sys.executable, "-m", "firecracer", "collect", "--agent", f"unix:{path}",
                              "--pid", str(jvm.pid), "--jvm", str(jvm.pid), "--sections", "processes,kernel",
                              "--format", "seed", "--source", "qemu-tcg-postcopy", "--json", "-o", str(out)],
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        assert summary["jvm_pid"] == jvm.pid and not summary["problems"], summary
        rec = json.loads((out / "recording.json").read_text())
        assert rec["source"] == "qemu-tcg-postcopy" and rec["jvm"]["pid"] == jvm.pid
        assert "-XX:NativeMemoryTracking=detail" in rec["jvm"]["options"]
        assert (out / "nmt.txt").read_text().startswith(f"{jvm.pid}:\n")
        assert (out / "memmap.txt").read_text().startswith(f"= {jvm.pid} ")
        cols, meta = npyio.read_npz(out / "memmap.npz")
        assert meta["format"] == "firecracer-memmap" and len(cols["page_paddr"]) > 5000
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------ fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)

# commands whose side effects are harmless with any arguments; exec/prepare/after-restore get
# arguments that cannot run anything or touch host settings (clock, sysctls)
SAFE_CMDS = ["ping", "help", "nmt", "smaps", "jcmd", "no-such", ""]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    if kind == 2:
        args = draw(st.dictionaries(st.sampled_from(["pid", "mode", "command", "steps", "x"]), json_values,
                                    max_size=3))
        cmd = draw(st.sampled_from(SAFE_CMDS))
        if (isinstance(args.get("pid"), int) and args["pid"] > 0) or (
                cmd in ("nmt", "smaps", "jcmd") and args.get("pid") is None):
            # never let a fuzzed request pick "the only JVM": that could be another job's JVM
            args["pid"] = draw(st.sampled_from([os.getpid(), 999_999_999, 4_000_000]))
        req = {"cmd": cmd, "args": args, "id": draw(json_values)}
        return json.dumps(req).encode()
    if kind == 3:
        args = {"argv": draw(st.sampled_from([[], [1], "true", ["true"], ["echo", "fuzz"], None])),
                "timeout_s": draw(st.sampled_from([0, -1, 1e9, "x", 5, None])),
                "max_output": draw(st.sampled_from([0, -5, 10, 2**40, "big", None]))}
        return json.dumps({"cmd": "exec", "args": args}).encode()
    steps = draw(st.lists(st.sampled_from(["gc", "trim", "hooks", "reboot", 3, None]), max_size=3))
    cmd = draw(st.sampled_from(["prepare", "after-restore"]))
    extra = {"entropy_b64": draw(st.sampled_from([None, "", "!!", "AAAA", 5]))}
    return json.dumps({"cmd": cmd, "args": {"steps": steps, **extra, "pid": 999_999_999}}).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(line=requests())
def test_fuzz_handler_always_answers_one_json_line(cfg: agent.AgentConfig, line: bytes) -> None:
    out = agent.handle_request(cfg, line)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    reply = json.loads(out)
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"]["code"] != "internal", reply
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]


def test_fuzz_found_nothing_internal_for_deep_json(cfg: agent.AgentConfig) -> None:
    deep = b"[" * 100000 + b"]" * 100000
    reply = json.loads(agent.handle_request(cfg, deep))
    assert reply["error"]["code"] == "bad-json"
    big_b64 = base64.b64encode(b"x" * 10).decode()
    reply = json.loads(agent.handle_request(cfg, json.dumps(
        {"cmd": "after-restore", "args": {"steps": ["entropy"], "entropy_b64": big_b64}}).encode()))
    assert reply["error"]["code"] == "bad-request" and "16..4096" in reply["error"]["message"]
