"""Restored bytes per NMT category, from a variant's memmap + NMT and a run's trace (analysis join)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from firecracer.analysis import attribute, tables
from firecracer.analysis.nmt import parse_nmt_text
from firecracer.analysis.recording import save_recording
from firecracer.errors import FormatError
from firecracer.experiment.attribution import restored_by_category
from firecracer.experiment.backend import RunOutcome
from firecracer.experiment.backends.hostreplay import HostReplayBackend, HostState
from firecracer.experiment.plan import Run
from firecracer.experiment.report import write_report
from firecracer.experiment.runner import run_study
from firecracer.experiment.spec import Spec
from firecracer.experiment.store import ResultStore

# jcmd VM.native_memory detail wording (JDK 17), regions inside the synthetic JVM's mappings
NMT = ("{pid}:\n\nNative Memory Tracking:\n\nVirtual memory map:\n\n"
       "[0x00000000f0000000 - 0x00000000f0040000] reserved and committed 256KB for Java Heap from\n"
       "    [0x00007f33f8b1a27c] ReservedSpace::reserve()+0xac\n\n"
       "[0x00000000f0100000 - 0x00000000f0140000] reserved 256KB for Metaspace from\n"
       "    [0x00007f33f8b1a27c] ReservedSpace::reserve()+0xac\n\n"
       "\t[0x00000000f0100000 - 0x00000000f0110000] committed 64KB from\n"
       "            [0x00007f33f8b1a27c] x()+0x1\n\n"
       "[0x00000000f0200000 - 0x00000000f0220000] reserved 128KB for Code\n\nDetails:\n")


def _synth() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "analysis" / "synth.py"
    if not path.exists():
        pytest.skip("tests/analysis/synth.py (the analysis branch's synthetic recordings) is not here")
    spec = importlib.util.spec_from_file_location("synth_recordings", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    """A variant dir with memmap + nmt.txt, a run dir with only trace.npz, and the expected answer."""
    synth = _synth()
    rec = synth.synth_recording(5, nmt=False)
    rec.nmt = parse_nmt_text(NMT.format(pid=synth.JVM))
    full = save_recording(rec, tmp_path / "full")
    (full / "nmt.txt").write_text(NMT.format(pid=synth.JVM))
    vdir, rundir = tmp_path / "variant", tmp_path / "run"
    vdir.mkdir()
    rundir.mkdir()
    for f in ("memmap.npz", "nmt.txt", "recording.json"):
        shutil.copy(full / f, vdir / f)
    shutil.copy(full / "trace.npz", rundir / "trace.npz")
    table = tables(attribute(rec))["nmt_categories"]
    col = table.columns.index("restored_kb")
    expected = {r[0]: r[col] * 1024 for r in table.rows}
    assert any(expected.values())
    return vdir, rundir, expected


def test_categories_join_variant_owners_with_run_trace(recording: tuple[Path, Path, dict[str, int]]) -> None:
    vdir, rundir, expected = recording
    assert restored_by_category(rundir, vdir) == expected
    assert restored_by_category(rundir, None) is None  # no owners anywhere
    (rundir / "trace.npz").unlink()
    assert restored_by_category(rundir, vdir) is None  # File restore: no trace


def test_malformed_nmt_is_a_format_error(recording: tuple[Path, Path, dict[str, int]]) -> None:
    vdir, rundir, _ = recording
    (vdir / "memmap.npz").write_bytes(b"garbage")
    with pytest.raises(FormatError, match="memmap"):
        restored_by_category(rundir, vdir)


def test_runner_attributes_runs_and_the_report_plots_categories(
        recording: tuple[Path, Path, dict[str, int]], make_spec: Callable[..., Spec], tmp_path: Path) -> None:
    """A backend whose variant dir holds owners gets categories per run without doing anything itself."""
    vdir_src, rundir_src, expected = recording
    spec = make_spec(variants=(("v", 64),), strategies=("ondemand",), repetitions=2)

    class WithOwners(HostReplayBackend):
        def run(self, state: HostState, run: Run, rundir: Path) -> RunOutcome:
            out = super().run(state, run, rundir)
            for f in ("memmap.npz", "nmt.txt"):
                shutil.copy(vdir_src / f, state.workdir / f)
            shutil.copy(rundir_src / "trace.npz", rundir / "trace.npz")  # stands in for a JVM restore trace
            return out

    run_study(spec, tmp_path / "res", backend=WithOwners(spec))
    with ResultStore.open(tmp_path / "res") as st:
        runs = st.runs()
    assert [r.categories for r in runs] == [expected, expected]
    html = write_report(tmp_path / "res", tmp_path / "r.html").read_text()
    assert 'aria-label="Restored MiB per NMT category (median per cell)"' in html
