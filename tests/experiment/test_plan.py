"""The matrix and its shards: every run exactly once, shards contiguous and stable."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from firecracer.errors import FirecracerError
from firecracer.experiment.plan import Shard, group_by_variant, plan_runs
from firecracer.experiment.spec import Spec


def test_matrix_size_order_and_ids(make_spec: Callable[..., Spec]) -> None:
    spec = make_spec(repetitions=3)
    runs = plan_runs(spec)
    assert len(runs) == 2 * 4 * 3
    assert [r.index for r in runs] == list(range(len(runs)))
    assert len({r.run_id for r in runs}) == len(runs)
    assert runs[0].run_id == "small.file.r1"
    assert runs[1].run_id == "small.ondemand.r1"  # strategies interleave within a repetition
    assert runs[4].run_id == "small.file.r2"
    assert [v.name for v, _ in group_by_variant(runs)] == ["small", "big"]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16, 24, 40])
def test_shards_partition_the_plan(make_spec: Callable[..., Spec], n: int) -> None:
    spec = make_spec(repetitions=3)
    full = plan_runs(spec)
    parts = [plan_runs(spec, Shard(i, n)) for i in range(1, n + 1)]
    assert [r for p in parts for r in p] == full  # disjoint, complete, in order
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_parse() -> None:
    assert Shard.parse("2/4") == Shard(2, 4)
    assert str(Shard.parse(" 1 / 1 ")) == "1/1"
    for bad in ("0/2", "3/2", "1/0", "x", "1-2"):
        with pytest.raises(FirecracerError, match="--shard"):
            Shard.parse(bad)
