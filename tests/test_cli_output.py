"""Output people read: results on stdout, diagnostics on stderr, one unit spelling, rounded milliseconds
(full precision stays in --json), no dict reprs and no headers cut to ``class:pr…``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firecracer.cli._render import human_bytes, human_ms, timings_text

FIX = Path(__file__).resolve().parent / "fixtures"


def firecracer(*args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


def test_human_formats() -> None:
    assert [human_ms(v) for v in (1013.82, 84.485, 8.44, 0.4234, 0.0)] == ["1,014", "84", "8.4", "0.42", "0"]
    assert timings_text({"spawn": 6.887, "start": 10.57, "note": "x"}) == "spawn=6.9 ms  start=11 ms  note=x"
    assert [human_bytes(v) for v in (12, 32768, 33734656, 3 << 30)] == ["12 B", "32.0 kB", "32.2 MiB",
                                                                        "3.00 GiB"]


@pytest.mark.parametrize("columns", [80, 100])
def test_analyze_on_a_narrow_terminal_cuts_no_header_or_number(columns: int) -> None:
    res = firecracer("analyze", str(FIX / "probe_ondemand"), "--compare", str(FIX / "probe_around16"),
                     columns=columns)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "…" not in res.stdout  # rich used to squeeze headers to "class:pr…" and cells to "1,5…"
    # every header word is whole: the Owners table header has "mappings" and "restored" in one piece
    assert re.search(r"\bmappings\b", res.stdout) and re.search(r"\brestored\b", res.stdout)
    assert re.search(r"\bkb\b", res.stdout) is None  # one spelling: kB
    # rounded milliseconds for people: no 3-decimal ms values (the trace times are 3.308, 6.616, …)
    timeline = res.stdout.split("Restored kB over time", 1)[1].split("Per-category differences", 1)[0]
    assert not re.search(r"\d\.\d{2,}", timeline), timeline


def test_analyze_json_keeps_full_precision() -> None:
    res = firecracer("analyze", str(FIX / "probe_ondemand"), "--json")
    data = json.loads(res.stdout)
    t_ms = [row["t_ms"] for row in data["tables"]["restore_timeline"]]
    assert any(round(v) != v and round(v, 1) != v for v in t_ms), t_ms


def test_view_reports_kB_not_kb(tmp_path: Path) -> None:
    res = firecracer("view", str(FIX / "probe_ondemand"), "-o", str(tmp_path / "v.html"))
    assert res.returncode == 0, res.stderr
    assert "kB loaded" in res.stdout and re.search(r"\bkb\b", res.stdout) is None
    assert re.search(r"\d MB\b", res.stdout) is None  # sizes in kB / MiB, as everywhere else


@pytest.mark.firecracker
def test_vm_boot_timings_are_a_line_not_a_dict_repr(firecracker_bin: Path) -> None:
    res = firecracer("vm", "boot", "--probe", "--name", "out1", "--firecracker", str(firecracker_bin))
    try:
        assert res.returncode == 0, res.stderr
        assert "{'" not in res.stdout and "timings_ms" not in res.stdout
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith("timings:"))
        assert re.fullmatch(r"timings: (\w+=[\d,.]+ ms\s*)+", line), line
        js = firecracer("vm", "ls", "--json")
        rec = next(r for r in json.loads(js.stdout) if r["name"] == "out1")
        assert all(isinstance(v, float) for v in rec["timings_ms"].values())
    finally:
        firecracer("vm", "kill", "out1", "--purge")
