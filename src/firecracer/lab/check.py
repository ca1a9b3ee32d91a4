"""``lab check``: boot L1, load kvm_amd, and ask the tool's own ``doctor`` inside what KVM offers.

The report says whether Firecracker can run in L1 (the KVM capabilities it requires, SVM with nested
paging, a Firecracker binary and whether it can serve Uffd restores there) and how long each stage
took, so a user sees at once whether the lab works on this machine and what it costs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from firecracer.lab.assets import LabError, Progress, cached_assets
from firecracer.lab.machine import LabMachine, LabResult, LabSpec, find_qemu

#: what runs in L1: the doctor's checks that matter there (not Java or QEMU: a JVM start under TCG alone
#: costs seconds)
_L1_PROBE = """
import json, os, sys
from firecracer import host
fc = sys.argv[1] or None
import numpy as np
rng = np.random.default_rng(7)
a = rng.integers(0, 2**40, 200_000, dtype=np.uint64)
s = a[np.argsort(a)]
vector = {"ok": bool(np.all(s[1:] >= s[:-1])), "detail": "numpy argsort of 200,000 uint64 (SIMD paths) "
          "under TCG", "info": {"numpy": np.__version__,
          "NPY_DISABLE_CPU_FEATURES": os.environ.get("NPY_DISABLE_CPU_FEATURES")}}
print(json.dumps({"kvm": host.check_kvm().as_dict(), "kvm_caps": host.check_kvm_caps().as_dict(),
                  "userfaultfd": host.check_userfaultfd().as_dict(),
                  "firecracker": host.check_firecracker(fc).as_dict(), "vector": vector}))
"""


@dataclass
class LabReport:
    """What ``lab check`` found: ``ok`` when Firecracker can run guests in L1."""

    ok: bool
    problems: list[str]
    qemu: str
    l1_kernel: str
    stages_s: dict[str, float]
    host_s: dict[str, float]
    l1: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "qemu": self.qemu, "l1_kernel": self.l1_kernel,
                "stages_s": self.stages_s, "host_s": self.host_s, "l1": self.l1}


def summarize_stages(res: LabResult) -> dict[str, float]:
    """L1 stage durations (s): kernel boot, modules (KVM's share apart), root mount, runner, command."""
    st = res.stages
    mods = sorted((t, n) for n, t in st.items() if n.startswith("module:"))
    out: dict[str, float] = {}
    if "init" in st:
        out["kernel_boot"] = st["init"]
    if mods and "init" in st:
        out["modules"] = mods[-1][0] - st["init"]
        prev = st["init"]
        kvm = 0.0
        for t, n in mods:
            if n in ("module:kvm", "module:kvm_amd", "module:ccp", "module:irqbypass"):
                kvm += t - prev
            prev = t
        out["kvm_amd_load"] = kvm
        if "root" in st:
            out["root_mount"] = st["root"] - mods[-1][0]
    if "chroot" in st and "runner" in st:
        out["runner_start"] = st["runner"] - st["chroot"]
    if "runner" in st and "exit" in st:
        out["command"] = st["exit"] - st["runner"]
    return {k: round(v, 3) for k, v in out.items()}


def run_check(spec: LabSpec, firecracker: str | None = None, progress: Progress | None = None) -> LabReport:
    """Boot L1 once with the doctor's KVM, userfaultfd and Firecracker checks inside; judge them."""
    qemu = find_qemu()
    version = subprocess.run([str(qemu), "--version"], capture_output=True, text=True, check=False,
                             timeout=20).stdout.splitlines()
    out = bytearray()
    errs = bytearray()
    argv = [sys.executable, "-c", _L1_PROBE, firecracker or ""]
    machine = LabMachine(spec, progress=progress)
    res = machine.run(argv, stdout=out.extend, stderr=errs.extend)
    kernel = ""
    assets = cached_assets()
    if assets is not None:
        kernel = f"{assets.kernel.package} {assets.kernel.version} ({assets.kernel.release})"
    if res.interrupted:
        raise LabError(f"lab check interrupted ({res.interrupted})")
    try:
        doctor: dict[str, Any] = json.loads(out.decode(errors="replace"))
    except ValueError:
        last = errs.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise LabError(f"lab check: doctor in L1 gave no JSON (exit {res.rc}): {last[0]}") from None
    problems = []
    for name, what in (("kvm", "/dev/kvm in L1"), ("kvm_caps", "KVM capabilities in L1"),
                       ("userfaultfd", "userfaultfd in L1"), ("firecracker", "Firecracker"),
                       ("vector", "vector instructions in L1 (TCG)")):
        c = doctor.get(name, {})
        if not c.get("ok"):
            problems.append(f"{what}: {c.get('detail', 'not reported')}")
    caps = doctor.get("kvm_caps", {}).get("info", {})
    virt = caps.get("cpu_virt", [])
    if "svm" not in virt or "npt" not in virt:
        lacks = "svm" if "svm" not in virt else "npt"
        problems.append(f"L1's CPU lacks {lacks} (QEMU CPU model {spec.cpu_model})")
    l1 = {"kvm": doctor.get("kvm", {}).get("detail"), "kvm_caps": caps,
          "userfaultfd": doctor.get("userfaultfd", {}).get("detail"),
          "firecracker": doctor.get("firecracker", {}).get("detail"),
          "firecracker_info": doctor.get("firecracker", {}).get("info", {}),
          "vector": doctor.get("vector", {}),
          "leftover": res.leftover}
    return LabReport(not problems, problems, version[0] if version else str(qemu), kernel,
                     summarize_stages(res), res.host_s, l1)
