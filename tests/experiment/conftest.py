"""Helpers for the experiment tests: small host-replay specs (no VM) written into tmp dirs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from firecracer.experiment.spec import Spec, load_spec


def spec_text(name: str = "t",
              strategies: tuple[str, ...] = ("file", "ondemand", "fault-around:16", "prefetch"),
              variants: tuple[tuple[str, int], ...] = (("small", 64), ("big", 256)), repetitions: int = 2,
              mem_mib: int = 16, extra_variant: str = "", viewer: bool = False) -> str:
    """A host-replay study: each variant a seeded scattered working set of the given size.

    Per-run viewer pages are off unless asked for (they cost ~0.3 s a run).
    """
    strat = ", ".join(f'"{s}"' for s in strategies)
    out = [f'[study]\nname = "{name}"\nbackend = "host-replay"\nrepetitions = {repetitions}\n'
           f"strategies = [{strat}]\nviewer = {str(viewer).lower()}\n\n[guest]\nmem_size_mib = {mem_mib}\n"]
    for i, (vname, pages) in enumerate(variants):
        out.append(f'\n[[variant]]\nname = "{vname}"\nworking_set_pages = {pages}\nseed = {i + 1}\n')
    return "".join(out) + extra_variant


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., Spec]:
    """Write a host-replay spec (see :func:`spec_text`) to tmp_path/spec.toml and load it."""
    def make(**kw: object) -> Spec:
        p = tmp_path / f"{kw.get('name', 't')}.toml"
        p.write_text(spec_text(**kw))  # type: ignore[arg-type]
        return load_spec(p)
    return make
