"""Running ``firecracer`` as a user does, for tests: a subprocess, and the one-line error it must give."""

from __future__ import annotations

import subprocess
import sys


def fcr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exit 1, exactly one line on stderr, no traceback."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("firecracer: error: "), res.stderr
    return lines[0]
