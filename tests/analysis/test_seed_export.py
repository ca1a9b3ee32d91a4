"""Our seed-format exports, read with the original UffdVisualizer's rules, give the counts our totals give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firecracer.analysis import assemble_from_seed, attribute, load_recording
from firecracer.analysis.recording import save_recording
from firecracer.analysis.tables import totals
from firecracer.cli import main
from firecracer.guest.seedfmt import write_seed_text
from firecracer.uffd.trace import export_seed_log

from .synth import JVM, synth_recording
from .uffdvis_rules import mappings_counts, nmt_regions, uffd_counts

FIX = Path(__file__).parent.parent / "fixtures" / "analysis"


def _export(tmp_path: Path, seed: int) -> tuple[dict[str, object], Path, Path, Path]:
    rec = synth_recording(seed)
    assert rec.trace is not None
    tot = totals(attribute(rec))
    write_seed_text(rec.memmap, tmp_path / "memmap.txt", full_names=True, include_free=True)
    export_seed_log(rec.trace, tmp_path / "uffd.log")
    nmt = tmp_path / "nmt.txt"
    nmt.write_text((FIX / "nmt_jdk17_detail.txt").read_text().replace("10562:", f"{JVM}:", 1))
    return tot, tmp_path / "memmap.txt", tmp_path / "uffd.log", nmt


@pytest.mark.parametrize("seed", [1, 2])
def test_exports_match_uffdvisualizer_counts(tmp_path: Path, seed: int) -> None:
    tot, mm, log, nmt = _export(tmp_path, seed)
    phys, procs = mappings_counts(mm)
    events, loaded, zeroed = uffd_counts(log)
    assert (tot["physical_pages"], tot["processes"]) == (phys, procs)
    assert (tot["uffd_events"], tot["pages_loaded"], tot["pages_zeroed"]) == (events, loaded, zeroed)
    # and the same files imported back give the same totals
    back = totals(attribute(assemble_from_seed(mm, log, nmt)))
    for key in ("physical_pages", "processes", "uffd_events", "pages_loaded", "pages_zeroed"):
        assert back[key] == tot[key], key
    assert back["nmt_regions"] == nmt_regions(nmt) == 37


def test_cli_seed_json_and_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tot, mm, log, nmt = _export(tmp_path, 3)
    with pytest.raises(SystemExit) as ex:
        main(["analyze", "--seed", str(mm), str(log), str(nmt), "--json", "--save", str(tmp_path / "rec")])
    assert ex.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["uffd_events"] == tot["uffd_events"]
    assert out["totals"]["nmt_regions"] == 37
    assert {"processes", "nmt_categories", "nmt_regions", "mappings", "fragmentation",
            "restore_order", "owner_classes"} <= set(out["tables"])
    rec = load_recording(tmp_path / "rec")
    assert rec.nmt is not None and rec.nmt.pid == JVM
    assert totals(attribute(rec))["physical_pages"] == tot["physical_pages"]


def test_cli_recording_table_csv_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = synth_recording(1)
    save_recording(a, tmp_path / "a")
    save_recording(synth_recording(2), tmp_path / "b")
    for args in (["analyze", str(tmp_path / "a")],
                 ["analyze", str(tmp_path / "a"), "--compare", str(tmp_path / "b"), "--top", "3"]):
        with pytest.raises(SystemExit) as ex:
            main(args)
        assert ex.value.code == 0
    text = capsys.readouterr().out
    assert "Restored pages by owner class" in text and "Working-set similarity" in text
    with pytest.raises(SystemExit) as ex:
        main(["analyze", str(tmp_path / "a"), "--csv", "--table", "processes"])
    assert ex.value.code == 0
    csv_out = capsys.readouterr().out
    assert csv_out.startswith("# totals\n") and "\n# processes\npid,exe,mappings," in csv_out
    assert "# mappings" not in csv_out


@pytest.mark.parametrize("args", [
    ["analyze", "--seed", "MM"],
    ["analyze", "REC", "--json", "--csv"],
    ["analyze", "REC", "--table", "nope"],
])
def test_cli_usage_errors(tmp_path: Path, args: list[str]) -> None:
    save_recording(synth_recording(1), tmp_path / "r")
    args = [str(tmp_path / "r") if a in ("REC", "MM") else a for a in args]
    with pytest.raises(SystemExit) as ex:
        main(args)
    assert ex.value.code == 2


def test_cli_bad_recording_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "nmt.txt").write_text("garbage\n")
    with pytest.raises(SystemExit) as ex:
        main(["analyze", str(tmp_path / "r")])
    assert ex.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("firecracer: error:") and "nmt.txt" in err and "\n" not in err


def test_directory_of_seed_files(tmp_path: Path) -> None:
    tot, mm, log, nmt = _export(tmp_path, 4)
    d = tmp_path / "rec"
    d.mkdir()
    for src, name in ((mm, "memmap.txt"), (log, "uffd.log"), (nmt, "nmt.txt")):
        (d / name).write_bytes(src.read_bytes())
    got = totals(attribute(load_recording(d)))
    for key in ("physical_pages", "processes", "uffd_events", "pages_loaded", "pages_zeroed"):
        assert got[key] == tot[key], key


def test_new_seed_log_format_with_tid_imports_the_same(tmp_path: Path) -> None:
    """The seed handler's current log format (thread id field) gives the same totals as the old one."""
    tot, mm, _log, nmt = _export(tmp_path, 5)
    rec = synth_recording(5)
    assert rec.trace is not None
    export_seed_log(rec.trace, tmp_path / "tid.log", with_tid=True)
    text = (tmp_path / "tid.log").read_text()
    assert "(r): 0 0x" in text or "(w): 0 0x" in text
    got = totals(attribute(assemble_from_seed(mm, tmp_path / "tid.log", nmt)))
    for key in ("physical_pages", "processes", "uffd_events", "pages_loaded", "pages_zeroed",
                "restored_pages"):
        assert got[key] == tot[key], key
