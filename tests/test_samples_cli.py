"""``firecracer samples``: the bundled recordings can be listed and unpacked as the docs say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firecracer import samples


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "samples", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_list_says_how_to_get_one_out_and_extract_does(tmp_path: Path) -> None:
    if not samples.names():
        pytest.skip("no bundled sample recordings in this checkout")
    out = _run("list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "firecracer samples extract NAME -o DIR" in out.stdout
    rows = json.loads(_run("list", "--json", cwd=tmp_path).stdout)
    name = rows[0]["name"]
    got = _run("extract", name, "-o", "out", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    rec = tmp_path / "out" / name
    assert (rec / "recording.json").is_file() and (rec / "trace.npz").is_file()
    bad = _run("extract", "no-such-sample", cwd=tmp_path)
    assert bad.returncode == 1 and "no bundled sample 'no-such-sample'" in bad.stderr
