"""Fixtures for the guest collectors and agent: a real NMT-enabled JVM (module-scoped, always stopped)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firecracer.guest import workload


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (pagemap PFNs, /proc/kpageflags, /proc/kpagecount)")


@pytest.fixture(scope="module")
def jvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[workload.RunningJvm]:
    """A running ``FcrIdle`` JVM with -XX:NativeMemoryTracking=detail; killed after the module."""
    why = workload.java_available()
    if why:
        pytest.skip(why)
    running = workload.start_jvm(Path(tmp_path_factory.mktemp("jvm")))
    try:
        yield running
    finally:
        running.stop()
