"""Stages import downward only: a test that reads every module's imports (ast), so the layering stays true.

The floors, top to bottom (docs/layout.md says why; DESIGN.md draws the same picture):

====  =====================================================  ==========================================
rank  units (top-level modules or packages of firecracer)    what they are
====  =====================================================  ==========================================
5     cli, __main__                                          the command line
4     demo, experiment, placement                            whole workflows
3     agentclient, analysis, guest, host, image, viz         what runs in, talks to or reads from a guest
2     uffd, vmm, lab                                         the page server, Firecracker, the QEMU lab
1     fsio, formats, ramlayout, hugepages, fcversion,        leaf facts many stages need
      samples
0     errors, paths, the package root (``__version__``)      the floor
====  =====================================================  ==========================================

An import is allowed when it goes to a lower rank, stays in its own unit, or is one of the same-floor
pairs in :data:`SAME_FLOOR` (each named, so a new one is a decision, and they can never form a cycle:
the test checks that they are acyclic). Function-local imports count like top-level ones: a deferred
import does not make an upward dependency acceptable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "firecracer"

RANKS: dict[str, int] = {
    "cli": 5, "__main__": 5,
    "demo": 4, "experiment": 4, "placement": 4,
    "agentclient": 3, "analysis": 3, "guest": 3, "host": 3, "image": 3, "viz": 3,
    "uffd": 2, "vmm": 2, "lab": 2,
    "fsio": 1, "formats": 1, "ramlayout": 1, "hugepages": 1, "fcversion": 1, "samples": 1,
    "errors": 0, "paths": 0, "": 0,
}

#: Allowed imports between different units of one floor: (importer, imported).
SAME_FLOOR: frozenset[tuple[str, str]] = frozenset({
    ("__main__", "cli"),        # python -m firecracer
    ("formats", "fsio"),        # recording.json is read bounded and written atomically
    ("samples", "formats"),     # a sample's recording.json is read by its owner type
    ("vmm", "uffd"),            # the restore starts the page server and reads its memory-file map
    ("viz", "analysis"),        # the viewer shows attributed recordings
    ("agentclient", "guest"),   # the host side of a collect reads what the guest collector wrote
    ("agentclient", "analysis"),  # ... completes it with numpy (analysis.memmap)
    ("agentclient", "host"),    # ... and says which host it ran on
    ("image", "guest"),         # the image ships the guest code
    ("image", "agentclient"),   # image check asks the booted image's agent
    ("demo", "experiment"),     # the demo is a small study
    ("demo", "placement"),      # ... that may run in the lab
})


def _unit(module: str) -> str:
    """``firecracer.uffd.trace`` → ``uffd``; ``firecracer`` → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported firecracer module)`` of every import statement in ``path``, nested ones too."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "firecracer"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "firecracer":
            if node.module == "firecracer":  # from firecracer import hugepages, __version__
                out += [(node.lineno, f"firecracer.{a.name}" if f"{a.name}" in RANKS else "firecracer")
                        for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "workload" not in p.parts)


def test_every_unit_has_a_rank() -> None:
    units = {_unit(_module_of(p)) for p in _sources()}
    assert units <= set(RANKS), f"give these a floor in RANKS: {sorted(units - set(RANKS))}"


def test_same_floor_pairs_are_acyclic_and_on_one_floor() -> None:
    for a, b in SAME_FLOOR:
        assert RANKS[a] == RANKS[b], (a, b)
        assert (b, a) not in SAME_FLOOR, (a, b)
    # no longer cycles either: a topological order exists
    left = set(SAME_FLOOR)
    nodes = {u for pair in left for u in pair}
    while nodes:
        free = {n for n in nodes if not any(a == n for a, _ in left)}
        assert free, f"cycle among {sorted(nodes)}"
        nodes -= free
        left = {(a, b) for a, b in left if b not in free}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward(path: Path) -> None:
    src_unit = _unit(_module_of(path))
    bad = []
    for line, mod in _imports(path):
        dst_unit = _unit(mod)
        if dst_unit == src_unit or RANKS[dst_unit] < RANKS[src_unit] or (src_unit, dst_unit) in SAME_FLOOR:
            continue
        bad.append(f"{path.relative_to(SRC)}:{line} imports {mod} (rank {src_unit or 'firecracer'}="
                   f"{RANKS[src_unit]} -> {dst_unit or 'firecracer'}={RANKS[dst_unit]})")
    assert not bad, "imports against the layering (tests/test_layering.py):\n" + "\n".join(bad)
