"""What every strategy is: the base class the page server's session calls.

A strategy is a frozen dataclass (one instance is shared by every session of a server, so per-session
state lives in the :class:`~firecracer.uffd.session.Session`). It carries its own behaviour:

* ``at_handoff(s)``: what happens once the hand-off arrived, before the first fault is served (install
  everything, install a working set, start a background job with ``s.start_background``);
* ``serve_fault(s, …)``: the extent of one fault that the fast loops did not serve (default: the one
  page, from the memory file or as zeros);
* ``fast_path``: whether the fast single-fault loops may run (the C ``fc_serve`` loop and the inline
  blocking loop install the one missing data page of a fault, exactly what the default ``serve_fault``
  does; a strategy that serves a fault otherwise, like ``fault-around``, sets it False);
* ``trace``: a recorded trace whose working set the server prepares before listening and maps for every
  session (``s.ws``), or None;
* ``records_working_set``: after serving, the server writes the working-set file beside the trace it
  recorded (so a later ``prefetch:TRACE`` finds it ready);
* ``metrics(s)``: its block of the session's metrics (``prefetch`` in the metrics JSON), or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from firecracer.uffd.handshake import Region
    from firecracer.uffd.session import Session


@dataclass(frozen=True)
class Strategy:
    """A parsed ``--strategy`` value and the behaviour it names (see the module doc)."""

    #: The name before ``:`` in ``--strategy`` (and the start of traces' ``meta.strategy``).
    name: ClassVar[str] = ""
    #: How it is written, for the error that lists the accepted forms (``fault-around:N``).
    usage: ClassVar[str] = ""
    #: Whether ``NAME:ARG`` takes an argument (one that does not refuses ``NAME:x`` as unknown).
    takes_arg: ClassVar[bool] = False
    fast_path: ClassVar[bool] = True
    records_working_set: ClassVar[bool] = False

    #: ``NAME@OPTION`` values it accepts (``prefetch@touch``); empty: none.
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, arg: str) -> Strategy:
        """The strategy for ``NAME:arg`` (``arg`` is ``""`` without one); ``FirecracerError`` if bad."""
        return cls()

    def with_option(self, option: str) -> Strategy:
        """This strategy with ``NAME@option`` applied (``option`` is one of ``options``)."""
        return self

    @property
    def load_order(self) -> str | None:
        """The working-set loading order (``uffd.workingset.ORDERS``) when ``trace`` is set."""
        return None

    def __str__(self) -> str:
        return self.name

    @property
    def trace(self) -> Path | None:
        """The recorded trace whose working set this strategy installs, or None."""
        return None

    def at_handoff(self, s: Session) -> None:
        """Called once the hand-off was received, before the first fault is served (peer alive)."""

    def serve_fault(self, s: Session, r: Region, page: int, off: int, idx: int, st: int, wflag: int, fi: int,
                    t_read: int, dontwake: bool) -> None:
        """Serve fault number ``fi`` on ``page`` (file offset ``off``, page index ``idx``, state ``st``:
        missing or removed; ``wflag``: its trace flags) in region ``r``. ``dontwake``: other faults were
        read with it and the session wakes them together. Default: that one page."""
        s.install_page(page, off, st, wflag, fi, t_read, dontwake)

    def metrics(self, s: Session) -> dict[str, Any] | None:
        """This strategy's block of session ``s``'s metrics (key ``prefetch``), or None."""
        return None
