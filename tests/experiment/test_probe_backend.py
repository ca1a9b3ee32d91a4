"""The probe backend under real Firecracker: File restores, a guest that never gets ready, a bad restore.

uffd strategies are covered by ``test_probe_study_all_strategies`` (needs the page server, ``firecracer
uffd serve``) and by the bundled example in ``test_example_study``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firecracer.experiment.backend import RunOutcome
from firecracer.experiment.backends import probe as probe_mod
from firecracer.experiment.backends.probe import ProbeBackend, ProbeState
from firecracer.experiment.plan import Run
from firecracer.experiment.runner import run_study
from firecracer.experiment.spec import Spec, parse_spec
from firecracer.experiment.store import ResultStore
from firecracer.experiment.workingset import from_trace

pytestmark = pytest.mark.firecracker


def probe_spec(tmp_path: Path, fc: Path, strategies: str = '"file"', reps: int = 2, pages: int = 256,
               timeout: float = 120, name: str = "p") -> Spec:
    text = (f'[study]\nname = "{name}"\nbackend = "probe"\nrepetitions = {reps}\n'
            f"strategies = [{strategies}]\n"
            f'timeout_s = {timeout}\nfirecracker = "{fc}"\n[guest]\nmem_size_mib = 64\n'
            f'[[variant]]\nname = "a"\nworking_set_pages = {pages}\nseed = 3\n')
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return parse_spec(text, p)


def failures(res: Path) -> str:
    """The failed runs' reasons, for assertion messages (a loaded shared host can make runs fail)."""
    with ResultStore.open(res) as st:
        return "; ".join(f"{r.run_id}: {r.reason}" for r in st.runs() if not r.ok)


def test_file_restores_of_the_probe(firecracker_bin: Path, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, firecracker_bin)
    summary = run_study(spec, tmp_path / "res")
    assert (summary.ok, summary.failed) == (2, 0), failures(tmp_path / "res")
    with ResultStore.open(tmp_path / "res") as st:
        runs = st.runs()
    for r in runs:
        assert r.backend == "probe" and r.versions["firecracker"]
        assert r.metrics["errors"] == 0 and r.metrics["probe_pages"] == 256
        assert 0 < r.timings["load_snapshot"] < r.timings["first_response"]
        assert r.timings["first_byte"] <= r.timings["first_response"]
        assert r.metrics["faults"] > 0  # the restored guest faulted its pages in through the kernel
    serial = (tmp_path / "res" / "runs" / "a.file.r1" / "vm" / "serial.log").read_text()
    assert serial.count("PROBE RESULT") == 1
    # the snapshot is reused when the study resumes with a new shard of work
    assert (tmp_path / "res" / "variants" / "a" / "snapshot" / "vmstate").exists()


def _hang_at_entry(elf: Path, outdir: Path) -> Path:
    """A copy of the probe ELF whose first instruction is ``jmp .``: it boots but never gets ready."""
    outdir.mkdir(exist_ok=True)
    shutil.copyfile(elf.parent / "probe.json", outdir / "probe.json")
    out = outdir / "probe.elf"
    data = bytearray(elf.read_bytes())
    entry, = struct.unpack_from("<Q", data, 0x18)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz, _ = struct.unpack_from("<IIQQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and vaddr <= entry < vaddr + filesz:
            data[off + entry - vaddr: off + entry - vaddr + 2] = b"\xeb\xfe"
            out.write_bytes(bytes(data))
            return out
    raise AssertionError("entry point not in a loadable segment")


def test_guest_never_ready_fails_its_runs_and_the_study_goes_on(firecracker_bin: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = probe_spec(tmp_path, firecracker_bin, timeout=2)
    real_build = probe_mod.build_probe

    def build_hanging(*a: object, **kw: object) -> Path:
        return _hang_at_entry(real_build(*a, **kw), tmp_path / "hang")  # type: ignore[arg-type]

    monkeypatch.setattr(probe_mod, "build_probe", build_hanging)
    summary = run_study(spec, tmp_path / "res")
    assert (summary.ok, summary.failed) == (0, 2)
    with ResultStore.open(tmp_path / "res") as st:
        r = st.runs()[0]
    assert r.phase == "ready" and "no READY line within 2 s" in (r.reason or "")


def test_restore_error_is_recorded_and_the_study_goes_on(firecracker_bin: Path, tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, firecracker_bin, reps=3)

    class CorruptSecond(ProbeBackend):
        def run(self, state: ProbeState, run: Run, rundir: Path) -> RunOutcome:
            if run.repetition == 2:
                good = state.vmstate.read_bytes()
                state.vmstate.write_bytes(good[: len(good) // 3])
                try:
                    return super().run(state, run, rundir)
                finally:
                    state.vmstate.write_bytes(good)
            return super().run(state, run, rundir)

    summary = run_study(spec, tmp_path / "res", backend=CorruptSecond(spec))
    assert (summary.ok, summary.failed) == (2, 1)
    with ResultStore.open(tmp_path / "res") as st:
        bad = {r.run_id: r for r in st.runs()}["a.file.r2"]
    assert bad.phase == "restore" and "/snapshot/load" in (bad.reason or "")


def test_probe_study_all_strategies(firecracker_bin: Path, tmp_path: Path) -> None:
    """Every strategy through the real page server; counts that must hold whatever the timing."""
    from firecracer.fcversion import firecracker_version

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("uffd restores need Firecracker >= 1.8 on this host kernel")
    spec = probe_spec(tmp_path, firecracker_bin, reps=2, pages=256,
                      strategies='"file", "ondemand", "fault-around:16", "prefetch", "eager"')
    summary = run_study(spec, tmp_path / "res")
    assert (summary.ok, summary.failed) == (10, 0), failures(tmp_path / "res")
    with ResultStore.open(tmp_path / "res") as st:
        runs = {r.run_id: r for r in st.runs()}
    ws = set(ProbeBackend(spec)._working_set(spec.variants[0]).tolist())
    for rep in (1, 2):
        od = runs[f"a.ondemand.r{rep}"]
        assert od.pages is not None and ws <= set(od.pages.tolist())  # every touched page faulted in once
        # a fault event can repeat for a page already served (stale faults under load): >=, not ==
        assert od.metrics["faults"] >= len(od.pages) and od.metrics["bytes"] >= 256 * 4096
        fa = runs[f"a.fault-around16.r{rep}"]
        assert fa.metrics["faults"] < od.metrics["faults"] and fa.metrics["pages"] > od.metrics["pages"]
        pf = runs[f"a.prefetch.r{rep}"]
        assert pf.metrics["misses"] == 0 and pf.metrics["prefetched"] >= 256 and pf.timings["install"] > 0
        ea = runs[f"a.eager.r{rep}"]
        assert ea.metrics["faults"] == 0 and ea.metrics["pages"] == 64 * 256
        for r in (od, fa, pf, ea):
            assert r.metrics["errors"] == 0 and r.metrics["probe_pages"] == 256
            assert (tmp_path / "res" / "runs" / r.run_id / "trace.npz").exists()
    assert (tmp_path / "res" / "variants" / "a" / "prefetch-trace.npz").exists()
    # working-set files only where prefetch installs one: the variant's recording, never a run
    assert (tmp_path / "res" / "variants" / "a" / "prefetch-trace.ws").stat().st_size >= 256 * 4096
    assert sorted(p.name for p in (tmp_path / "res").rglob("*.ws")) == ["prefetch-trace.ws"]



def _firecrackers_in(prefix: str) -> list[int]:
    """Pids of live processes whose cwd is under ``prefix`` (the backend's short run dirs)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "cwd").startswith(prefix):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
    return f"{state} {cmd[:200]}"


def test_sigint_mid_probe_study_leaves_nothing_running_and_resumes(firecracker_bin: Path,
                                                                   tmp_path: Path) -> None:
    spec = probe_spec(tmp_path, firecracker_bin, reps=8, strategies='"file", "ondemand"')
    res = tmp_path / "res"
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_root)}  # the backend's short run dirs land here
    proc = subprocess.Popen([sys.executable, "-m", "firecracer", "experiment", "run", str(spec.path), "-o",
                             str(res)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        n = 0
        while time.monotonic() < deadline and n < 3:
            time.sleep(0.1)
            with contextlib.suppress(sqlite3.Error), sqlite3.connect(res / "results.sqlite", timeout=5) as c:
                n = c.execute("SELECT count(*) FROM runs").fetchone()[0]
        assert n >= 3, "no runs recorded in time"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert failures(res) == ""
    # Firecracker and page servers are gone (bounded wait: a SIGKILLed process may still be exiting)
    deadline = time.monotonic() + 10
    while _firecrackers_in(str(tmp_root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: _describe(pid) for pid in _firecrackers_in(str(tmp_root))}
    assert left == {}, f"left running after SIGINT: {left}; stderr: {err[-1500:]}"
    assert list(tmp_root.glob("fcx-*")) == []  # and their socket dirs
    marker = (res / "variants" / "a" / "variant.json").read_text()
    with sqlite3.connect(res / "results.sqlite") as c:
        before = dict(c.execute("SELECT run_id, finished FROM runs").fetchall())
    assert len(before) < 16
    # resuming reuses the variant's snapshot and redoes no finished run
    summary = run_study(spec, res)
    assert summary.skipped == len(before) and summary.ok == 16 - len(before), failures(res)
    assert (res / "variants" / "a" / "variant.json").read_text() == marker
    with sqlite3.connect(res / "results.sqlite") as c:
        after = dict(c.execute("SELECT run_id, finished FROM runs").fetchall())
    assert all(after[k] == v for k, v in before.items())


def test_trace_replay_variant(firecracker_bin: Path, tmp_path: Path) -> None:
    """A variant replays a recorded restore's page order (here: a probe ondemand trace, whose image and
    page-table pages the replaying probe cannot own and drops)."""
    from firecracer.fcversion import firecracker_version

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("uffd restores need Firecracker >= 1.8 on this host kernel")
    first = probe_spec(tmp_path, firecracker_bin, reps=1, pages=300, strategies='"ondemand"', name="rec")
    assert run_study(first, tmp_path / "rec").ok == 1
    trace = tmp_path / "rec" / "runs" / "a.ondemand.r1" / "trace.npz"
    text = first.text.replace('name = "rec"', 'name = "replay"').replace(
        "working_set_pages = 300", f'trace = "{trace}"')
    (tmp_path / "replay.toml").write_text(text)
    replay = parse_spec(text, tmp_path / "replay.toml")
    summary = run_study(replay, tmp_path / "replay")
    assert summary.ok == 1, failures(tmp_path / "replay")
    with ResultStore.open(tmp_path / "replay") as st:
        r = st.runs()[0]
    recorded = from_trace(trace)
    kept = recorded[recorded >= 4096]
    assert len(kept) == 300 and r.metrics["probe_pages"] == 300  # exactly the recorded working set
    assert r.pages is not None and set(kept.tolist()) <= set(r.pages.tolist())
    facts = json.loads((tmp_path / "replay" / "variants" / "a" / "variant.json").read_text())
    assert facts["trace_pages_dropped"] == len(recorded) - 300 > 0


def test_probe_study_with_a_2mib_variant(firecracker_bin: Path, tmp_path: Path) -> None:
    """``huge_pages = "2M"`` per variant: the 2 MiB variant boots and restores with 2 MiB pages (its traces
    say so), ``file`` is not planned for it, and its working set is reported in 4 KiB pages."""
    from firecracer.fcversion import firecracker_version
    from firecracer.hugepages import HugePagesError, Reservation

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("uffd restores need Firecracker >= 1.8 on this host kernel")
    text = ('[study]\nname = "h"\nbackend = "probe"\nrepetitions = 1\n'
            f'strategies = ["file", "ondemand", "prefetch"]\ntimeout_s = 120\n'
            f'firecracker = "{firecracker_bin}"\n'
            '[guest]\nmem_size_mib = 64\n'
            '[[variant]]\nname = "a"\nworking_set_pages = 256\nseed = 3\n'
            '[[variant]]\nname = "a2m"\nworking_set_pages = 256\nseed = 3\nhuge_pages = "2M"\n')
    p = tmp_path / "h.toml"
    p.write_text(text)
    spec = parse_spec(text, p)
    try:
        res = Reservation(32 + 16)
    except HugePagesError as exc:
        pytest.skip(f"2 MiB huge pages cannot be reserved here: {exc}")
    with res:
        summary = run_study(spec, tmp_path / "res")
    assert (summary.ok, summary.failed) == (5, 0), failures(tmp_path / "res")
    with ResultStore.open(tmp_path / "res") as st:
        runs = {r.run_id: r for r in st.runs()}
    assert set(runs) == {"a.file.r1", "a.ondemand.r1", "a.prefetch.r1", "a2m.ondemand.r1", "a2m.prefetch.r1"}
    from firecracer.uffd.trace import load_trace

    for rid in ("a2m.ondemand.r1", "a2m.prefetch.r1"):
        assert load_trace(tmp_path / "res" / "runs" / rid / "trace.npz").page_size == 2 << 20
        assert runs[rid].metrics["errors"] == 0
    small, big = runs["a.ondemand.r1"], runs["a2m.ondemand.r1"]
    assert big.metrics["faults"] < small.metrics["faults"]
    assert big.pages is not None and small.pages is not None and len(big.pages) % 512 == 0
    assert set(ProbeBackend(spec)._working_set(spec.variants[1]).tolist()) <= set(big.pages.tolist())


def test_probe_study_new_kinds_readahead_orders_and_compressed(firecracker_bin: Path, tmp_path: Path) -> None:
    """Issue 23's study strategies through the real probe: the racing prefetch in another order,
    readahead before the load, and page-server strategies served from the variant's compressed snapshot."""
    import json

    from firecracer.fcversion import firecracker_version

    if not firecracker_version(firecracker_bin).at_least(1, 8):
        pytest.skip("uffd restores need Firecracker >= 1.8 on this host kernel")
    spec = probe_spec(tmp_path, firecracker_bin, reps=1, pages=256,
                      strategies='"prefetch-background@touch", "readahead", "ondemand-zstd", "prefetch-zstd"')
    summary = run_study(spec, tmp_path / "res")
    assert (summary.ok, summary.failed) == (4, 0), failures(tmp_path / "res")
    with ResultStore.open(tmp_path / "res") as st:
        runs = {r.run_id: r for r in st.runs()}
    assert set(runs) == {"a.prefetch-background-touch.r1", "a.readahead.r1", "a.ondemand-zstd.r1",
                         "a.prefetch-zstd.r1"}
    for r in runs.values():
        assert r.metrics["errors"] == 0 and r.metrics["probe_pages"] == 256, r.run_id
    bg = runs["a.prefetch-background-touch.r1"]
    assert bg.metrics["prefetched"] >= 256
    ra = runs["a.readahead.r1"]
    assert ra.metrics["readahead"]["done"] and ra.metrics["readahead"]["pages"] >= 256
    assert ra.timings["readahead"] > 0 and ra.timings["first_response"] > ra.timings["readahead"]
    variant = json.loads((tmp_path / "res" / "variants" / "a" / "variant.json").read_text())
    assert variant["compressed"]["raw_kept"] and variant["compressed"]["ratio"] > 1
    for rid in ("a.ondemand-zstd.r1", "a.prefetch-zstd.r1"):  # the page server read mem.fcz
        m = json.loads((tmp_path / "res" / "runs" / rid / "uffd-metrics.json").read_text())
        assert m["sessions"][0]["compressed"]["file"].endswith("mem.fcz"), m["sessions"][0]
    assert runs["a.ondemand-zstd.r1"].metrics["faults"] >= 256
    assert runs["a.prefetch-zstd.r1"].metrics["misses"] == 0
