"""A Ctrl-C that lands while a child is being spawned must not lose the child (it would run on)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from firecracer.vmm.process import deferred_signals


def test_sigint_during_spawn_is_raised_after_the_child_is_known() -> None:
    proc: subprocess.Popen[bytes] | None = None
    with pytest.raises(KeyboardInterrupt), deferred_signals() as deferred:
        os.kill(os.getpid(), signal.SIGINT)  # arrives "inside" the spawn window
        proc = subprocess.Popen(["sleep", "30"])
        try:
            deferred.deliver()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    assert proc is not None and proc.returncode is not None  # known, and cleaned up


def test_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with deferred_signals():
        assert signal.getsignal(signal.SIGINT) != before[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
