"""docs/state.md and the README name every place the tool writes on its own, as the code defines them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firecracer import paths

ROOT = Path(__file__).resolve().parents[1]
STATE_DOC = ROOT / "docs" / "state.md"


def _cache_entries() -> set[str]:
    """Every ``cache_dir() / "NAME"`` the source writes to."""
    names: set[str] = set()
    for f in (ROOT / "src" / "firecracer").rglob("*.py"):
        names.update(re.findall(r'cache_dir\(\) / "([^"]+)"', f.read_text()))
    return names


def test_every_cache_entry_is_documented() -> None:
    entries = _cache_entries()
    assert {"bin", "images", "state"} <= entries  # the scan finds what paths.py defines
    doc = STATE_DOC.read_text()
    missing = [n for n in sorted(entries) if not re.search(rf"(^|[\s`/]){re.escape(n)}(/|\b)", doc, re.M)]
    assert not missing, f"docs/state.md does not say what these cache entries are: {missing}"


@pytest.mark.parametrize("doc", ["README.md", "docs/state.md"])
def test_state_and_cache_locations_are_documented(doc: str) -> None:
    text = (ROOT / doc).read_text()
    for needle in ("FIRECRACER_CACHE", "FIRECRACER_STATE", "/run/firecracer", "~/.cache/firecracer"):
        assert needle in text, f"{doc} does not mention {needle}"


def test_documented_defaults_are_the_code_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FIRECRACER_CACHE", raising=False)
    monkeypatch.delenv("FIRECRACER_STATE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.cache_dir() == tmp_path / ".cache" / "firecracer"
    assert paths.state_dir() == (Path("/run/firecracer") if paths.os.geteuid() == 0
                                 else tmp_path / ".cache" / "firecracer" / "state")
    monkeypatch.setenv("FIRECRACER_STATE", str(tmp_path / "st"))
    assert paths.state_dir() == tmp_path / "st"
