"""Host probes on this machine: they must describe reality, not a hard-coded answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FC_BINARIES
from firecracer import host
from firecracer.fcversion import Version
from firecracer.vmm.binary import kernel_version, uffd_restore_problem


def test_kvm_probe_matches_dev_kvm() -> None:
    c = host.check_kvm()
    if not Path("/dev/kvm").exists():
        assert not c.ok and "/dev/kvm" in c.detail
    elif c.ok:
        assert "KVM_CREATE_VM" in c.detail


def test_pvm_probe_follows_cmdline_and_modules() -> None:
    c = host.check_pvm_nested()
    cmdline = Path("/proc/cmdline").read_text()
    modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    expected = "nested_pvm" in cmdline or any(line.startswith("kvm_pvm ") for line in modules.splitlines())
    assert c.ok is expected
    if expected:
        assert "Linux guests cannot boot here" in c.detail


def test_userfaultfd_probe_as_root() -> None:
    c = host.check_userfaultfd()
    if os.geteuid() == 0:
        assert c.ok, c.detail
    assert "vm.unprivileged_userfaultfd" in c.detail


def test_missing_for_lists_failed_checks() -> None:
    checks = {name: host.Capability(True, "fine") for name in
              ("arch", "kvm", "firecracker", "userfaultfd", "uffd_restore", "qemu", "disk", "java")}
    assert host.missing_for("uffd", checks) == []
    checks["userfaultfd"] = host.Capability(False, "refused")
    assert host.missing_for("uffd", checks) == ["userfaultfd"]
    assert host.missing_for("vm", checks) == []


@pytest.mark.parametrize(("version", "kernel", "why"), [
    ("1.7.0", "6.18.44-fc-v669", "host kernel 6.18"),
    ("1.7.0", "6.6.0", "Firecracker >= 1.8"),
    ("1.7.0", "6.1.0-57-amd64", None),    # the lab's L1 kernel: v1.7.0 Uffd restores worked there
    ("1.4.0", "6.1.0-57-amd64", "user-mode-only"),
    ("1.4.0", "5.10.0", None),
    ("1.8.0", "6.18.0", None),
    ("1.14.2", "6.18.44", None),
])
def test_uffd_restore_problem_by_version_and_kernel(version: str, kernel: str, why: str | None) -> None:
    problem = uffd_restore_problem(Version.parse(version), kernel)
    if why is None:
        assert problem is None
    else:
        assert problem is not None and why in problem and f"v{version}" in problem


def test_doctor_need_uffd_judges_the_binary_it_will_use() -> None:
    """v1.7.0 on a >= 6.6 host kernel: 'uffd' is not available (it said it was), v1.14 it is."""
    old = FC_BINARIES.get("1.7.0")
    if old is None:
        pytest.skip("no Firecracker v1.7.0 binary installed")
    if kernel_version() < (6, 6):
        pytest.skip(f"host kernel {os.uname().release} < 6.6: v1.7.0 Uffd restores work here")

    def doctor(binary: Path) -> tuple[int, dict[str, dict[str, object]]]:
        out = subprocess.run([sys.executable, "-m", "firecracer", "doctor", "--need", "uffd", "--json",
                              "--firecracker", str(binary)], capture_output=True, text=True, timeout=120,
                             check=False)
        return out.returncode, json.loads(out.stdout)

    rc, data = doctor(old)
    assert data["firecracker"]["ok"] is True
    assert data["uffd_restore"]["ok"] is False and "v1.7.0" in str(data["uffd_restore"]["detail"])
    assert "uffd_restore" in data["need"]["missing"]  # type: ignore[operator]
    assert rc == 1
    new = [p for v, p in FC_BINARIES.items() if Version.parse(v).at_least(1, 8)]
    if new:
        _, data = doctor(new[-1])
        assert data["uffd_restore"]["ok"] is True, data["uffd_restore"]
def test_huge_pages_probe_reads_the_real_pool() -> None:
    from firecracer import hugepages

    c = host.check_huge_pages()
    assert c.ok is hugepages.supported()
    if c.ok:
        info = {k: int(str(v)) for k, v in c.info.items()}
        assert info["available"] == max(0, info["free"] - info["reserved"])
        assert f"{info['available']} available" in c.detail and f"{info['total']} total" in c.detail
        assert "nr_hugepages" in c.detail and "a 1 GiB guest needs 512" in c.detail
