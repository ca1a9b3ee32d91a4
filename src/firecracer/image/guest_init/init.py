#!/usr/bin/python3 -I
"""firecracer guest init: PID 1 of the guest image (standard library only).

What it does, in order (each step prints one ``firecracer-init:`` line on the console):

1. Read-only root shared by clones: mount an overlay whose upper layer is a tmpfs of ``overlay_size``
   (default 256m; the seed's ``tempfs_size`` is accepted as an alias — the seed sent one name and read
   the other) or the block device ``overlay_root=vdb``; ``overlay_root=none`` keeps the root as mounted.
   Then ``pivot_root`` into it (the read-only root stays visible at ``/rom``, the upper layer at
   ``/rom/overlay``).
2. Mount proc, sysfs, debugfs, devpts, /dev/shm and /run; bring ``lo`` (and ``eth0``) up.
3. Start the guest agent (``python3 -m firecracer.guest.agent``) unless ``FC_AGENT=off``.
   ``FC_AGENT`` is a comma-separated list of listen addresses (``vsock:52,tcp:0.0.0.0:5252``; default:
   the agent's own, vsock port 52). ``FC_AGENT_FORWARD`` lists ``LISTEN=[HOST:]PORT`` forwards; by
   default, with the agent on vsock, ``vsock:8080=127.0.0.1:8080`` reaches the app's HTTP port.
4. Start the JVM: ``/opt/jdk/bin/java [NMT] [AppCDS] [CRaC agent] FC_JAVA_OPTIONS <app> FC_JAVA_ARGS``.
   The CRaC agent (``-javaagent:/opt/firecracer/crac/firecracer-crac-agent.jar``, when the image has it)
   makes the app's ``org.crac``/``jdk.crac`` resources run when the guest agent notifies
   ``/run/firecracer/notify/crac.sock``; ``FC_CRAC_AGENT=off`` leaves it out. Option strings are split
   with shell rules (``shlex``), so ``FC_JAVA_OPTIONS="-Dgreeting='hello world' -Xmx64m"`` on the
   kernel command line gives two options. The app comes from ``/opt/firecracer/app.json`` (written by
   ``firecracer image rootfs``) unless ``FC_JAVA_CMD`` names a jar or a main class. Its pid, argv and
   start time (guest uptime) are written to ``/run/firecracer/jvm.json``.
   With ``FC_CRAC=on`` the JVM is one that CRIU can checkpoint (docs/crac.md): its pids start above
   ``CRAC_MIN_PID``, ``-XX:-UsePerfData``, stdin ``/dev/null`` and its output in ``/run/firecracer/jvm.log``
   (CRIU cannot dump the serial console), which init copies to the console as it grows.
5. Reap children; when the JVM exits (not after a CRIU checkpoint), sync and reboot, so Firecracker
   (``reboot=k``) or QEMU (``-no-reboot``) exits instead of the kernel panicking because PID 1 died.

Linux hands unknown ``key=value`` kernel arguments to init as environment variables (double quotes
stripped), which is how all of the above is configured. Other modes, for the image build:
``init.py --train SECONDS -- ARGV…`` brings ``lo`` up, runs ARGV, stops it with SIGTERM after SECONDS
(the AppCDS training run of a user JAR).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

APP_JSON = Path("/opt/firecracer/app.json")
JAVA = "/opt/jdk/bin/java"
#: built by ``image rootfs`` (firecracer.image.crac.IMAGE_AGENT_JAR); absent when the JDK had no javac
CRAC_AGENT = "/opt/firecracer/crac/firecracer-crac-agent.jar"
RUN_DIR = Path("/run/firecracer")
#: FC_CRAC=on: the JVM's stdout+stderr (CRIU cannot checkpoint a process holding the serial console, so
#: the JVM writes here and init copies it to the console); same path as firecracer.guest.crac.JVM_LOG
JVM_LOG = RUN_DIR / "jvm.log"
#: written by the guest agent before ``criu dump``: the JVM ending then is a checkpoint, not a reason to
#: reboot (firecracer.guest.crac.CHECKPOINTED)
CHECKPOINTED = RUN_DIR / "jvm-checkpointed"
#: FC_CRAC=on: the JVM's pid and thread ids start above this, so that a CRIU restore in a later boot (which
#: needs the same ids) finds them free: a fresh boot's own processes stay far below
CRAC_MIN_PID = 20000
AGENT_PATH = "/opt/firecracer"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_NOATIME = 1024
MS_MOVE = 8192
SYS_PIVOT_ROOT = 155  # x86-64
RB_AUTOBOOT = 0x01234567
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class InitError(Exception):
    """A step of the boot failed; init prints it and reboots (a dead PID 1 would panic the kernel)."""


@dataclass(frozen=True)
class InitConfig:
    """Everything init reads from the kernel command line (its environment)."""

    overlay_root: str = "ram"
    overlay_size: str = "256m"
    agent: bool = True
    agent_listen: tuple[str, ...] = ()  # () = the agent's default (vsock:52)
    agent_forward: tuple[str, ...] | None = None  # None = default forward of the app port over vsock
    java_options: list[str] = field(default_factory=list)
    java_cmd: str = ""
    java_args: list[str] = field(default_factory=list)
    nmt: str = ""  # "", "summary" or "detail"
    appcds: bool = False
    crac_agent: bool = True
    java: bool = True
    shell: bool = False
    crac: bool = False  # FC_CRAC=on: a JVM that CRIU can checkpoint (docs/crac.md)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> InitConfig:
        """Parse the variables; raises ``InitError`` naming the variable on a bad value."""

        def split(name: str) -> list[str]:
            try:
                return shlex.split(env.get(name, ""))
            except ValueError as exc:
                raise InitError(f"{name}={env.get(name)!r}: {exc}") from None

        nmt = env.get("FC_NMT", "").lower()
        if nmt in ("off", "0", "no"):
            nmt = ""
        if nmt not in ("", "summary", "detail"):
            raise InitError(f"FC_NMT={nmt!r}: expected summary, detail or off")
        agent_raw = env.get("FC_AGENT", "").strip()
        forward_raw = env.get("FC_AGENT_FORWARD")
        size = env.get("overlay_size") or env.get("tempfs_size") or "256m"
        overlay_root = env.get("overlay_root", "ram") or "ram"
        return cls(
            overlay_root=overlay_root,
            overlay_size=size,
            agent=agent_raw.lower() not in ("off", "0", "no"),
            agent_listen=tuple(a for a in agent_raw.split(",") if a),
            agent_forward=None if forward_raw is None else tuple(a for a in forward_raw.split(",") if a),
            java_options=split("FC_JAVA_OPTIONS"),
            java_cmd=env.get("FC_JAVA_CMD", ""),
            java_args=split("FC_JAVA_ARGS"),
            nmt=nmt,
            appcds=env.get("FC_APPCDS", "").lower() in ("1", "on", "yes", "true"),
            crac_agent=env.get("FC_CRAC_AGENT", "on").lower() not in ("off", "0", "no"),
            java=env.get("FC_JAVA", "on").lower() not in ("off", "0", "no"),
            shell=env.get("FC_INIT", "") == "shell",
            crac=env.get("FC_CRAC", "").lower() in ("1", "on", "yes", "true"),
        )


def java_argv(cfg: InitConfig, app: dict[str, object], java: str = JAVA,
              crac_agent: str = CRAC_AGENT) -> list[str]:
    """The JVM command line: java, NMT, AppCDS, CRaC agent, user options, the app (jar or main class), its
    args. The CRaC agent is added when ``cfg.crac_agent`` and the jar ``crac_agent`` exists.

    ``app`` is ``/opt/firecracer/app.json``: ``{"classpath": [...], "main": CLASS, "jar": PATH|null,
    "args": [...], "appcds": PATH|null}``. ``FC_JAVA_CMD`` overrides it: a path ending in ``.jar`` runs
    with ``-jar``, anything else is split with shell rules (e.g. ``-cp /x.jar Main``).
    """
    argv = [java]
    if cfg.crac:  # hsperfdata is an mmap'ed file in /tmp, which a later boot (the restore) does not have
        argv.append("-XX:-UsePerfData")
    if cfg.nmt:
        argv.append(f"-XX:NativeMemoryTracking={cfg.nmt}")
    appcds = app.get("appcds")
    if cfg.appcds and isinstance(appcds, str):
        argv.append(f"-XX:SharedArchiveFile={appcds}")
    if cfg.crac_agent and os.path.isfile(crac_agent):
        argv.append(f"-javaagent:{crac_agent}")
    argv += cfg.java_options
    if cfg.java_cmd:
        if cfg.java_cmd.endswith(".jar"):
            argv += ["-jar", cfg.java_cmd]
        else:
            argv += shlex.split(cfg.java_cmd)
        return argv + cfg.java_args
    jar = app.get("jar")
    main = app.get("main")
    classpath = app.get("classpath")
    if isinstance(classpath, list) and classpath and isinstance(main, str):
        argv += ["-cp", ":".join(str(c) for c in classpath), main]
    elif isinstance(jar, str):
        argv += ["-jar", jar]
    else:
        raise InitError(f"{APP_JSON}: names neither a classpath+main nor a jar")
    args = app.get("args")
    if isinstance(args, list):
        argv += [str(a) for a in args]
    return argv + cfg.java_args


def log(msg: str) -> None:
    """One console line (PID 1's stdout is /dev/console)."""
    sys.stdout.write(f"firecracer-init: {msg}\n")
    sys.stdout.flush()


def uptime_s() -> float:
    """Guest seconds since boot (CLOCK_BOOTTIME, what /proc/uptime shows)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise InitError(f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2) via libc; raises ``InitError`` naming the mount."""
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data.encode() if data else None)
    _check(rc, f"mount {fstype or ''} {source} on {target}" + (f" ({data})" if data else ""))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()),
           f"pivot_root {new_root} {put_old}")


def link_up(name: str) -> bool:
    """Set IFF_UP on an interface with SIOCSIFFLAGS (no iproute2 needed); False if it doesn't exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", name.encode(), 0)
        try:
            flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        except OSError:
            return False
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    return True


def setup_overlay(cfg: InitConfig) -> str:
    """Overlay the read-only root with tmpfs or a block device and pivot into it; returns a description."""
    if cfg.overlay_root == "none":
        return "no overlay (overlay_root=none)"
    for d in ("/overlay", "/rom", "/mnt"):
        if not os.path.isdir(d):
            raise InitError(f"{d} is missing in the root file system (needed for the overlay)")
    if cfg.overlay_root == "ram":
        mount("tmpfs", "/overlay", "tmpfs", MS_NOATIME, f"mode=0755,size={cfg.overlay_size}")
        what = f"tmpfs size={cfg.overlay_size}"
    else:
        dev = f"/dev/{cfg.overlay_root}"
        if not Path(dev).is_block_device():
            raise InitError(f"overlay_root={cfg.overlay_root}: {dev} is not a block device")
        mount(dev, "/overlay", "ext4", MS_NOATIME)
        what = f"{dev} (ext4)"
    os.makedirs("/overlay/root", exist_ok=True)
    os.makedirs("/overlay/work", exist_ok=True)
    mount("overlay", "/mnt", "overlay", MS_NOATIME,
          "lowerdir=/,upperdir=/overlay/root,workdir=/overlay/work")
    pivot_root("/mnt", "/mnt/rom")
    os.chdir("/")
    mount("/rom/dev", "/dev", None, MS_MOVE)
    return what


def mount_pseudo() -> None:
    """proc, sysfs, debugfs (if the kernel has it), devpts, /dev/shm, /run."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.isdir("/sys/kernel/debug"):
        try:
            mount("debugfs", "/sys/kernel/debug", "debugfs")
        except InitError as exc:
            log(f"warning: {exc}")
    os.makedirs("/dev/pts", exist_ok=True)
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")
    os.makedirs("/dev/shm", exist_ok=True)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64m")


def child_env(env: dict[str, str]) -> dict[str, str]:
    """Environment of the agent and the JVM: the kernel's variables plus a sane PATH, HOME, locale."""
    out = dict(env)
    out.update(PATH=f"/opt/jdk/bin:{GUEST_PATH}", HOME="/root", LANG="C.UTF-8", PYTHONPATH=AGENT_PATH,
               TERM="linux")
    return out


def agent_argv(cfg: InitConfig, app: dict[str, object]) -> list[str]:
    """``python3 -m firecracer.guest.agent`` with ``--listen``/``--forward`` from the config."""
    argv = ["/usr/bin/python3", "-m", "firecracer.guest.agent"]
    for addr in cfg.agent_listen:
        argv += ["--listen", addr]
    forwards = cfg.agent_forward
    port = app.get("port")
    if forwards is None:
        on_vsock = not cfg.agent_listen or any(a.startswith("vsock:") for a in cfg.agent_listen)
        forwards = (f"vsock:{port}=127.0.0.1:{port}",) if on_vsock and isinstance(port, int) else ()
    for fwd in forwards:
        argv += ["--forward", fwd]
    return argv


def read_app() -> dict[str, object]:
    """``/opt/firecracer/app.json`` (the workload the image was built with), or {} without one."""
    if APP_JSON.is_file():
        data = json.loads(APP_JSON.read_text())
        if isinstance(data, dict):
            return data
    return {}


def start_agent(cfg: InitConfig, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    if not cfg.agent:
        log("agent disabled (FC_AGENT=off)")
        return None
    if not Path(AGENT_PATH, "firecracer", "guest", "agent.py").is_file():
        log(f"agent not installed under {AGENT_PATH}; not started")
        return None
    argv = agent_argv(cfg, read_app())
    proc = subprocess.Popen(argv, env=env, cwd="/", start_new_session=True)
    log(f"agent started pid={proc.pid}: {shlex.join(argv)}")
    return proc


def start_jvm(cfg: InitConfig, env: dict[str, str]) -> subprocess.Popen[bytes]:
    app = read_app()
    argv = java_argv(cfg, app)
    cwd = str(app.get("workdir") or "/")
    started = uptime_s()
    if cfg.crac:
        # CRIU restores the exact pids (and tids): keep them clear of what a fresh boot uses
        Path("/proc/sys/kernel/ns_last_pid").write_text(f"{CRAC_MIN_PID}\n")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with open(os.devnull, "rb") as null, open(JVM_LOG, "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True, stdin=null,
                                    stdout=out, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "jvm.json").write_text(json.dumps({
        "pid": proc.pid, "argv": argv, "start_uptime_s": round(started, 6), "start_time": time.time()}))
    (RUN_DIR / "jvm.pid").write_text(f"{proc.pid}\n")
    log(f"jvm started pid={proc.pid} uptime_ms={int(started * 1000)}: {shlex.join(argv)}")
    return proc


def how_it_ended(status: int) -> str:
    """A wait status in words: the signal by name, since a SIGKILL (the OOM killer) reads unlike a crash."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def drain_console(fd: int = 1, timeout: float = 10.0) -> None:
    """Wait (bounded) until the console has sent what is queued: reboot(2) does not, and the reason the
    VM ends was seen cut to "firecrace" on a slow (emulated) UART. Polls the output queue (no thread:
    PID 1 must reach reboot(2) even when memory is short)."""
    deadline = time.monotonic() + timeout
    queued = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(fd, termios.TIOCOUTQ, queued)
        except OSError:
            return  # not a terminal: nothing is queued
        if struct.unpack("i", queued)[0] == 0:
            time.sleep(0.05)  # the UART's own FIFO
            return
        time.sleep(0.02)


def reboot(why: str) -> None:
    """Leave the VM: sync and reboot(2) — Firecracker (reboot=k) and QEMU (-no-reboot) then exit."""
    log(f"{why}; rebooting")
    os.sync()
    drain_console()
    _libc.reboot(RB_AUTOBOOT)
    time.sleep(5)  # reboot(2) only returns on error
    os._exit(1)


def run_pid1(env: dict[str, str]) -> None:
    """The boot sequence; never returns."""
    t0 = uptime_s()
    log(f"started at uptime_ms={int(t0 * 1000)}")
    try:
        cfg = InitConfig.from_env(env)
        what = setup_overlay(cfg)
        log(f"root overlay: {what}")
        mount_pseudo()
        Path("/proc/sys/kernel/hostname").write_text("firecracer\n")
        links = [n for n in ("lo", "eth0") if link_up(n)]
        log(f"network up: {', '.join(links) or 'none'}")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / "boot.json").write_text(json.dumps({
            "init_start_uptime_s": round(t0, 6), "overlay": what,
            "cmdline": Path("/proc/cmdline").read_text().strip()}))
        cenv = child_env(env)
        if cfg.shell:
            log("FC_INIT=shell: starting a shell on the console")
            os.execve("/bin/bash", ["/bin/bash", "-l"], cenv)
        start_agent(cfg, cenv)
        jvm = start_jvm(cfg, cenv) if cfg.java else None
        if jvm is None:
            log("JVM disabled (FC_JAVA=off)")
    except (InitError, OSError, ValueError) as exc:
        reboot(f"FATAL: {exc}")
        return
    # without a JVM of our own, the log that appears is a checkpoint's copy put back for a restore: its
    # old lines were shown in the boot that wrote them
    tail = LogTail(JVM_LOG, skip_existing=jvm is None) if cfg.crac else None
    while True:  # PID 1 reaps every orphan
        if tail is None:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                time.sleep(1)
                continue
            except InterruptedError:
                continue
        else:  # poll, so that the JVM's log reaches the console as it is written
            tail.copy()
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            except InterruptedError:
                continue
            if pid == 0:
                time.sleep(0.2)
                continue
        if jvm is not None and pid == jvm.pid:
            if tail is not None:
                tail.copy()
            if CHECKPOINTED.exists():
                log(f"jvm pid={pid} {how_it_ended(status)} after a CRIU checkpoint; the VM stays up")
                jvm = None
                continue
            reboot(f"jvm pid={pid} {how_it_ended(status)}")


class LogTail:
    """Copies what is appended to a file to the console (the JVM's log under FC_CRAC=on); the file may
    appear later (a JVM restored by CRIU in this boot writes to the same path)."""

    def __init__(self, path: Path, skip_existing: bool = False) -> None:
        self.path = path
        self.pos = -1 if skip_existing else 0

    def copy(self, limit: int = 1 << 20) -> None:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if self.pos < 0:
                    self.pos = size
                if size < self.pos:
                    self.pos = 0  # replaced (a restore put the checkpoint's copy back)
                fh.seek(self.pos)
                data = fh.read(limit)
        except OSError:
            return
        if data:
            self.pos += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def run_training(seconds: float, argv: list[str]) -> int:
    """Image-build helper: lo up, run ARGV, SIGTERM it after SECONDS; return its exit status.

    A JVM stopped by SIGTERM exits normally (shutdown hooks, -XX:ArchiveClassesAtExit runs): 143 is
    reported as success.
    """
    link_up("lo")
    proc = subprocess.Popen(argv)
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return 124
        return 0 if code in (143, -signal.SIGTERM) else code


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "--train" and "--" in argv:
        sep = argv.index("--")
        return run_training(float(argv[1]), argv[sep + 1:])
    if os.getpid() != 1:
        sys.stderr.write("firecracer-init: not PID 1; use --train SECONDS -- ARGV for the build helper\n")
        return 2
    run_pid1(dict(os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
