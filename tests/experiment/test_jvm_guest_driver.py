"""The jvm backend's guest side without a VM: a real guest agent and a real HTTP service behind an
emulated Firecracker vsock socket (``CONNECT <port>`` → ``OK``, then bytes both ways), and a real JVM.

The whole jvm backend needs a KVM host where Linux guests boot; this host (PVM-nested) is not one, and
``JvmBackend.check`` says so.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firecracer.analysis.memmap import load_memmap
from firecracer.analysis.nmt import parse_nmt
from firecracer.errors import FirecracerError
from firecracer.experiment.backend import RunFailed
from firecracer.experiment.backends.jvm import GuestDriver, JvmBackend, answered
from firecracer.experiment.spec import Request, parse_spec


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    posted: list[tuple[str, str, str]] = []  # noqa: RUF012 (what POSTs sent: path, content type, body)

    def do_GET(self) -> None:
        body = b"hello from the service\n" * 100
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # a form post: read the body, answer 302 like Spring's redirect-after-post
        n = int(self.headers.get("Content-Length") or 0)
        type(self).posted.append((self.path, self.headers.get("Content-Type", ""),
                                  self.rfile.read(n).decode()))
        self.send_response(302 if type(self).status == 200 else type(self).status)
        self.send_header("Location", "/owners/11")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


class VsockEmulator:
    """Firecracker's host side of vsock: a Unix socket taking ``CONNECT <port>\\n`` lines."""

    def __init__(self, path: Path, targets: dict[int, tuple[str, object]]) -> None:
        self.path = path
        self.targets = targets
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.drop = 0  # connections still to close right after "OK", as a restore's vsock reset does
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            got = conn.recv(1)
            if not got:
                conn.close()
                return
            line += got
        port = int(line.split()[1])
        if port not in self.targets:
            conn.close()  # what Firecracker does when nothing listens in the guest
            return
        kind, addr = self.targets[port]
        if self.drop > 0:
            self.drop -= 1
            conn.sendall(b"OK 1073741824\n")
            conn.close()
            return
        peer = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET, socket.SOCK_STREAM)
        peer.connect(addr)  # type: ignore[arg-type]
        conn.sendall(b"OK 1073741824\n")
        conn.settimeout(None)
        threading.Thread(target=_pipe, args=(peer, conn), daemon=True).start()
        _pipe(conn, peer)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


EMULATORS: dict[Path, VsockEmulator] = {}


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[GuestDriver, type[_Handler]]]:
    """Agent (real, ``python -m firecracer.guest.agent``) + HTTP service behind an emulated vsock."""
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen([sys.executable, "-m", "firecracer.guest.agent", "--listen",
                              f"unix:{agent_sock}", "--log-level", "WARNING"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handler = type("H", (_Handler,), {"status": 200})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    vs = None
    try:
        deadline = time.monotonic() + 30
        while not agent_sock.exists():
            assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        vs = VsockEmulator(tmp_path / "v.sock", {52: ("unix", str(agent_sock)),
                                                 8080: ("tcp", ("127.0.0.1", httpd.server_address[1]))})
        EMULATORS[tmp_path / "v.sock"] = vs
        yield GuestDriver(tmp_path / "v.sock", app_port=8080, path="/owners"), handler
    finally:
        if vs is not None:
            vs.close()
        httpd.shutdown()
        httpd.server_close()
        agent.terminate()
        agent.wait(timeout=10)


def test_request_over_vsock_times_first_byte_and_response(guest: tuple[GuestDriver, type[_Handler]]) -> None:
    drv, _ = guest
    r = drv.request(timeout=10)
    assert r.status == 200 and r.nbytes == len(b"hello from the service\n" * 100)  # the body
    assert 0 < r.first_byte_s <= r.total_s


def test_warm_up_cycles_through_the_requests_and_posts_forms(guest: tuple[GuestDriver, type[_Handler]]
                                                               ) -> None:
    drv, handler = guest
    handler.posted.clear()
    qs = (Request.parse("/vets.json"), Request.parse("POST /owners/new firstName=Ada&lastName=Lovelace"))
    assert len(drv.warm_up(4, timeout=10, requests=qs)) == 4
    assert handler.posted == [("/owners/new", "application/x-www-form-urlencoded",
                               "firstName=Ada&lastName=Lovelace")] * 2
    r = drv.request(timeout=10, q=qs[1])
    assert r.status == 302 and answered(r.status)
    handler.status = 500
    try:
        with pytest.raises(RunFailed, match=r"warm-up request 1 \(POST /owners/new firstName=Ada&lastName="
                                            r"Lovelace\) answered HTTP 500"):
            drv.warm_up(1, timeout=10, requests=(qs[1],))
    finally:
        handler.status = 200


def test_ready_warmup_and_failures(guest: tuple[GuestDriver, type[_Handler]], tmp_path: Path) -> None:
    drv, handler = guest
    ping = drv.wait_ready(timeout=20)
    assert ping["agent_version"] and "jvm_pids" in ping
    assert len(drv.warm_up(3, timeout=10)) == 3
    handler.status = 503
    with pytest.raises(RunFailed, match="guest not ready within 1 s: the service answered HTTP 503"):
        drv.wait_ready(timeout=1)
    with pytest.raises(RunFailed, match=r"warm-up request 1 \(GET /owners\) answered HTTP 503"):
        drv.warm_up(2, timeout=10)
    nowhere = GuestDriver(drv.uds, app_port=9999)
    with pytest.raises(FirecracerError, match="nothing listens on guest port 9999"):
        nowhere.request(timeout=5)
    with pytest.raises(FirecracerError, match=r"absent\.sock:8080: No such file"):
        GuestDriver(tmp_path / "absent.sock").request(timeout=5)


def test_prepare_and_collect_a_real_jvm(guest: tuple[GuestDriver, type[_Handler]], tmp_path: Path) -> None:
    """What a variant collects before its snapshot: the agent's memmap.npz and the JVM's NMT detail."""
    from firecracer.guest import workload

    if os.geteuid() != 0:
        pytest.skip("collecting pagemap PFNs needs root")
    why = workload.java_available()
    if why:
        pytest.skip(why)
    drv, _ = guest
    jvm = workload.start_jvm(tmp_path / "jvm")
    try:
        out = tmp_path / "variant"
        out.mkdir()
        facts = drv.prepare_and_collect(["gc"], out, timeout=120, sections=["processes"], pid=jvm.pid)
    finally:
        jvm.stop()
    assert facts["jvm_pid"] == jvm.pid and facts["prepare"]["ok"]
    nmt = parse_nmt(out / "nmt.txt")
    assert nmt.pid == jvm.pid and any("Heap" in r.category for r in nmt.regions)
    mm = load_memmap(out / "memmap.npz")
    assert jvm.pid in mm.owner_pid.tolist() and mm.n_pages > 1000


def test_after_restore_hooks_survive_the_vsock_reset_of_a_restore(
        guest: tuple[GuestDriver, type[_Handler]], tmp_path: Path) -> None:
    """The agent's connection right after a restore can be dropped before any reply (the lab's CRaC
    study lost its VM restores so): the hooks call tries again, up to three times."""
    drv, _ = guest
    spec = parse_spec(f'[study]\nname = "x"\nbackend = "jvm"\nstrategies = ["ondemand", "criu"]\n'
                      f'[guest]\nkernel = "{tmp_path}/k"\nrootfs = "{tmp_path}/r"\n[[variant]]\nname = "v"\n',
                      tmp_path / "x.toml")
    backend = JvmBackend(spec)
    emu = EMULATORS[drv.uds]
    emu.drop = 2
    assert backend._after_restore_hooks(drv) > 0
    assert emu.drop == 0
    emu.drop = 3
    with pytest.raises(FirecracerError, match=r"closed the connection|Broken pipe|reset by peer"):
        backend._after_restore_hooks(drv)


def test_jvm_backend_refuses_pvm_hosts_and_missing_images(tmp_path: Path) -> None:
    from firecracer import host

    spec = parse_spec('[study]\nname = "j"\nbackend = "jvm"\nstrategies = ["file"]\n'
                      '[guest]\nkernel = "vmlinux"\nrootfs = "rootfs.ext4"\n'
                      '[[variant]]\nname = "thp"\n'
                      'jvm_options = ["-XX:+UseTransparentHugePages", "-Da=b c"]\n',
                      tmp_path / "s.toml")
    be = JvmBackend(spec)
    with pytest.raises(FirecracerError) as exc:
        be.check()
    if host.check_pvm_nested().ok:
        assert "PVM-nested" in str(exc.value)
    elif os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert "guest.kernel" in str(exc.value)
    args = be.boot_args(spec.variants[0])
    assert "FC_NMT=detail" in args and "FC_JAVA_OPTIONS=\"-XX:+UseTransparentHugePages '-Da=b c'\"" in args


def _one_variant_backend(tmp_path: Path) -> JvmBackend:
    """A jvm backend for a one-variant study whose ``_prepare_variant`` the test replaces."""
    return JvmBackend(parse_spec('[study]\nname = "j"\nbackend = "jvm"\nstrategies = ["file"]\n'
                                 '[guest]\nkernel = "vmlinux"\nrootfs = "rootfs.ext4"\n[[variant]]\n'
                                 'name = "v"\n', tmp_path / "s.toml"))


@pytest.mark.parametrize("lab", [True, False])
def test_a_boot_lost_before_ready_is_retried_once_in_the_lab_only(
        tmp_path: Path, lab: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """The lab's TCG now and then loses a boot (JVM crash or hang before ready): one more boot there,
    recorded in ``boot_retries`` with the lost boot's logs kept; anywhere else the failure is the answer."""
    from firecracer.experiment.backend import RunFailed

    be = _one_variant_backend(tmp_path)
    spec = be.spec
    calls: list[int] = []

    def prepare(variant: object, workdir: Path, snap: Path) -> dict[str, object]:
        calls.append(1)
        (workdir / "boot").mkdir(exist_ok=True)
        (workdir / "boot" / "serial.log").write_text(f"boot {len(calls)}\n")
        if len(calls) < 3:
            raise RunFailed("ready", f"the guest died before it was ready (boot {len(calls)})")
        return {"boot_to_ready_ms": 1.0}

    be._prepare_variant = prepare  # type: ignore[method-assign]
    with pytest.raises(RunFailed, match=r"boot 2\)" if lab else r"boot 1\)"):
        be._prepare_with_lab_retry(spec.variants[0], tmp_path, tmp_path / "snap", lab)
    assert len(calls) == (2 if lab else 1)
    if lab:
        assert "booting once more" in capsys.readouterr().err
        assert (tmp_path / "boot-lost" / "serial.log").read_text() == "boot 1\n"
        calls[:] = [1]  # the next boot is lost, the one after it becomes ready
        facts = be._prepare_with_lab_retry(spec.variants[0], tmp_path, tmp_path / "snap", lab)
        assert facts == {"boot_to_ready_ms": 1.0,
                         "boot_retries": ["the guest died before it was ready (boot 2)"]}


@pytest.mark.parametrize(("phase", "why", "retried"), [
    ("snapshot", "the guest was lost after it was ready: it died: Firecracker exited; the guest said: "
                 "SIGSEGV (0xb) at pc=0x7f", True),
    ("collect", "no NMT report of the JVM: jcmd failed", False),
    ("warmup", "warm-up request 1 answered HTTP 500", False)])
def test_in_the_lab_only_a_guest_lost_before_the_snapshot_is_booted_again(
        tmp_path: Path, phase: str, why: str, retried: bool) -> None:
    """A JVM that TCG crashed after readiness measured nothing yet: one more boot. Our own failures
    (no NMT, a 500) are the answer at once, in the lab too."""
    from firecracer.experiment.backend import RunFailed
    from firecracer.experiment.backends.jvm import AFTER_READY

    assert why.startswith(AFTER_READY) == retried
    be = _one_variant_backend(tmp_path)
    spec = be.spec
    calls: list[int] = []

    def prepare(variant: object, workdir: Path, snap: Path) -> dict[str, object]:
        calls.append(1)
        if len(calls) == 1:
            (workdir / "smaps").mkdir()
            (workdir / "smaps" / "34.txt").write_text("the lost JVM's\n")
            (workdir / "nmt.txt").write_text("the lost JVM's\n")
            raise RunFailed(phase, why)
        return {"boot_to_ready_ms": 1.0}

    be._prepare_variant = prepare  # type: ignore[method-assign]
    if retried:
        facts = be._prepare_with_lab_retry(spec.variants[0], tmp_path, tmp_path / "snap", True)
        assert facts["boot_retries"] == [why] and len(calls) == 2
        assert not (tmp_path / "smaps").exists() and not (tmp_path / "nmt.txt").exists()  # not mixed in
    else:
        with pytest.raises(RunFailed, match=phase):
            be._prepare_with_lab_retry(spec.variants[0], tmp_path, tmp_path / "snap", True)
        assert len(calls) == 1
