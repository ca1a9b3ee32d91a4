"""The guest init's pure parts (kernel-argument parsing, JVM and agent command lines) and its build mode."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from firecracer.image.guest_init import init
from firecracer.image.guest_init.init import InitConfig, InitError, agent_argv, java_argv

APP = {"classpath": ["/opt/app/petclinic.jar"], "main": "io.firecracer.petclinic.PetClinic",
       "jar": "/opt/app/petclinic.jar", "args": ["--port", "8080"], "appcds": "/opt/app/app-cds.jsa",
       "port": 8080}
INIT = Path(init.__file__)


def test_defaults() -> None:
    cfg = InitConfig.from_env({})
    got = (cfg.overlay_root, cfg.overlay_size, cfg.nmt, cfg.java, cfg.agent)
    assert got == ("ram", "256m", "", True, True)
    assert java_argv(cfg, APP) == ["/opt/jdk/bin/java", "-cp", "/opt/app/petclinic.jar",
                                   "io.firecracer.petclinic.PetClinic", "--port", "8080"]


def test_overlay_size_is_honoured_under_both_names() -> None:
    """The seed sent overlay_size= but read tempfs_size: both work here, overlay_size wins."""
    assert InitConfig.from_env({"overlay_size": "1g"}).overlay_size == "1g"
    assert InitConfig.from_env({"tempfs_size": "64m"}).overlay_size == "64m"
    assert InitConfig.from_env({"overlay_size": "1g", "tempfs_size": "64m"}).overlay_size == "1g"
    assert InitConfig.from_env({"overlay_root": "vdb"}).overlay_root == "vdb"  # kept, not reset to ram


def test_java_options_keep_quoted_spaces() -> None:
    """The kernel strips the outer double quotes; inner single quotes group words (shell rules)."""
    env = {"FC_JAVA_OPTIONS": "-Dgreeting='hello world' -Xmx64m", "FC_NMT": "detail", "FC_APPCDS": "1",
           "FC_JAVA_ARGS": "--owners 10"}
    argv = java_argv(InitConfig.from_env(env), APP)
    assert argv == ["/opt/jdk/bin/java", "-XX:NativeMemoryTracking=detail",
                    "-XX:SharedArchiveFile=/opt/app/app-cds.jsa", "-Dgreeting=hello world", "-Xmx64m",
                    "-cp", "/opt/app/petclinic.jar", "io.firecracer.petclinic.PetClinic", "--port", "8080",
                    "--owners", "10"]


def test_java_cmd_overrides_the_app() -> None:
    assert java_argv(InitConfig.from_env({"FC_JAVA_CMD": "/x/app.jar"}), APP)[1:] == ["-jar", "/x/app.jar"]
    assert java_argv(InitConfig.from_env({"FC_JAVA_CMD": "-cp /y.jar Main"}), APP)[1:] == ["-cp", "/y.jar",
                                                                                            "Main"]


def test_crac_agent_is_added_when_the_image_has_it(tmp_path: Path) -> None:
    """-javaagent after NMT/AppCDS and before the user's options (their -D can configure it); off with
    FC_CRAC_AGENT=off; absent when the image has no agent jar (a JDK without javac)."""
    jar = tmp_path / "firecracer-crac-agent.jar"
    jar.write_bytes(b"PK")
    cfg = InitConfig.from_env({"FC_APPCDS": "1", "FC_JAVA_OPTIONS": "-Dfirecracer.crac.notifyDir=/x"})
    assert java_argv(cfg, APP, crac_agent=str(jar))[1:4] == [
        "-XX:SharedArchiveFile=/opt/app/app-cds.jsa", f"-javaagent:{jar}", "-Dfirecracer.crac.notifyDir=/x"]
    user_jar = InitConfig.from_env({"FC_JAVA_CMD": "/x/app.jar"})
    assert java_argv(user_jar, APP, crac_agent=str(jar))[1:] == [f"-javaagent:{jar}", "-jar", "/x/app.jar"]
    off = InitConfig.from_env({"FC_CRAC_AGENT": "off"})
    assert not off.crac_agent and InitConfig().crac_agent
    assert not any(a.startswith("-javaagent") for a in java_argv(off, APP, crac_agent=str(jar)))
    missing = java_argv(InitConfig(), APP, crac_agent=str(tmp_path / "none.jar"))
    assert not any(a.startswith("-javaagent") for a in missing)


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(InitError, match="FC_NMT"):
        InitConfig.from_env({"FC_NMT": "full"})
    with pytest.raises(InitError, match="FC_JAVA_OPTIONS"):
        InitConfig.from_env({"FC_JAVA_OPTIONS": "-Dx='unclosed"})
    with pytest.raises(InitError, match=r"app\.json"):
        java_argv(InitConfig(), {})


def test_agent_command_line() -> None:
    default = agent_argv(InitConfig.from_env({}), APP)
    assert default[1:] == ["-m", "firecracer.guest.agent", "--forward", "vsock:8080=127.0.0.1:8080"]
    qemu = agent_argv(InitConfig.from_env({"FC_AGENT": "tcp:0.0.0.0:5252"}), APP)
    assert qemu[3:] == ["--listen", "tcp:0.0.0.0:5252"]
    env = {"FC_AGENT": "vsock:52,tcp:0.0.0.0:5252", "FC_AGENT_FORWARD": ""}
    both = agent_argv(InitConfig.from_env(env), APP)
    assert both[3:] == ["--listen", "vsock:52", "--listen", "tcp:0.0.0.0:5252"]
    assert not InitConfig.from_env({"FC_AGENT": "off"}).agent


def test_refuses_to_run_as_a_normal_process() -> None:
    res = subprocess.run([sys.executable, str(INIT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not PID 1" in res.stderr


def test_training_mode_stops_a_long_run_with_sigterm() -> None:
    """The build helper: a run that outlives SECONDS gets SIGTERM, which counts as a normal end."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    res = subprocess.run([sys.executable, str(INIT), "--train", "0.5", "--", *sleeper], timeout=60)
    assert res.returncode == 0
    res = subprocess.run([sys.executable, str(INIT), "--train", "30", "--", sys.executable, "-c",
                          "raise SystemExit(3)"], timeout=60)
    assert res.returncode == 3


def test_how_the_jvm_ended_names_the_signal() -> None:
    """The console's last line tells a SIGKILL (the OOM killer) from a crash and from an exit code."""
    def status_of(sig: int | None = None) -> int:
        pid = os.fork()
        if pid == 0:
            if sig is not None:
                os.kill(os.getpid(), sig)
            os._exit(3)
        return os.waitpid(pid, 0)[1]

    assert init.how_it_ended(status_of()) == "exited with status 3"
    assert init.how_it_ended(status_of(signal.SIGKILL)) == "was killed by SIGKILL"
    assert init.how_it_ended(status_of(signal.SIGTERM)) == "was killed by SIGTERM"


def test_drain_console_waits_for_the_queue_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """It waits while the terminal's output queue holds bytes, stops when it is empty, gives up after
    the timeout, and returns at once on a pipe (not a terminal)."""
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        init.drain_console(w, timeout=5)
        assert time.monotonic() - t0 < 1
    finally:
        os.close(r)
        os.close(w)

    queue = [120, 40, 0]
    seen: list[int] = []

    def outq(fd: int, req: int, buf: bytearray) -> int:
        assert req == termios.TIOCOUTQ
        seen.append(fd)
        buf[:] = struct.pack("i", queue.pop(0) if len(queue) > 1 else queue[0])
        return 0

    monkeypatch.setattr(init.fcntl, "ioctl", outq)
    init.drain_console(7, timeout=5)
    assert seen == [7, 7, 7] and queue == [0]

    monkeypatch.setattr(init.fcntl, "ioctl", lambda fd, req, buf: buf.__setitem__(slice(None),
                                                                                struct.pack("i", 9)))
    t0 = time.monotonic()
    init.drain_console(7, timeout=0.5)
    assert 0.5 <= time.monotonic() - t0 < 2


def test_how_it_ended_names_unknown_signals_and_core_dumps() -> None:
    assert init.how_it_ended(35) == "was killed by signal 35"  # a real-time signal has no name
    assert init.how_it_ended(0x80 | signal.SIGABRT) == "was killed by SIGABRT (core dumped)"
