"""The 2 MiB huge-page pool: reading it, the one-line checks, and a reservation undone on every exit path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firecracer import hugepages
from firecracer.hugepages import HugePagesError, Reservation, check_pool, pool


def _fake_sysfs(tmp_path: Path, total: int, free: int, resv: int = 0) -> Path:
    d = tmp_path / "hugepages-2048kB"
    d.mkdir()
    for name, v in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", resv),
                    ("surplus_hugepages", 0), ("nr_overcommit_hugepages", 0)):
        (d / name).write_text(f"{v}\n")
    return d


def test_pool_and_checks_say_what_is_missing(tmp_path: Path) -> None:
    sysfs = _fake_sysfs(tmp_path, total=10, free=8, resv=3)
    p = pool(sysfs)
    assert (p.total, p.free, p.reserved, p.available) == (10, 8, 3, 5)
    assert check_pool(10, "microVM a", sysfs) == p  # 5 pages: fits exactly
    with pytest.raises(HugePagesError) as e:
        check_pool(128, "microVM a", sysfs)
    msg = str(e.value)
    assert "microVM a: 128 MiB of guest memory needs 64 free 2 MiB huge pages, the pool has 5 " \
        "available" in msg
    assert "echo 69 > /proc/sys/vm/nr_hugepages" in msg and "\n" not in msg
    with pytest.raises(HugePagesError, match="not a multiple of 2 MiB"):
        check_pool(127, "microVM a", sysfs)
    with pytest.raises(HugePagesError, match="no 2 MiB huge pages on this kernel"):
        pool(tmp_path / "absent")
    ok, sentence, facts = hugepages.summary(sysfs)
    assert ok and "5 available" in sentence and facts["available"] == 5


def _can_reserve() -> str | None:
    if not hugepages.supported():
        return "no 2 MiB huge pages on this kernel"
    if not os.access(hugepages.NR_HUGEPAGES, os.W_OK):
        return f"{hugepages.NR_HUGEPAGES} is not writable (root needed)"
    return None


needs_pool = pytest.mark.skipif(_can_reserve() is not None, reason=str(_can_reserve()))


def _nr() -> int:
    return int(hugepages.NR_HUGEPAGES.read_text())


@needs_pool
def test_reservation_grows_the_pool_and_puts_it_back() -> None:
    before = _nr()
    want = pool().available + 3
    with Reservation(want) as r:
        assert r.added == 3 and _nr() == before + 3 and pool().available >= want
    assert _nr() == before
    with Reservation(0) as r:  # enough free already: nothing to do, nothing to undo
        assert r.added == 0
    assert _nr() == before


@needs_pool
def test_reservation_removes_only_its_own_pages_when_others_changed_the_pool() -> None:
    before = _nr()
    r = Reservation(pool().available + 2)
    try:
        hugepages.NR_HUGEPAGES.write_text(f"{_nr() + 1}\n")  # someone else adds one meanwhile
    finally:
        r.close()
    assert _nr() == before + 1
    hugepages.NR_HUGEPAGES.write_text(f"{_nr() - 1}\n")  # our stand-in for "someone else" undoes its page


@needs_pool
def test_sigkill_of_the_reserving_process_still_puts_the_pool_back() -> None:
    before = _nr()
    code = ("import sys, time\nfrom firecracer.hugepages import Reservation, pool\n"
            "r = Reservation(pool().available + 2)\nprint(r.added, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "2"
        assert _nr() == before + 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _nr() != before and time.monotonic() < deadline:  # the guard notices the pipe closing
            time.sleep(0.05)
        assert _nr() == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
