"""The lab's parts that need no QEMU: the initramfs writer, module metadata, .deb reading, the QEMU
command line, the environment handed to L1, and the runner's relay protocol (with a real process)."""

from __future__ import annotations

import io
import json
import lzma
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from firecracer.lab import inside
from firecracer.lab.assets import (
    Cpio,
    LabError,
    _deb_data,
    modinfo,
    resolve_order,
    unpack_kernel_deb,
)
from firecracer.lab.machine import LAB_HOST, LabSpec, lab_env, numpy_without_avx2, qemu_argv


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """Parse a newc archive back: name -> (mode, data, rdev)."""
    out = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos: pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], body, (f[9], f[10]))


def test_cpio_newc_round_trip() -> None:
    c = Cpio()
    c.dir("bin")
    c.file("bin/busybox", b"\x7fELF" + b"x" * 5, 0o755)
    c.symlink("bin/sh", "busybox")
    c.chardev("dev/console", 5, 1)
    got = _read_newc(c.finish())
    assert stat.S_ISDIR(got["bin"][0])
    assert got["bin/busybox"][1] == b"\x7fELF" + b"x" * 5 and got["bin/busybox"][0] & 0o777 == 0o755
    assert stat.S_ISLNK(got["bin/sh"][0]) and got["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(got["dev/console"][0]) and got["dev/console"][2] == (5, 1)


def _elf_module(info: dict[str, str]) -> bytes:
    """A minimal ELF64 relocatable with a ``.modinfo`` section (what modinfo() reads)."""
    modinfo_data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in info.items())
    shstr = b"\0.modinfo\0.shstrtab\0"
    body = modinfo_data + shstr
    shoff = 64 + len(body)
    shoff += -shoff % 8
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    def sh(name: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)
    sections = sh(0, 0, 0) + sh(1, 64, len(modinfo_data)) + sh(10, 64 + len(modinfo_data), len(shstr))
    return bytes(header) + body + b"\0" * (shoff - 64 - len(body)) + sections


def test_modinfo_reads_name_and_depends() -> None:
    data = _elf_module({"name": "kvm_amd", "depends": "kvm,ccp", "license": "GPL"})
    info = modinfo(data, "kvm-amd.ko")
    assert info["depends"] == "kvm,ccp" and info["name"] == "kvm_amd"
    with pytest.raises(LabError, match="not an ELF64"):
        modinfo(b"garbage", "x.ko")
    with pytest.raises(LabError, match="truncated"):
        modinfo(data[:80], "x.ko")


def test_resolve_order_puts_dependencies_first_and_skips_builtins() -> None:
    deps = {"kvm_amd": ["kvm", "ccp"], "kvm": ["irqbypass"], "irqbypass": [], "ccp": [],
            "9p": ["9pnet", "netfs"], "9pnet": [], "netfs": []}
    order = resolve_order(["9p", "kvm-amd"], deps, builtin={"netfs"})
    assert order == ["9pnet", "9p", "irqbypass", "kvm", "ccp", "kvm_amd"]
    with pytest.raises(LabError, match="neither built into"):
        resolve_order(["vhost"], deps, set())
    with pytest.raises(LabError, match="cycle"):
        resolve_order(["a"], {"a": ["b"], "b": ["a"]}, set())


def _make_deb(path: Path, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo("./" + name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", lzma.compress(b"")),
               (b"data.tar.xz", buf.getvalue())]
    with path.open("wb") as f:
        f.write(b"!<arch>\n")
        for name, data in members:
            f.write(name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
                    + str(len(data)).encode().ljust(10) + b"`\n")
            f.write(data + (b"\n" if len(data) % 2 else b""))


def test_kernel_deb_unpacks_only_what_the_lab_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firecracer.lab import assets

    monkeypatch.setattr(assets, "MODULES", ("kvm_amd",))
    kmod = "lib/modules/6.1.0-9-amd64/kernel"
    deb = tmp_path / "linux-image-test.deb"
    _make_deb(deb, {
        "boot/vmlinuz-6.1.0-9-amd64": b"bzImage",
        "boot/config-6.1.0-9-amd64": b"CONFIG_KVM=m\n",
        "lib/modules/6.1.0-9-amd64/modules.builtin": b"kernel/drivers/crypto/ccp/ccp.ko\n",
        f"{kmod}/arch/x86/kvm/kvm-amd.ko": _elf_module({"name": "kvm_amd", "depends": "kvm,ccp"}),
        f"{kmod}/arch/x86/kvm/kvm.ko.xz": lzma.compress(_elf_module({"name": "kvm", "depends": ""})),
        f"{kmod}/drivers/unrelated.ko": _elf_module({"name": "unrelated", "depends": ""}),
    })
    k = unpack_kernel_deb(deb, tmp_path / "k", "linux-image-test", "1")
    assert k.release == "6.1.0-9-amd64" and k.vmlinuz.read_bytes() == b"bzImage"
    assert k.load_order == ["kvm", "kvm_amd"]  # ccp is built in, unrelated not needed
    assert sorted(p.name for p in k.modules_dir.iterdir()) == ["kvm.ko", "kvm_amd.ko"]
    assert (k.modules_dir / "kvm.ko").read_bytes()[:4] == b"\x7fELF"  # decompressed
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(LabError, match="not a Debian package"):
        _deb_data(bad)
    trunc = tmp_path / "trunc.deb"
    trunc.write_bytes(deb.read_bytes()[:200])
    with pytest.raises(LabError, match=r"truncated|no data\.tar"):
        _deb_data(trunc)


def test_qemu_argv_is_tcg_svm_with_shares_and_escaped_commas(tmp_path: Path) -> None:
    from firecracer.lab.assets import Assets, L1Kernel

    k = L1Kernel(tmp_path / "k", "6.1", "linux-image", "1")
    a = Assets(k, tmp_path / "initrd.gz", tmp_path / "busybox")
    share = tmp_path / "we,ird"
    argv = qemu_argv(Path("qemu"), a, LabSpec(mem_mib=3000, cpus=2, shares=(share,)), tmp_path / "run",
                     tmp_path / "ctl.sock", ["share0"])
    joined = " ".join(argv)
    assert "tcg,thread=multi" in joined and "EPYC,+svm,+npt" in joined and "-m 3000M" in joined
    assert "path=/,security_model=none,readonly=on" in joined
    assert f"path={tmp_path}/we,,ird,security_model=passthrough" in joined
    assert f"lab.dir={tmp_path / 'run'}" in joined and "-no-reboot" in argv


def test_lab_env_drops_session_variables_and_marks_the_lab() -> None:
    env = lab_env({"FIRECRACKER": "/x/fc", "PATH": "/bin", "SSH_AUTH_SOCK": "/tmp/a", "DISPLAY": ":0",
                   "PYTEST_CURRENT_TEST": "t", "VIRTUAL_ENV": "/venv"})
    assert env == {"FIRECRACKER": "/x/fc", "PATH": "/bin", "VIRTUAL_ENV": "/venv", "FIRECRACER_LAB": LAB_HOST,
                   "NPY_DISABLE_CPU_FEATURES": numpy_without_avx2()}


def test_lab_env_keeps_numpy_off_avx2_unless_the_caller_says() -> None:
    """TCG's AVX2 sorts wrong; numpy in L1 must use its SSE kernels (checked with the real numpy)."""
    env = lab_env({"PATH": os.environ["PATH"]})
    out = subprocess.run([sys.executable, "-c", "import numpy as np; np.show_runtime()"], env=env,
                         capture_output=True, text=True, check=True).stdout
    found = out.split("'found':", 1)[1].split("]", 1)[0]
    assert "AVX2" not in found and "X86_V3" not in found, out
    assert lab_env({"NPY_DISABLE_CPU_FEATURES": ""})["NPY_DISABLE_CPU_FEATURES"] == ""


class _Host:
    """The host end of the control port, on a socketpair: collects frames, sends KILL frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def frames(self, until: bytes, timeout: float = 30) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        self.sock.settimeout(timeout)
        while True:
            while len(self.buf) >= inside.FRAME.size:
                kind, n = inside.FRAME.unpack_from(self.buf)
                if len(self.buf) < inside.FRAME.size + n:
                    break
                out.append((kind, self.buf[inside.FRAME.size:inside.FRAME.size + n]))
                self.buf = self.buf[inside.FRAME.size + n:]
                if kind == until:
                    return out
            data = self.sock.recv(65536)
            assert data, "port closed"
            self.buf += data


def test_runner_relays_stdout_stderr_and_exit(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    port = inside.Port.__new__(inside.Port)
    port.fd, port._inbuf = b.fileno(), b""
    job = {"argv": [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); "
                    "open('made.txt', 'w').write('x'); sys.exit(3)"], "cwd": str(tmp_path),
           "env": {"PATH": os.environ["PATH"]}}
    facts = inside.run(job, port)
    port.send_json(inside.EXIT, facts)
    frames = _Host(a).frames(inside.EXIT)
    out = b"".join(p for k, p in frames if k == inside.STDOUT)
    err = b"".join(p for k, p in frames if k == inside.STDERR)
    assert (out, err) == (b"out\n", b"err\n")
    assert json.loads(frames[-1][1]) == {"rc": 3, "signal": None}
    assert (tmp_path / "made.txt").exists()
    a.close()
    b.close()


def test_runner_forwards_a_signal_to_the_command_group(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    port = inside.Port.__new__(inside.Port)
    port.fd, port._inbuf = b.fileno(), b""
    job = {"argv": ["/bin/sh", "-c", "echo ready; sleep 300 & wait"], "cwd": str(tmp_path), "env": {}}
    host = _Host(a)

    def signal_soon() -> None:
        host.frames(inside.STDOUT)
        a.sendall(inside.encode(inside.KILL, json.dumps({"signal": int(signal.SIGTERM)}).encode()))

    import threading

    t = threading.Thread(target=signal_soon)
    t.start()
    t0 = time.monotonic()
    facts = inside.run(job, port)
    t.join()
    assert facts == {"rc": 128 + signal.SIGTERM, "signal": "SIGTERM"}
    assert time.monotonic() - t0 < 20
    a.close()
    b.close()


def test_runner_reports_a_missing_command(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    port = inside.Port.__new__(inside.Port)
    port.fd, port._inbuf = b.fileno(), b""
    facts = inside.run({"argv": ["/no/such/program"], "cwd": str(tmp_path), "env": {}}, port)
    assert facts["rc"] == 127
    port.send_json(inside.EXIT, facts)
    err = b"".join(p for k, p in _Host(a).frames(inside.EXIT) if k == inside.STDERR)
    assert b"cannot run '/no/such/program' in L1" in err
    a.close()
    b.close()


def test_lab_run_refuses_a_missing_qemu(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "firecracer", "lab", "run", "--", "true"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert res.returncode == 1
    assert "qemu-system-x86_64 not found" in res.stderr and "Traceback" not in res.stderr


_LOST = """
import pytest
@pytest.fixture
def said():
    yield
    print(WORD)
def test_lost(said):
    assert 0, "vsock: No such file or directory"
def test_fine():
    pass
"""


@pytest.mark.parametrize(("word", "other_failure", "rerun"), [
    ("the JVM's guest died during this test: Firecracker exited; the guest said: SIGSEGV (0xb) at pc=0x7f",
     False, True),
    ("the JVM's guest died during this test: Firecracker exited; the guest said: "
     "rcu: INFO: rcu_sched detected stalls on CPUs/tasks", False, True),
    ("the JVM's guest died during this test: Firecracker exited; the guest said: Kernel panic", False, False),
    ("", False, False),
    ("the JVM's guest died during this test: Firecracker exited; the guest said: SIGILL (0x4) at pc=0x1",
     True, False)])
def test_guest_vm_tests_rerun_in_the_lab_only_when_tcg_broke_every_failure(
        tmp_path: Path, word: str, other_failure: bool, rerun: bool) -> None:
    """tests/lab reruns the guest-VM tests once only if each failed test met a guest whose console shows
    TCG's crash (a JVM fatal signal, a stalled vCPU); one failure of ours, or a panic, is the answer."""
    from tests.lab.test_lab import _lost_to_tcg

    src = f"WORD = {word!r}\n" + _LOST
    if other_failure:
        src += "def test_ours():\n    assert 1 == 2\n"
    (tmp_path / "test_g.py").write_text(src)
    junit = tmp_path / "j.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                    "junit_logging=system-out", f"--junitxml={junit}", str(tmp_path / "test_g.py")],
                   capture_output=True, cwd=tmp_path, timeout=120, check=False)
    lost = _lost_to_tcg(junit)
    assert (lost is not None) == rerun, lost
    if rerun:
        assert lost is not None and "Firecracker exited" in lost
