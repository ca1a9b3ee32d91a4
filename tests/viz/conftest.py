"""Viewer fixtures: a synthetic recording (written once per session) and a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firecracer.viz.browser import Browser, find_chromium
from firecracer.viz.synthetic import make_recording


@pytest.fixture(scope="session")
def syn_rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MiB synthetic guest: kernel, page cache, bash, a JVM with NMT, free pages, a trace."""
    return make_recording(tmp_path_factory.mktemp("syn") / "rec", 256 << 20, seed=7)


@pytest.fixture(scope="session")
def syn_rec_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second synthetic recording (other seed) for compare mode."""
    return make_recording(tmp_path_factory.mktemp("synb") / "rec", 256 << 20, seed=8, restored_fraction=0.05)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium over the DevTools pipe; skips when no Chromium is installed."""
    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CHROMIUM)")
    with Browser(width=1400, height=900, timeout=60) as b:
        yield b
