"""``firecracer demo``: the most complete study this host allows, and why that one.

Four modes, each a real run or real recorded data, labelled with where it came from:

* ``jvm``     — the JVM image in Firecracker on this host's KVM: boot, warm up, collect memmap + NMT over
  vsock, snapshot, restore through the uffd page server (ondemand, then prefetch from the recorded
  trace), the first request's pages attributed, the viewer written. Needs KVM that boots Linux guests,
  a Firecracker that can serve Uffd restores on this kernel and a built image.
* ``jvm-lab`` — the same, inside the lab's L1 (QEMU TCG, emulated SVM) when this host's KVM cannot boot
  Linux guests (PVM-nested, none). Real Firecracker, real traces; TCG timings.
* ``probe``   — the probe-guest study (bundled experiment spec, one repetition): any usable KVM and a
  Firecracker that starts a vCPU here.
* ``sample``  — the bundled real recordings: needs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer import host
from firecracer.analysis import attribute, load_recording
from firecracer.analysis.tables import totals
from firecracer.errors import FirecracerError
from firecracer.experiment.report import write_report
from firecracer.experiment.runner import run_study
from firecracer.experiment.spec import load_spec
from firecracer.experiment.store import ResultStore
from firecracer.fcversion import Version
from firecracer.image.kernel import latest_kernel
from firecracer.image.rootfs import latest_rootfs
from firecracer.lab.machine import LabSpec
from firecracer.placement import run_cli
from firecracer.uffd.trace import FLAG_FAULTING, load_trace
from firecracer.viz.html import ViewOptions
from firecracer.viz.html import write_report as write_view
from firecracer.vmm.binary import uffd_restore_problem

MODES = ("jvm", "jvm-lab", "probe", "sample")

JVM_SPEC = """\
[study]
name = "demo-jvm"
description = "The demo service's first request after restore: default JVM vs THP + AppCDS"
backend = "jvm"
# one repetition of each variant × strategy: 2 × 2 = 4 runs (the prefetch runs first record an ondemand trace)
repetitions = 1
strategies = ["ondemand", "prefetch"]
timeout_s = 600

[guest]
mem_size_mib = 1024
{vcpus_line}
kernel = "{kernel}"
rootfs = "{rootfs}"

[workload]
port = 8080
path = "/owners/1"
warmup_requests = 50
ready_timeout_s = 600

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


@dataclass
class DemoResult:
    """What a demo produced; ``summary`` holds the few numbers that matter (see :func:`jvm_summary`)."""

    mode: str
    host: str
    recordings: list[Path] = field(default_factory=list)
    view: Path | None = None
    report: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "host": self.host, "recordings": [str(p) for p in self.recordings],
                "view": str(self.view) if self.view else None,
                "report": str(self.report) if self.report else None, "summary": self.summary}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DemoResult:
        return cls(str(data["mode"]), str(data["host"]), [Path(p) for p in data.get("recordings", [])],
                   Path(data["view"]) if data.get("view") else None,
                   Path(data["report"]) if data.get("report") else None, dict(data.get("summary") or {}))


def _uffd_capable(version_text: str | None, kernel_release: str) -> str | None:
    """Why this Firecracker cannot serve Uffd restores on that kernel (None: it can)."""
    if version_text is None:
        return "no Firecracker binary ('firecracer install-firecracker FILE')"
    return uffd_restore_problem(Version.parse(version_text), kernel_release)


def choose_mode(firecracker: str | None = None, forced: str | None = None) -> Choice:
    """Pick the richest mode this host supports; ``forced`` must be supported or it is an error."""
    kvm = host.check_kvm()
    native = host.check_linux_guests()
    fc = host.check_firecracker(firecracker)
    version_text = str(fc.info["version"]) if fc.ok else None
    image_missing = (latest_kernel() is None or latest_rootfs() is None)
    image_why = "no built image ('firecracer image kernel' and 'firecracer image rootfs')"

    jvm_missing = [w for w in (
        None if native.ok else native.detail,
        _uffd_capable(version_text, os.uname().release),
        image_why if image_missing else None,
    ) if w]
    lab_missing: list[str] = []
    if not native.ok and not host.in_lab():
        lab = host.check_lab()
        lab_missing = [w for w in (
            None if lab.ok else f"the lab cannot run: {lab.detail}",
            _uffd_capable(version_text, "6.1.0"),  # L1 runs Debian's 6.1 kernel
            image_why if image_missing else None,
        ) if w]
    else:
        lab_missing = ["this host's KVM boots Linux guests itself" if native.ok else "already in the lab"]
    version = Version.parse(version_text) if version_text else None
    probe_missing = [w for ok, w in (
        (kvm.ok, f"KVM is not usable ({kvm.detail})"),
        (fc.ok, "no Firecracker binary ('firecracer install-firecracker FILE')"),
        (version is None or version.at_least(1, 5), f"Firecracker v{version} cannot start a vCPU on "
                                                    "every CPU (use >= 1.5)"),
    ) if not ok]
    options = {
        "jvm": Choice("jvm", f"KVM boots Linux guests, Firecracker v{version} and a built image are here: "
                             "the JVM study in Firecracker"),
        "jvm-lab": Choice("jvm-lab", "; ".join(jvm_missing[:1]) + ": the JVM study runs in real Firecracker "
                                     "inside the lab (QEMU TCG, emulated SVM; TCG timings, real counts)"),
        "probe": Choice("probe", "the JVM in Firecracker is out of reach ("
                        + "; ".join(dict.fromkeys(jvm_missing + lab_missing[:1])) + "), but Firecracker runs "
                        "the probe guest: the probe-guest restore study"),
        "sample": Choice("sample", "no microVM can run here ("
                         + "; ".join(probe_missing or jvm_missing) + "): the bundled real recordings"),
    }
    missing = {"jvm": jvm_missing, "jvm-lab": lab_missing, "probe": probe_missing, "sample": []}
    available = [m for m in MODES if not missing[m]]
    if forced:
        if forced not in available:
            raise FirecracerError(f"demo mode '{forced}' is not possible here: " + "; ".join(missing[forced]))
        return dataclasses.replace(options[forced], why=f"asked for with --mode {forced}")
    return options[available[0]]


def jvm_spec_text() -> str:
    """The JVM demo study for the newest built kernel and rootfs."""
    kernel, rootfs = latest_kernel(), latest_rootfs()
    if kernel is None or rootfs is None:
        raise FirecracerError("no built image: run 'firecracer image kernel' and 'firecracer image rootfs'")
    vcpus = ("# one vCPU in the lab: L2 on two of L1's TCG threads loses guests now and then (docs/lab.md)\n"
             "vcpus = 1") if host.in_lab() else "vcpus = 2"
    return JVM_SPEC.format(kernel=kernel, rootfs=rootfs, vcpus_line=vcpus)


def write_jvm_spec(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(jvm_spec_text())
    return dest


def _trace_counts(rundir: Path) -> dict[str, Any]:
    tr = load_trace(rundir / "trace.npz")
    faults = int(((tr.flags & FLAG_FAULTING) != 0).sum())
    return {"pages": len(tr), "mib": round(len(tr) * tr.page_size / 2**20, 1), "faults": faults,
            "page_size": tr.page_size}


def jvm_summary(results: Path) -> tuple[dict[str, Any], list[Path]]:
    """Per variant: the ondemand restore's pages/MiB/faults and attributed share, prefetch's faults."""
    out: dict[str, Any] = {"variants": {}}
    recordings: list[Path] = []
    with ResultStore.open(results) as store:
        records = store.runs()
    failed = [r for r in records if not r.ok]
    out["runs"] = len(records)
    out["failed"] = [f"{r.run_id}: {r.reason}" for r in failed]
    for r in records:
        if not r.ok:
            continue
        rundir = results / "runs" / r.run_id
        if not (rundir / "trace.npz").exists():
            continue
        recordings.append(rundir)
        v = out["variants"].setdefault(r.variant, {})
        counts = _trace_counts(rundir)
        if r.strategy == "ondemand":
            v["ondemand"] = counts
            try:
                t = totals(attribute(load_recording(rundir)))
                v["attributed_pct"] = t.get("attributed_pct")
            except FirecracerError as exc:
                v["attribution_error"] = str(exc)
        else:
            v[r.strategy.split(":", 1)[0]] = counts
    return out, recordings


def run_jvm(out: Path, firecracker: str | None,
            on_event: Callable[[Any], None] | None = None) -> DemoResult:
    """The JVM study on this host's KVM (natively, or as the inner half of ``jvm-lab``)."""
    spec_path = write_jvm_spec(out / "jvm-study.toml")
    spec = load_spec(spec_path)
    if firecracker:
        spec = dataclasses.replace(spec, firecracker=firecracker)
    results = out / "results-jvm"
    run_study(spec, results, on_event=on_event)
    report = write_report(results, out / "jvm-report.html")
    summary, recordings = jvm_summary(results)
    ondemand = [p for p in recordings if p.name.split(".")[1:2] == ["ondemand"]]
    view = None
    if ondemand:
        pick = sorted(ondemand, key=lambda p: (not p.name.startswith("default."), p.name))[:2]
        view = write_view([load_recording(p) for p in pick], out / "view.html",
                          ViewOptions(title="firecracer demo: the JVM's first request after restore"),
                          labels=list[str | None](p.name for p in pick))
    return DemoResult("jvm", host.host_label(), recordings, view, Path(report), summary)


def run_jvm_in_lab(out: Path, firecracker: str | None, *, mem_mib: int = 8192,
                   progress: Callable[[str], None] | None = None,
                   stderr: Callable[[bytes], None] | None = None) -> DemoResult:
    """``demo --mode jvm`` inside one L1; its JSON (paths valid here: ``out`` is shared) comes back."""
    out = out.resolve()
    args = ["demo", "--mode", "jvm", "--json", "--no-browser", "-o", str(out)]
    if firecracker:
        args += ["--firecracker", str(Path(firecracker).resolve())]
    stdout = bytearray()
    res = run_cli(args, shares=[out], spec=LabSpec(mem_mib=mem_mib), progress=progress,
                  stdout=stdout.extend, stderr=stderr)
    if res.interrupted:
        raise KeyboardInterrupt
    try:
        data = json.loads(stdout.decode(errors="replace"))
    except ValueError:
        raise FirecracerError(f"the demo in the lab failed (exit {res.rc}); its output is above, L1's "
                              f"console in {res.run_dir / 'console.log'}") from None
    result = DemoResult.from_json(data)
    result.mode = "jvm-lab"
    result.summary["lab_s"] = res.host_s
    if res.rc != 0:
        raise FirecracerError(f"the demo in the lab exited with status {res.rc}")
    return result
