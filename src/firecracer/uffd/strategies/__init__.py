"""Restore strategies (what to install, when): one module per strategy, each carrying its behaviour.

The string is what ``--strategy`` takes (``vm restore``, ``uffd serve``) and traces record:

* ``ondemand`` — one page per fault (:mod:`.ondemand`);
* ``fault-around:N`` — on a fault, the aligned block of N pages around it, missing pages only
  (:mod:`.faultaround`);
* ``prefetch:TRACE`` — REAP-style record and replay: before resume, install the working set recorded in
  TRACE (from its ``.ws`` file), then serve misses on demand; ``prefetch-background:TRACE`` installs it
  from a thread racing the vCPUs; ``@touch`` / ``@file`` after the name pick another loading order
  than first-touch runs (``prefetch-background@touch:TRACE``; :mod:`.prefetch`);
* ``eager`` — copy all of memory at the hand-off (:mod:`.eager`).

A new strategy is one module here with a :class:`~.base.Strategy` subclass (its ``name``, ``usage``,
``parse`` if it takes an argument, and the hooks it needs), added to :data:`STRATEGIES` below.
docs/uffd.md ("Adding a strategy") walks through it.
"""

from __future__ import annotations

from firecracer.errors import FirecracerError
from firecracer.uffd.strategies.base import Strategy
from firecracer.uffd.strategies.eager import Eager
from firecracer.uffd.strategies.faultaround import FaultAround
from firecracer.uffd.strategies.ondemand import OnDemand
from firecracer.uffd.strategies.prefetch import Prefetch, PrefetchBackground

__all__ = ["STRATEGIES", "Eager", "FaultAround", "OnDemand", "Prefetch", "PrefetchBackground", "Strategy",
           "parse_strategy"]

#: Every strategy, by the name ``--strategy`` gives it (in the order the usage line lists them).
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (OnDemand, FaultAround, Prefetch, PrefetchBackground, Eager)
}


def parse_strategy(text: str) -> Strategy:
    """Parse ``NAME[@OPTION]`` or ``NAME[@OPTION]:ARG`` (``ondemand`` | ``fault-around:N`` |
    ``prefetch[-background][@runs|touch|file]:TRACE`` | ``eager``).

    Raises ``FirecracerError`` naming the accepted forms; a prefetch TRACE must exist.
    """
    head, _, arg = text.partition(":")
    name, at, option = head.partition("@")
    cls = STRATEGIES.get(name)
    if name.startswith("readahead"):  # the File backend's, not a page server's
        raise FirecracerError(f"{text!r}: readahead fills the page cache that Firecracker's File backend "
                              f"reads; use 'firecracer vm restore SNAPDIR --strategy {text}' without --uffd")
    if cls is None or (arg and not cls.takes_arg):
        forms = [c.usage for c in STRATEGIES.values()]
        raise FirecracerError(f"unknown strategy {text!r} (use {', '.join(forms[:-1])} or {forms[-1]})")
    if at and option not in cls.options:
        raise FirecracerError(f"strategy {text!r}: {name} takes "
                              + (f"@{' | @'.join(cls.options)}" if cls.options else "no @option"))
    strategy = cls.parse(arg)
    return strategy.with_option(option) if at else strategy
