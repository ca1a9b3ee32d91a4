"""What this host can do: KVM (and whether it is PVM-nested), userfaultfd, Firecracker, QEMU, Java.

Each probe returns a :class:`Capability` and never raises; ``firecracer doctor`` renders them and decides
its exit status from the capability asked for (``--need``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from firecracer import hugepages
from firecracer.errors import FirecracerError
from firecracer.fcversion import Version, firecracker_version
from firecracer.lab.assets import LabError, cached_assets, current_kernel_package
from firecracer.lab.machine import DEFAULT_MEM_MIB, mem_available_mib
from firecracer.paths import cache_dir
from firecracer.vmm.binary import find_firecracker, uffd_restore_problem

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
#: the KVM capabilities Firecracker refuses to start without (x86-64: ``Kvm::DEFAULT_CAPABILITIES`` in
#: its src/vmm/src/arch/x86_64/kvm.rs), with their numbers from linux/kvm.h
FIRECRACKER_KVM_CAPS = {"IRQCHIP": 0, "USER_MEMORY": 3, "SET_TSS_ADDR": 4, "EXT_CPUID": 7, "MP_STATE": 14,
                        "IRQFD": 32, "PIT2": 33, "PIT_STATE2": 35, "IOEVENTFD": 36, "ADJUST_CLOCK": 39,
                        "VCPU_EVENTS": 41, "DEBUGREGS": 50, "XSAVE": 55, "XCRS": 56}
SYS_USERFAULTFD = 323  # x86_64
USERFAULTFD_IOC_NEW = 0xAA00
_CAP_NET_ADMIN = 12


@dataclass
class Capability:
    """One capability: ``ok`` plus a human sentence in ``detail``; ``info`` holds raw facts."""

    ok: bool
    detail: str
    info: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_arch() -> Capability:
    m = platform.machine()
    return Capability(m == "x86_64", m if m == "x86_64" else f"{m}: only x86-64 is tested", {"machine": m})


def check_kvm() -> Capability:
    """Open ``/dev/kvm`` and create (then close) one VM: the real test of usability."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Capability(False, f"/dev/kvm: {exc.strerror}")
    try:
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
    except OSError as exc:
        return Capability(False, f"/dev/kvm opens but KVM_CREATE_VM failed: {exc.strerror}")
    finally:
        os.close(fd)
    return Capability(True, "/dev/kvm opens and KVM_CREATE_VM works")


def check_kvm_caps() -> Capability:
    """The KVM API version and every capability Firecracker requires (``Missing KVM capabilities``)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Capability(False, f"/dev/kvm: {exc.strerror}")
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        caps = {name: fcntl.ioctl(fd, KVM_CHECK_EXTENSION, num) > 0
                for name, num in FIRECRACKER_KVM_CAPS.items()}
    except OSError as exc:
        return Capability(False, f"/dev/kvm: KVM_CHECK_EXTENSION failed: {exc.strerror}")
    finally:
        os.close(fd)
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    nested = {}
    for mod in ("kvm_amd", "kvm_intel"):
        with contextlib.suppress(OSError):
            nested[mod] = Path(f"/sys/module/{mod}/parameters/nested").read_text().strip()
    missing = [n for n, ok in caps.items() if not ok]
    info: dict[str, object] = {"api_version": api, "caps": caps, "missing": missing,
                               "cpu_virt": sorted(flags & {"svm", "npt", "vmx", "ept"}), "nested": nested}
    if missing:
        needs = ", ".join("KVM_CAP_" + m for m in missing)
        return Capability(False, f"KVM API {api}; Firecracker needs {needs}", info)
    return Capability(True, f"KVM API {api}; all {len(caps)} capabilities Firecracker needs", info)


def check_pvm_nested() -> Capability:
    """PVM (pagetable-based virtualization) runs only PVM-aware guests: no Linux guest boots."""
    modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    cmdline = Path("/proc/cmdline").read_text() if Path("/proc/cmdline").exists() else ""
    has_mod = any(line.split(" ", 1)[0] == "kvm_pvm" for line in modules.splitlines())
    has_arg = "nested_pvm" in cmdline
    if has_mod or has_arg:
        why = ", ".join(w for w, c in (("kvm_pvm module loaded", has_mod),
                                       ("nested_pvm on the kernel command line", has_arg)) if c)
        return Capability(True, f"yes ({why}): only the probe guest runs; Linux guests cannot boot here "
                                "(the lab runs them: 'firecracer lab run -- …')",
                          {"kvm_pvm": has_mod, "nested_pvm": has_arg})
    return Capability(False, "no: KVM is hardware-assisted (or absent); Linux guests can boot",
                      {"kvm_pvm": False, "nested_pvm": False})


def check_userfaultfd() -> Capability:
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
    return Capability(ok, ", ".join(parts), info)


def check_firecracker(explicit: str | None = None) -> Capability:
    try:
        path = find_firecracker(explicit)
        version = firecracker_version(path)
    except FirecracerError as exc:
        return Capability(False, str(exc))
    return Capability(True, f"{path}: v{version} (API generation {version.api_generation})",
                      {"path": str(path), "version": str(version), "api_generation": version.api_generation})


def check_uffd_restore(firecracker: Capability) -> Capability:
    """Can the Firecracker that ``firecracker`` (a :func:`check_firecracker` result) found restore through a
    userfaultfd page server on this host kernel? Judged by :func:`uffd_restore_problem`."""
    if not firecracker.ok:
        return Capability(False, "no usable Firecracker binary (see the firecracker check)")
    version = Version.parse(str(firecracker.info["version"]))
    problem = uffd_restore_problem(version)
    info: dict[str, object] = {"version": str(version), "kernel": platform.release()}
    if problem:
        return Capability(False, problem, info)
    return Capability(True, f"Firecracker v{version} registers userfaultfd on host kernel "
                                 f"{platform.release()}", info)


def check_net_admin() -> Capability:
    cap_eff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap_eff = int(line.split()[1], 16)
    ok = bool(cap_eff >> _CAP_NET_ADMIN & 1)
    tun = Path("/dev/net/tun").exists()
    return Capability(ok, f"CAP_NET_ADMIN {'held' if ok else 'missing'} (tap devices, network namespaces); "
                          f"/dev/net/tun {'present' if tun else 'absent'}", {"cap": ok, "tun": tun})


def _version_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else ""


def check_qemu() -> Capability:
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        return Capability(False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    line = _version_line([exe, "--version"]) or "unknown version"
    return Capability(True, f"{exe}: {line}", {"path": exe})


def check_java() -> Capability:
    java, jcmd = shutil.which("java"), shutil.which("jcmd")
    if not java:
        return Capability(False, "java not found (needed to analyse a local JVM; "
                                 "apt-get install openjdk-17-jdk-headless)")
    line = _version_line([java, "-version"]) or "unknown version"
    if not jcmd:
        return Capability(False, f"{java}: {line}, but jcmd is missing (needed for NMT)", {"java": java})
    return Capability(True, f"{line}; jcmd at {jcmd}", {"java": java, "jcmd": jcmd})


def check_disk() -> Capability:
    d = cache_dir()
    probe = d
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / 2**30
    return Capability(free_gib >= 4, f"{free_gib:.1f} GiB free at {d} (an image build needs about 4 GiB)",
                      {"path": str(d), "free_bytes": usage.free})


def check_linux_guests() -> Capability:
    """Whether Firecracker can boot Linux guests on this host's KVM (bare metal, or inside the lab)."""
    kvm = check_kvm()
    if not kvm.ok:
        return Capability(False, f"KVM is not usable ({kvm.detail})")
    if check_pvm_nested().ok:
        return Capability(False, "this host's KVM is PVM-nested, where no Linux guest boots")
    caps = check_kvm_caps()
    if not caps.ok:
        return Capability(False, caps.detail)
    where = " (in the lab's L1)" if in_lab() else ""
    return Capability(True, f"KVM with the capabilities Firecracker needs{where}")


def in_lab() -> bool:
    """True inside the lab's L1 (``firecracer lab run`` sets ``FIRECRACER_LAB``)."""
    return bool(os.environ.get("FIRECRACER_LAB"))


def host_label() -> str:
    """What a recording says about where it was made: the lab, or this kernel's KVM."""
    lab = os.environ.get("FIRECRACER_LAB")
    if lab:
        return lab
    return "PVM-nested KVM" if check_pvm_nested().ok else "KVM"


def timings_comparable_to_kvm() -> bool:
    """Lab timings are TCG timings: never compare them with KVM's."""
    return not in_lab()


def check_lab() -> Capability:
    """Whether ``firecracer lab`` can start here (without booting it: ``lab check`` does that)."""
    if not shutil.which("qemu-system-x86_64"):
        return Capability(False, "needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
    avail = mem_available_mib()
    if avail < 3072 + 256:
        return Capability(False, f"only {avail} MiB of RAM available; the lab's L1 needs at least 3 GiB")
    assets = cached_assets()
    if assets is not None:
        kernel = f"L1 kernel {assets.kernel.package} {assets.kernel.version} cached"
    else:
        try:
            pkg, ver = current_kernel_package()
        except LabError as exc:
            return Capability(False, f"no L1 kernel cached and none can be fetched: {exc}")
        kernel = f"L1 kernel {pkg} {ver} fetched on first use"
    mem = min(DEFAULT_MEM_MIB, avail - 256)
    return Capability(True, f"QEMU TCG with emulated AMD SVM; {kernel}; {avail} MiB RAM available "
                            f"(L1 gets {mem} MiB); 'firecracer lab check' boots it",
                      {"mem_available_mib": avail, "assets_cached": assets is not None})
def check_huge_pages() -> Capability:
    """The 2 MiB hugetlbfs pool (``vm boot --huge-pages 2M``): what is free, how to reserve more."""
    try:
        ok, sentence, facts = hugepages.summary()
    except FirecracerError as exc:
        return Capability(False, str(exc))
    return Capability(ok, sentence, facts)


NEEDS: dict[str, tuple[str, ...]] = {
    "vm": ("arch", "kvm", "firecracker"),
    "uffd": ("arch", "kvm", "firecracker", "userfaultfd", "uffd_restore"),
    "image": ("arch", "qemu", "disk"),
    "analysis": ("java",),
    "lab": ("arch", "qemu", "lab"),
}


def run_all(firecracker: str | None = None) -> dict[str, Capability]:
    """Every probe, keyed as in ``doctor --json`` (a check may build on an earlier one's result)."""
    checks = {
        "arch": check_arch(),
        "kvm": check_kvm(),
        "kvm_caps": check_kvm_caps(),
        "linux_guests": check_linux_guests(),
        "pvm_nested": check_pvm_nested(),
        "userfaultfd": check_userfaultfd(),
        "firecracker": check_firecracker(firecracker),
    }
    return {
        **checks,
        "uffd_restore": check_uffd_restore(checks["firecracker"]),
        "net_admin": check_net_admin(),
        "qemu": check_qemu(),
        "lab": check_lab(),
        "java": check_java(),
        "disk": check_disk(),
        "huge_pages": check_huge_pages(),
    }


def missing_for(need: str, checks: dict[str, Capability]) -> list[str]:
    """Names of the checks that fail for capability ``need`` (empty means it is there)."""
    return [name for name in NEEDS[need] if not checks[name].ok]
