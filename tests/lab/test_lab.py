"""The lab for real: L1 boots under QEMU TCG with emulated SVM, kvm_amd gives it /dev/kvm, and real
Firecracker runs inside it — the probe guest (selftest) and our JVM image (tests/guestvm, run in L1).

The default suite runs a bounded smoke subset (check, selftest, one JVM boot → snapshot → Uffd restore →
first request); ``python3 -m pytest -m lab`` runs everything, the slow ones included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import REPO, USER_IMAGES, Lab, built_image, firecracker, qemu_pids_for

pytestmark = pytest.mark.lab


def _wait_gone(marker: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = qemu_pids_for(marker)
        if not left:
            return []
        time.sleep(0.5)
    return qemu_pids_for(marker)


@pytest.mark.timeout(600)
def test_lab_check_reports_kvm_in_l1(lab: Lab) -> None:
    fc = firecracker()
    res = lab.run("check", "--json", "--firecracker", str(fc), timeout=500)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert rep["ok"], rep["problems"]
    caps = rep["l1"]["kvm_caps"]
    assert caps["missing"] == [] and {"svm", "npt"} <= set(caps["cpu_virt"])
    assert rep["stages_s"]["kvm_amd_load"] > 0 and rep["host_s"]["off"] >= rep["host_s"]["running"]
    assert "v1." in rep["l1"]["firecracker"]
    assert rep["l1"]["vector"]["ok"], rep["l1"]["vector"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tcg_avx2_gives_wrong_results_which_is_why_numpy_has_none_in_l1(lab: Lab) -> None:
    """QEMU 7.2's TCG with AVX2: numpy's AVX2 argsort returned unsorted results in L1 (seen as 97.7 %
    instead of 100 % attribution of a real restore). L1 keeps AVX2 (the JVM in L2 crashed without it) and
    numpy runs there without its AVX2 kernels; with them (NPY_DISABLE_CPU_FEATURES set empty) the
    check must see the wrong results. This keeps the reason on record, and tells when QEMU fixes it."""
    res = lab.run("check", "--json", timeout=500, extra_env={"NPY_DISABLE_CPU_FEATURES": ""})
    rep = json.loads(res.stdout)
    if rep["l1"]["vector"]["ok"]:
        pytest.skip(f"{rep['qemu']} emulates AVX2 correctly: lab_env's NPY_DISABLE_CPU_FEATURES may go")
    assert res.returncode == 1 and any("vector" in p for p in rep["problems"])


@pytest.mark.timeout(600)
def test_lab_run_streams_output_exit_status_environment_and_files(lab: Lab) -> None:
    script = ("echo out; echo err >&2; test -c /dev/kvm && echo kvm; "
              "echo \"$FIRECRACER_LAB|$MY_VAR\" > made.txt; exit 7")
    res = lab.run("run", "--mem", "2048", "--", "/bin/sh", "-c", script, extra_env={"MY_VAR": "from host"})
    assert res.returncode == 7, res.stderr
    assert res.stdout == "out\nkvm\n"
    assert "err\n" in res.stderr
    assert (lab.cwd / "made.txt").read_text() == "lab (QEMU TCG, emulated SVM)|from host\n"
    assert not qemu_pids_for(os.environ["FIRECRACER_CACHE"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lab_run_timeout_powers_l1_off(lab: Lab) -> None:
    t0 = time.monotonic()
    res = lab.run("run", "--mem", "2048", "--timeout", "60", "--", "/bin/sh", "-c",
                  "echo started; sleep 1000")
    assert res.returncode == 124, res.stderr
    assert "did not finish within 60 s; L1 was powered off" in res.stderr
    assert time.monotonic() - t0 < 200
    assert not qemu_pids_for(os.environ["FIRECRACER_CACHE"])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_signals_to_lab_run_leave_no_qemu(lab: Lab, sig: signal.Signals) -> None:
    proc = lab.popen("run", "--mem", "2048", "--", "/bin/sh", "-c", "echo started; sleep 1000")
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 400
    while "started\n" not in got and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert "started\n" in got, proc.stderr.read() if proc.poll() is not None else "not started"  # type: ignore[union-attr]
    marker = os.environ["FIRECRACER_CACHE"]
    assert qemu_pids_for(marker)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    # SIGTERM/SIGINT: the command is signalled, L1 powered off; SIGKILL: PR_SET_PDEATHSIG kills QEMU
    assert _wait_gone(marker, 10) == [], f"QEMU survived {sig.name} of 'lab run'"
    if sig is not signal.SIGKILL:
        assert proc.returncode == 128 + sig, proc.stderr.read()  # type: ignore[union-attr]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", [(1, 14), pytest.param((1, 7), marks=pytest.mark.slow)],
                         ids=["fc1.14", "fc1.7"])
def test_selftest_in_the_lab(lab: Lab, version: tuple[int, int]) -> None:
    """The probe guest's boot, snapshot, File and Uffd restores; v1.7 serves Uffd in L1 (kernel 6.1)."""
    fc = firecracker(exact=version)
    res = lab.run("run", "--", sys.executable, "-m", "firecracer", "selftest", "--firecracker", str(fc),
                  timeout=800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


#: what L2's console says when TCG, not our code, broke the guest: the JVM's fatal-error line (C1 code run
#: stale after the JIT patched it, docs/lab.md) or a stalled vCPU
TCG_BROKE_GUEST = re.compile(r"SIG[A-Z]+ \(0x[0-9a-f]+\) at pc=|detected stalls on CPUs|BUG: soft lockup")
#: the guest-VM tests' own words for a guest that died under a test (tests/guestvm/test_jvm_cycle.py)
GUEST_DIED = re.compile(r"the JVM's guest (?:is gone|died during this test): (.*)")


def _lost_to_tcg(junit: Path) -> str | None:
    """The console's word if *every* failed test lost its guest to TCG (then nothing of ours failed)."""
    words = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        bad = [el for el in case if el.tag in ("failure", "error")]
        if not bad:
            continue
        text = " ".join((el.get("message") or "") + (el.text or "") for el in bad)
        text += " ".join(el.text or "" for el in case if el.tag == "system-out")
        died = [m.group(1) for m in GUEST_DIED.finditer(text) if TCG_BROKE_GUEST.search(m.group(1))]
        if not died:
            return None
        words.append(died[0])
    return words[0] if words else None


#: a rerun of the guest-VM tests needs this much of the budget left (the one-vCPU smoke took 333 s idle,
#: 475 s under two busy loops)
RERUN_MIN = 600.0


def _guest_suite(lab: Lab, tmp_path: Path, select: str | None, timeout: float, budget: float,
                 fc: Path | None = None) -> ET.Element:
    """Run tests/guestvm in L1 (an attempt bounded by ``timeout``, s); once more, said aloud, if every
    failure was a guest whose JVM TCG crashed and ``budget`` (s, all attempts) leaves RERUN_MIN. The
    last attempt may end up to 60 s after ``budget`` (its run's grace and L1's power-off): the test's
    pytest timeout allows for that.

    The guest boots one vCPU: nothing of L2 then runs on two of L1's TCG threads at once, which is
    where TCG's lost guests came from (C1 code run stale after the JIT patched it on the other vCPU;
    docs/lab.md). Its boots are retried inside (the module fixture) within a 600 s boot budget.
    """
    t0 = time.monotonic()
    fc = fc or firecracker()
    built_image()
    junit = lab.cwd / "junit.xml"
    argv = ["run", "--timeout", str(timeout), "--", sys.executable, "-m", "pytest",
            str(REPO / "tests" / "guestvm"), "-m", "guest_vm", "-p", "no:cacheprovider", "-q", "-rA",
            "-o", "junit_logging=system-out", f"--junitxml={junit}"]
    if select:
        argv += ["-k", select]
    for attempt in (1, 2):
        junit.unlink(missing_ok=True)
        bound = min(timeout, budget - (time.monotonic() - t0) - 60)
        argv[2] = str(int(bound))  # run --timeout counts from QEMU's start; its grace and power-off follow
        res = lab.run(*argv, timeout=bound + 120,
                      extra_env={"FIRECRACKER": str(fc), "FIRECRACER_IMAGE_DIR": str(USER_IMAGES),
                                 "FIRECRACER_TEST_KEEP": str(lab.cwd), "FIRECRACER_TEST_VCPUS": "1",
                                 "FIRECRACER_TEST_BOOT_BUDGET": "600"})
        lost = _lost_to_tcg(junit) if res.returncode != 0 and junit.exists() else None
        if attempt == 2 or lost is None or budget - (time.monotonic() - t0) < RERUN_MIN:
            break
        warnings.warn(f"guest-VM tests in L1: TCG broke the guest ({lost[:300]}); running them once more",
                      stacklevel=1)
    assert junit.exists(), res.stdout[-4000:] + res.stderr[-4000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return suite


@pytest.mark.timeout(1320)
def test_jvm_smoke_in_the_lab(lab: Lab, tmp_path: Path) -> None:
    """CI's bounded JVM cycle: boot → collect → Full snapshot → Uffd restore → first request 200.

    Bounded for CI (30 min in all): 5-8 min normally (one vCPU in L2); lost boots and a rerun stay
    within 1140 s plus L1's power-off.
    """
    suite = _guest_suite(lab, tmp_path, "boots or hooks_prepare or ondemand", timeout=1020,
                         budget=1140)
    assert int(suite.get("tests", 0)) == 3
    assert int(suite.get("skipped", 0)) == 0 and int(suite.get("failures", 0)) == 0


@pytest.mark.timeout(1320)
def test_crac_in_the_lab(lab: Lab, tmp_path: Path) -> None:
    """CRaC's half in CI (tests/guestvm/test_crac.py in L1): criu check in the guest, a checkpoint CRIU
    refuses (the JVM goes on), a checkpoint onto the scratch drive, eager and lazy restores in another
    boot answering 200, the lazy restore's pages attributed. One JVM boot: 6-10 min, bounded like the
    smoke."""
    suite = _guest_suite(lab, tmp_path, "crac", timeout=1020, budget=1140)
    assert int(suite.get("tests", 0)) == 5
    assert int(suite.get("skipped", 0)) == 0 and int(suite.get("failures", 0)) == 0
    assert (lab.cwd / "crac-lazy-recording" / "trace.npz").exists()


@pytest.mark.slow
@pytest.mark.timeout(2600)
def test_image_boots_on_firecracker_1_7_in_the_lab(lab: Lab, tmp_path: Path) -> None:
    """v1.7 passes no ACPI tables: the kernel must still find its devices (MP table, virtio-mmio)."""
    suite = _guest_suite(lab, tmp_path, "boots", timeout=1800, budget=2400,
                         fc=firecracker(exact=(1, 7)))
    assert int(suite.get("tests", 0)) == 1 and int(suite.get("failures", 0)) == 0
    assert int(suite.get("skipped", 0)) == 0


@pytest.mark.slow
@pytest.mark.timeout(7600)
def test_jvm_cycle_in_the_lab(lab: Lab, tmp_path: Path) -> None:
    """Every guest-VM test in L1: File, Diff, ondemand, fault-around, prefetch, balloon, analysis."""
    suite = _guest_suite(lab, tmp_path, None, timeout=3300, budget=7400)
    assert int(suite.get("skipped", 0)) == 0 and int(suite.get("failures", 0)) == 0
    assert int(suite.get("tests", 0)) >= 9
    assert (lab.cwd / "recording" / "trace.npz").exists()


_TINY_SPEC = """\
[study]
name = "lab-tiny"
backend = "jvm"
repetitions = 1
strategies = ["ondemand", "prefetch"]
timeout_s = 600

[guest]
mem_size_mib = 1024
vcpus = 1  # steadier in the lab (docs/lab.md)
kernel = "{kernel}"
rootfs = "{rootfs}"

[workload]
port = 8080
path = "/owners/1"
warmup_requests = 10
ready_timeout_s = 900

[[variant]]
name = "default"

[[variant]]
name = "serial-gc"
jvm_options = ["-XX:+UseSerialGC"]
"""


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_experiment_jvm_study_goes_to_the_lab(lab: Lab, tmp_path: Path) -> None:
    """2 variants × 2 strategies × 1 repetition, routed to one L1 because this host cannot boot Linux."""
    from firecracer import host
    from firecracer.experiment.store import ResultStore

    if host.check_linux_guests().ok:
        pytest.skip("this host's KVM boots Linux guests: the study runs natively, not in the lab")
    fc = firecracker()
    kernel, rootfs = built_image()
    spec = tmp_path / "tiny.toml"
    spec.write_text(_TINY_SPEC.format(kernel=kernel, rootfs=rootfs))
    results = lab.cwd / "results"
    res = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "run", str(spec), "-o",
                          str(results), "--firecracker", str(fc)], cwd=lab.cwd, env=lab.env,
                         capture_output=True, text=True, timeout=5000, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "running the study in the lab" in res.stderr
    with ResultStore.open(results) as store:
        runs = store.runs()
    assert len(runs) == 4 and all(r.ok for r in runs), [(r.run_id, r.reason) for r in runs]
    assert {r.versions["host"]["environment"] for r in runs} == {"lab (QEMU TCG, emulated SVM)"}
    for r in runs:
        rec = json.loads((results / "runs" / r.run_id / "recording.json").read_text())
        assert rec["host"]["label"].startswith("lab") and rec["timings_comparable_to_kvm"] is False
    rep = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "report", str(results)],
                         env=lab.env, capture_output=True, text=True, timeout=300, check=False)
    assert rep.returncode == 0, rep.stderr
    assert "not comparable to KVM" in (results / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_demo_picks_jvm_in_the_lab(lab: Lab) -> None:
    from firecracer import host

    if host.check_linux_guests().ok:
        pytest.skip("this host's KVM boots Linux guests: the demo runs the jvm mode natively")
    fc = firecracker()
    built_image()
    out = lab.cwd / "demo"
    res = subprocess.run([sys.executable, "-m", "firecracer", "demo", "--no-browser", "--json", "-o",
                          str(out), "--firecracker", str(fc)], cwd=lab.cwd, env=lab.env, capture_output=True,
                         text=True, timeout=5000, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    data = json.loads(res.stdout)
    assert data["mode"] == "jvm-lab" and data["host"].startswith("lab")
    assert Path(data["view"]).is_file()
    assert len(data["recordings"]) == 4
    for r in data["recordings"]:
        assert (Path(r) / "trace.npz").is_file()
        assert json.loads((Path(r) / "recording.json").read_text())["source"] == "firecracker"
    od = data["summary"]["variants"]["default"]
    assert od["ondemand"]["faults"] > 500 and od["attributed_pct"] >= 99.0


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_crac_study_goes_to_the_lab(lab: Lab, tmp_path: Path) -> None:
    """``experiment example --crac`` with one repetition, end to end: ondemand, prefetch, criu, criu-lazy
    all ok; the report puts the restore kinds side by side."""
    from firecracer import host
    from firecracer.experiment.store import ResultStore

    if host.check_linux_guests().ok:
        pytest.skip("this host's KVM boots Linux guests: the study runs natively, not in the lab")
    fc = firecracker()
    built_image()
    spec = tmp_path / "crac.toml"
    ex = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "example", "--crac",
                         "--repetitions", "1", "-o", str(spec)], env=lab.env, capture_output=True, text=True,
                        timeout=120, check=False)
    assert ex.returncode == 0, ex.stderr
    results = lab.cwd / "results"
    res = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "run", str(spec), "-o",
                          str(results), "--firecracker", str(fc)], cwd=lab.cwd, env=lab.env,
                         capture_output=True, text=True, timeout=5000, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    with ResultStore.open(results) as store:
        runs = store.runs()
    assert sorted(r.strategy for r in runs) == ["criu", "criu-lazy", "ondemand", "prefetch"]
    assert all(r.ok for r in runs), [(r.run_id, r.reason) for r in runs]
    lazy = next(r for r in runs if r.strategy == "criu-lazy")
    assert lazy.metrics["faults"] > 100 and lazy.categories, lazy.metrics
    rep = subprocess.run([sys.executable, "-m", "firecracer", "experiment", "report", str(results)],
                         env=lab.env, capture_output=True, text=True, timeout=300, check=False)
    assert rep.returncode == 0, rep.stderr
    html = (results / "report.html").read_text()
    assert "VM restore vs process restore" in html and "not comparable to KVM" in html
