"""``firecracer demo``: the most complete study this host allows, and why that one.

Three modes, each a real run or real recorded data, labelled with where it came from:

* ``jvm``    — the JVM image in Firecracker with the uffd page server: needs KVM that boots Linux guests
  (not PVM-nested), Firecracker >= 1.8 (Uffd restores on host kernels >= 6.6) and a built image
  (``firecracer image kernel`` / ``image rootfs``).
* ``probe``  — the probe-guest study (bundled experiment spec, one repetition): needs usable KVM and any
  Firecracker that starts a vCPU here.
* ``sample`` — the bundled real recordings (made by ``firecracer emulate`` under QEMU TCG): needs nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from firecracer import host
from firecracer.errors import FirecracerError

MODES = ("jvm", "probe", "sample")

JVM_SPEC = """\
[study]
name = "demo-jvm"
description = "The demo service's first request after restore: default JVM vs THP + AppCDS"
backend = "jvm"
repetitions = 1
strategies = ["ondemand", "prefetch"]
timeout_s = 300

[guest]
mem_size_mib = 1024
vcpus = 2
kernel = "{kernel}"
rootfs = "{rootfs}"

[workload]
port = 8080
path = "/owners"
warmup_requests = 50

[[variant]]
name = "default"
description = "default JVM options"

[[variant]]
name = "thp-appcds"
description = "transparent huge pages and the image's AppCDS archive"
jvm_options = ["-XX:+UseTransparentHugePages", "-XX:SharedArchiveFile=/opt/app/app-cds.jsa"]
"""


@dataclass(frozen=True)
class Choice:
    """The mode to run and the sentence that says why (printed by the CLI)."""

    mode: str
    why: str


def choose_mode(firecracker: str | None = None, forced: str | None = None) -> Choice:
    """Pick the richest mode this host supports; ``forced`` must be supported or it is an error."""
    from firecracer.image.kernel import latest_kernel
    from firecracer.image.rootfs import latest_rootfs
    from firecracer.vmm.binary import Version

    kvm = host.check_kvm()
    pvm = host.check_pvm_nested()
    fc = host.check_firecracker(firecracker)
    kernel, rootfs = latest_kernel(), latest_rootfs()
    version = Version.parse(str(fc.info["version"])) if fc.ok else None

    jvm_missing = [why for ok, why in (
        (kvm.ok, f"KVM is not usable ({kvm.detail})"),
        (not pvm.ok, "KVM here is PVM-nested, where no Linux guest boots"),
        (fc.ok, "no Firecracker binary"),
        (version is None or version.at_least(1, 8), f"Firecracker v{version} is older than 1.8 "
                                                    "(Uffd restores fail on host kernels >= 6.6)"),
        (kernel is not None and rootfs is not None, "no built image ('firecracer image kernel' and "
                                                    "'firecracer image rootfs')"),
    ) if not ok]
    probe_missing = [why for ok, why in (
        (kvm.ok, f"KVM is not usable ({kvm.detail})"),
        (fc.ok, "no Firecracker binary ('firecracer install-firecracker FILE')"),
        (version is None or version.at_least(1, 5), f"Firecracker v{version} cannot start a vCPU on "
                                                    "every CPU (use >= 1.5)"),
    ) if not ok]
    options = {
        "jvm": Choice("jvm", "KVM boots Linux guests, Firecracker "
                      f"v{version} and a built image are here: the JVM study in Firecracker"),
        "probe": Choice("probe", "the JVM in Firecracker is out of reach ("
                        + "; ".join(jvm_missing) + "), but Firecracker runs the probe guest: "
                        "the probe-guest restore study"),
        "sample": Choice("sample", "no microVM can run here ("
                         + "; ".join(probe_missing or jvm_missing) + "): the bundled real recordings"),
    }
    available = [m for m, missing in (("jvm", jvm_missing), ("probe", probe_missing), ("sample", []))
                 if not missing]
    if forced:
        if forced not in available:
            missing = {"jvm": jvm_missing, "probe": probe_missing}.get(forced, [])
            raise FirecracerError(f"demo mode '{forced}' is not possible here: " + "; ".join(missing))
        return dataclasses.replace(options[forced], why=f"asked for with --mode {forced}")
    return options[available[0]]


def jvm_spec_text() -> str:
    """The JVM demo study for the newest built kernel and rootfs."""
    from firecracer.image.kernel import latest_kernel
    from firecracer.image.rootfs import latest_rootfs

    kernel, rootfs = latest_kernel(), latest_rootfs()
    if kernel is None or rootfs is None:
        raise FirecracerError("no built image: run 'firecracer image kernel' and 'firecracer image rootfs'")
    return JVM_SPEC.format(kernel=kernel, rootfs=rootfs)


def write_jvm_spec(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(jvm_spec_text())
    return dest
