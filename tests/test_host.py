"""Host probes on this machine: they must describe reality, not a hard-coded answer."""

from __future__ import annotations

import os
from pathlib import Path

from firecracer import host


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
    checks = {name: host.Check(True, "fine") for name in
              ("arch", "kvm", "firecracker", "userfaultfd", "qemu", "disk", "java")}
    assert host.missing_for("uffd", checks) == []
    checks["userfaultfd"] = host.Check(False, "refused")
    assert host.missing_for("uffd", checks) == ["userfaultfd"]
    assert host.missing_for("vm", checks) == []


def test_huge_pages_probe_reads_the_real_pool() -> None:
    from firecracer.vmm import hugepages

    c = host.check_huge_pages()
    assert c.ok is hugepages.supported()
    if c.ok:
        info = {k: int(str(v)) for k, v in c.info.items()}
        assert info["available"] == max(0, info["free"] - info["reserved"])
        assert f"{info['available']} available" in c.detail and f"{info['total']} total" in c.detail
        assert "nr_hugepages" in c.detail and "a 1 GiB guest needs 512" in c.detail
