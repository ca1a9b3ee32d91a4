"""A guest's serial console, as Firecracker writes it to ``serial.log``: reading, last lines, why it died.

Like ``Serial`` in Firecracker's own test framework, the console is an object of its own, so the VM
(``MicroVM``) stays a lifecycle and every reader of a console — readiness waits, the probe's timed
result lines, the restore benchmark — reads it one way. What a console line *means* for a particular
guest program (the JVM's fatal-error banner: ``firecracer.guest.jvm``'s ``JVM_CRASH`` and ``JVM_DEATH_RX``)
is passed in by whoever knows that program (``also=``), not filed here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: how much of the end of a console :meth:`Console.tail` reads to diagnose a death
TAIL_BYTES = 64 * 1024

#: console lines that say why a guest died: a kernel panic, the init's verdict, a Python exception in
#: the init, the OOM killer; a pattern with a ``sig`` group is quoted by that group
_DEATH_RX = (r"Kernel panic.*|firecracer-init: .*(?:exited|rebooting|failed).*|^\w*(?:Error|Exception)\b.*|"
             r"Out of memory: Killed process.*")

#: a guest that is alive but will not recover: its kernel reports a stalled CPU (seen in the lab: a vCPU
#: that never answers again)
_BROKEN_RX = re.compile(r"rcu: INFO: \w+ detected stalls on CPUs.*|watchdog: BUG: soft lockup.*|"
                        r"Watchdog detected hard LOCKUP.*")

#: a pattern a guest program's crash matches, and how to name it ("the JVM crashed"): its ``sig`` group
#: (else the whole match) follows the name
Crash = tuple[re.Pattern[str], str]


def _quote(m: re.Match[str]) -> str:
    sig = m.groupdict().get("sig")
    return sig.strip() if sig else m.group(0).strip()


class ConsoleWaitError(Exception):
    """A wait for console output ended without it: the guest is gone, or the time ran out."""


class Console:
    """The serial log at ``log`` (written by Firecracker; this object only reads it)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def size(self) -> int:
        """Bytes of output so far: pass as ``since`` to read or wait only for what comes next."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def text(self, since: int = 0) -> str:
        """Output from byte offset ``since`` (undecodable bytes kept as surrogates)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "surrogateescape")
        except OSError:
            return ""

    def tail(self) -> str:
        """The last 64 KiB of output (what a diagnosis reads)."""
        return self.text(max(0, self.size() - TAIL_BYTES))

    def last_lines(self, n: int, tail: str | None = None) -> list[str]:
        """The last ``n`` non-empty lines (of ``tail``, else of :meth:`tail`), each cut at 200 characters:
        where a guest got to, for one-line errors."""
        text = self.tail() if tail is None else tail
        return [ln.strip()[:200] for ln in text.splitlines() if ln.strip()][-n:]

    def broken(self, since: int = 0, also: Sequence[Crash] = ()) -> str | None:
        """What the output after byte ``since`` says broke a guest that still runs, the earliest of: a
        stalled CPU, a crash in ``also`` ("the JVM crashed: SIGILL (0x4) at pc=…"); or None."""
        text = self.text(since)
        found = [(m.start(), m.group(0).strip()) for m in [_BROKEN_RX.search(text)] if m]
        found += [(m.start(), f"{name}: {_quote(m)}") for rx, name in also for m in [rx.search(text)] if m]
        return min(found)[1] if found else None

    def said(self, also: Sequence[re.Pattern[str]] = ()) -> str | None:
        """What the guest said last about its end, in one line: its verdicts (a panic, the init's, the
        OOM killer's, lines ``also`` matches), else its last three lines (one cut line alone says
        little)."""
        tail = self.tail()
        rx = re.compile("|".join([_DEATH_RX, *(p.pattern for p in also)]), re.MULTILINE)
        said = [_quote(m)[:200] for m in rx.finditer(tail)]
        if not said:
            said = self.last_lines(3, tail)
        return " / ".join(dict.fromkeys(said[-3:])) or None

    def search(self, rx: re.Pattern[str], since: int = 0) -> tuple[re.Match[str], int] | None:
        """The first match of ``rx`` after byte ``since`` (positions relative to ``since``) and the byte
        offset just past it, or None."""
        text = self.text(since)
        m = rx.search(text)
        if m is None:
            return None
        return m, since + len(text[:m.end()].encode("utf-8", "surrogateescape"))

    def wait(self, rx: re.Pattern[str], timeout: float, *, since: int = 0,
             gone: Callable[[], str | None] = lambda: None) -> tuple[re.Match[str], int]:
        """Poll (0.5 ms, backing off to 20 ms) until ``rx`` matches after byte ``since``: :meth:`search`'s
        answer. ``gone`` says why the guest can no longer print (or raises), None while it can.

        :raises ConsoleWaitError: ``gone`` said so, or ``timeout`` seconds passed (with the last output).
        """
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            found = self.search(rx, since)
            if found:
                return found
            why = gone()
            if why:
                raise ConsoleWaitError(f"serial output never matched {rx.pattern!r}: {why}")
            if time.monotonic() > deadline:
                tail = self.text(since)[-200:].strip().replace("\n", " | ")
                raise ConsoleWaitError(f"serial output did not match {rx.pattern!r} within {timeout:g} s "
                                       f"(last output: {tail!r})")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def reader(self, since: int = 0) -> LineReader:
        """Complete lines from byte ``since`` on, as they arrive (see :class:`LineReader`)."""
        return LineReader(self.log, since)


class LineReader:
    """Reads a growing console log line by line, noting when each line's first byte was seen.

    For timing a guest's output to well under a millisecond: the caller polls :meth:`poll` as often as
    it likes (a read of what is new, no parsing of what was read before).
    """

    def __init__(self, log: Path, since: int = 0) -> None:
        self.log = log
        self.pos = since
        self._buf = b""
        self._t_first: float | None = None
        #: the last :meth:`poll` read something (a line may be half-way: poll again at once)
        self.grew = False

    def poll(self) -> list[tuple[str, float, float]]:
        """The lines completed since the last call: ``(line, perf_counter when its first byte was seen,
        when it was complete)``; [] when nothing new arrived (or the log is not there yet)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        now = time.perf_counter()
        self.grew = bool(chunk)
        if not chunk:
            return []
        self.pos += len(chunk)
        if self._t_first is None:
            self._t_first = now
        self._buf += chunk
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            first = self._t_first if self._t_first is not None else now
            out.append((line.decode(errors="replace"), first, now))
            self._t_first = now if self._buf else None
        return out
