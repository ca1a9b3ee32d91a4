"""The DevTools-pipe driver owns its Chromium: errors are typed, nothing outlives ``close()``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firecracer.viz.browser import Browser, BrowserError, find_chromium


def test_a_browser_that_dies_at_once_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrowserError, match=r"DevTools .*pipe"):
        Browser(executable=str(fake), timeout=10)


def test_close_ends_the_process_group_and_removes_the_profile(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CHROMIUM)")
    page = tmp_path / "p.html"
    page.write_text("<!DOCTYPE html><p id=x>hello</p>")
    b = Browser(timeout=60)
    pid, profile = b.pid, b.profile
    try:
        b.open(page.as_uri())
        assert b.evaluate("document.getElementById('x').textContent") == "hello"
        with pytest.raises(BrowserError, match="JS error"):
            b.evaluate("no_such_name()")
        assert b.screenshot()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        b.close()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not Path(profile).exists()
    b.close()   # twice is fine
