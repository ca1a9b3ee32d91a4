"""``--strategy`` specs parse as they always did, and each strategy carries its own behaviour flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from firecracer.errors import FirecracerError
from firecracer.uffd.strategies import STRATEGIES, FaultAround, Prefetch, PrefetchBackground, parse_strategy


def test_every_form_round_trips(tmp_path: Path) -> None:
    trace = tmp_path / "rec.npz"
    trace.write_bytes(b"")
    for text in ("ondemand", "eager", "fault-around:16", "fault-around:1", f"prefetch:{trace}",
                 f"prefetch-background:{trace}"):
        assert str(parse_strategy(text)) == text
    assert parse_strategy("fault-around") == FaultAround(16)
    assert parse_strategy(f"prefetch:{trace}") == Prefetch(trace)
    assert parse_strategy(f"prefetch-background:{trace}").trace == trace
    assert isinstance(parse_strategy(f"prefetch-background:{trace}"), PrefetchBackground)
    for order in ("touch", "file"):
        text = f"prefetch-background@{order}:{trace}"
        assert str(parse_strategy(text)) == text
        assert parse_strategy(text).load_order == order
    assert str(parse_strategy(f"prefetch@runs:{trace}")) == f"prefetch:{trace}"  # the default, said once
    assert parse_strategy("ondemand").load_order is None


@pytest.mark.parametrize(("text", "message"), [
    ("bogus", "unknown strategy 'bogus' (use ondemand, fault-around:N, prefetch[@ORDER]:TRACE, "
              "prefetch-background[@ORDER]:TRACE or eager)"),
    ("prefetch@random:x", "prefetch takes @runs | @touch | @file"),
    ("ondemand@touch", "ondemand takes no @option"),
    ("readahead:x.npz", "readahead fills the page cache that Firecracker's File backend reads"),
    ("ondemand:3", "unknown strategy 'ondemand:3'"),
    ("eager:x", "unknown strategy 'eager:x'"),
    ("fault-around:0", "fault-around needs a block size 1..262144 pages, got '0'"),
    ("fault-around:x", "fault-around needs a block size 1..262144 pages, got 'x'"),
    ("prefetch", "prefetch needs a recorded trace: prefetch:TRACE"),
    ("prefetch-background", "prefetch-background needs a recorded trace: prefetch-background:TRACE"),
    ("prefetch:/nonexistent.npz", "prefetch trace /nonexistent.npz does not exist"),
])
def test_errors_name_the_accepted_forms(text: str, message: str) -> None:
    with pytest.raises(FirecracerError) as exc:
        parse_strategy(text)
    assert message in str(exc.value)


def test_behaviour_flags() -> None:
    fast = {name for name, cls in STRATEGIES.items() if cls.fast_path}
    assert fast == {"ondemand", "prefetch", "prefetch-background", "eager"}
    records = {name for name, cls in STRATEGIES.items() if cls.records_working_set}
    assert records == {"ondemand", "fault-around"}
