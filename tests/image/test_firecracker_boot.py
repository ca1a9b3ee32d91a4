"""The built kernel starts in real Firecracker (on PVM hosts it is stopped after its first lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from firecracer.image.fcboot import boot_in_firecracker


@pytest.mark.firecracker
@pytest.mark.timeout(120)
def test_kernel_prints_its_first_lines_in_firecracker(fc_any: Path, built_kernel: Path) -> None:
    res = boot_in_firecracker(fc_any, built_kernel, None, seconds=20)
    if res.unsupported:
        pytest.skip(res.unsupported)
    text = "\n".join(res.console)
    assert res.kernel_started, text[-2000:]
    assert "Linux version 6.1" in text
    assert "console [ttyS0] enabled" in text or "Command line:" in text
