"""What this host can do: KVM (and whether it is PVM-nested), userfaultfd, Firecracker, QEMU, Java.

Each probe returns a :class:`Check` and never raises; ``firecracer doctor`` renders them and decides
its exit status from the capability asked for (``--need``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from firecracer.errors import FirecracerError
from firecracer.paths import cache_dir
from firecracer.vmm.binary import find_firecracker, firecracker_version

KVM_CREATE_VM = 0xAE01
SYS_USERFAULTFD = 323  # x86_64
USERFAULTFD_IOC_NEW = 0xAA00
_CAP_NET_ADMIN = 12


@dataclass
class Check:
    """One capability: ``ok`` plus a human sentence in ``detail``; ``info`` holds raw facts."""

    ok: bool
    detail: str
    info: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_arch() -> Check:
    m = platform.machine()
    return Check(m == "x86_64", m if m == "x86_64" else f"{m}: only x86-64 is tested", {"machine": m})


def check_kvm() -> Check:
    """Open ``/dev/kvm`` and create (then close) one VM: the real test of usability."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Check(False, f"/dev/kvm: {exc.strerror}")
    try:
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
    except OSError as exc:
        return Check(False, f"/dev/kvm opens but KVM_CREATE_VM failed: {exc.strerror}")
    finally:
        os.close(fd)
    return Check(True, "/dev/kvm opens and KVM_CREATE_VM works")


def check_pvm_nested() -> Check:
    """PVM (pagetable-based virtualization) runs only PVM-aware guests: no Linux guest boots."""
    modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    cmdline = Path("/proc/cmdline").read_text() if Path("/proc/cmdline").exists() else ""
    has_mod = any(line.split(" ", 1)[0] == "kvm_pvm" for line in modules.splitlines())
    has_arg = "nested_pvm" in cmdline
    if has_mod or has_arg:
        why = ", ".join(w for w, c in (("kvm_pvm module loaded", has_mod),
                                       ("nested_pvm on the kernel command line", has_arg)) if c)
        return Check(True, f"yes ({why}): only the probe guest runs; Linux guests cannot boot here "
                           "(use QEMU TCG for image checks)", {"kvm_pvm": has_mod, "nested_pvm": has_arg})
    return Check(False, "no: KVM is hardware-assisted (or absent); Linux guests can boot",
                 {"kvm_pvm": False, "nested_pvm": False})


def check_userfaultfd() -> Check:
    """Try the syscall and ``/dev/userfaultfd``; report ``vm.unprivileged_userfaultfd``."""
    info: dict[str, object] = {}
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd >= 0:
        os.close(fd)
        info["syscall"] = True
    else:
        info["syscall"] = False
        info["syscall_error"] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    dev = Path("/dev/userfaultfd")
    info["dev"] = dev.exists()
    if dev.exists():
        try:
            dfd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                ufd = fcntl.ioctl(dfd, USERFAULTFD_IOC_NEW, os.O_CLOEXEC | os.O_NONBLOCK)
                os.close(ufd)
                info["dev_usable"] = True
            finally:
                os.close(dfd)
        except OSError as exc:
            info["dev_usable"] = False
            info["dev_error"] = exc.strerror
    sysctl = Path("/proc/sys/vm/unprivileged_userfaultfd")
    info["unprivileged_userfaultfd"] = sysctl.read_text().strip() if sysctl.exists() else None
    ok = bool(info["syscall"]) or bool(info.get("dev_usable"))
    dev_state = "usable" if info.get("dev_usable") else "absent" if not dev.exists() else "not usable"
    syscall_state = "ok" if info["syscall"] else f"refused ({info.get('syscall_error')})"
    parts = [f"syscall {syscall_state}", f"/dev/userfaultfd {dev_state}",
             f"vm.unprivileged_userfaultfd={info['unprivileged_userfaultfd']}"]
    return Check(ok, ", ".join(parts), info)


def check_firecracker(explicit: str | None = None) -> Check:
    try:
        path = find_firecracker(explicit)
        version = firecracker_version(path)
    except FirecracerError as exc:
        return Check(False, str(exc))
    note = ""
    if not version.at_least(1, 8):
        note = "; Uffd restores need Firecracker >= 1.8 on host kernels >= 6.6"
    return Check(True, f"{path}: v{version} (API generation {version.api_generation}){note}",
                 {"path": str(path), "version": str(version), "api_generation": version.api_generation})


def check_net_admin() -> Check:
    cap_eff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap_eff = int(line.split()[1], 16)
    ok = bool(cap_eff >> _CAP_NET_ADMIN & 1)
    tun = Path("/dev/net/tun").exists()
    return Check(ok, f"CAP_NET_ADMIN {'held' if ok else 'missing'} (tap devices, network namespaces); "
                     f"/dev/net/tun {'present' if tun else 'absent'}", {"cap": ok, "tun": tun})


def _version_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else ""


def check_qemu() -> Check:
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        return Check(False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    line = _version_line([exe, "--version"]) or "unknown version"
    return Check(True, f"{exe}: {line}", {"path": exe})


def check_java() -> Check:
    java, jcmd = shutil.which("java"), shutil.which("jcmd")
    if not java:
        return Check(False, "java not found (needed to analyse a local JVM; "
                            "apt-get install openjdk-17-jdk-headless)")
    line = _version_line([java, "-version"]) or "unknown version"
    if not jcmd:
        return Check(False, f"{java}: {line}, but jcmd is missing (needed for NMT)", {"java": java})
    return Check(True, f"{line}; jcmd at {jcmd}", {"java": java, "jcmd": jcmd})


def check_disk() -> Check:
    d = cache_dir()
    probe = d
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / 2**30
    return Check(free_gib >= 4, f"{free_gib:.1f} GiB free at {d} (an image build needs about 4 GiB)",
                 {"path": str(d), "free_bytes": usage.free})


def check_huge_pages() -> Check:
    """The 2 MiB hugetlbfs pool (``vm boot --huge-pages 2M``): what is free, how to reserve more."""
    from firecracer.vmm import hugepages

    try:
        ok, sentence, facts = hugepages.summary()
    except FirecracerError as exc:
        return Check(False, str(exc))
    return Check(ok, sentence, facts)


NEEDS: dict[str, tuple[str, ...]] = {
    "vm": ("arch", "kvm", "firecracker"),
    "uffd": ("arch", "kvm", "firecracker", "userfaultfd"),
    "image": ("arch", "qemu", "disk"),
    "analysis": ("java",),
}


def run_all(firecracker: str | None = None) -> dict[str, Check]:
    """Every probe, keyed as in ``doctor --json``."""
    return {
        "arch": check_arch(),
        "kvm": check_kvm(),
        "pvm_nested": check_pvm_nested(),
        "userfaultfd": check_userfaultfd(),
        "firecracker": check_firecracker(firecracker),
        "net_admin": check_net_admin(),
        "qemu": check_qemu(),
        "java": check_java(),
        "disk": check_disk(),
        "huge_pages": check_huge_pages(),
    }


def missing_for(need: str, checks: dict[str, Check]) -> list[str]:
    """Names of the checks that fail for capability ``need`` (empty means it is there)."""
    return [name for name in NEEDS[need] if not checks[name].ok]
