"""The console object: lines as they arrive (with when they began), verdicts from recorded consoles."""

from __future__ import annotations

import re
from pathlib import Path

from firecracer.guest.jvm import JVM_CRASH, JVM_DEATH_RX
from firecracer.vmm.console import Console

SERIAL = Path(__file__).resolve().parents[1] / "fixtures" / "serial"


def test_reader_gives_complete_lines_and_when_they_began(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"old\n")
    con = Console(log)
    reader = con.reader(con.size())
    assert reader.poll() == [] and not reader.grew
    with open(log, "ab") as f:
        f.write(b"PROBE RES")
    assert reader.poll() == [] and reader.grew          # half a line: read again, nothing to parse yet
    with open(log, "ab") as f:
        f.write(b"ULT ok\nnext")
    [(line, t_first, t_done)] = reader.poll()
    assert line == "PROBE RESULT ok" and t_first <= t_done


def test_verdicts_of_recorded_consoles(tmp_path: Path) -> None:
    con = Console(SERIAL / "jvm-sigill-then-stall.log")
    assert con.broken() is not None and con.broken().startswith("rcu: INFO")   # no JVM pattern given
    assert con.broken(also=[JVM_CRASH]) == \
        "the JVM crashed: SIGILL (0x4) at pc=0x00007f05dd99f7c4, pid=37, tid=38"
    said = Console(SERIAL / "jvm-crash.log").said(also=[JVM_DEATH_RX])
    assert said is not None and said.startswith("A fatal error has been detected")
    assert Console(tmp_path / "missing.log").said() is None
    found = Console(SERIAL / "rcu-stall.log").search(re.compile("stalls"))
    assert found is not None and found[0].group(0) == "stalls"
