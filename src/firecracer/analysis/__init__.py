"""analysis: turn a recording into answers (which owners' pages a restore needed, how scattered, shared).

Public API (stable; the viewer and the experiment runner build on it)::

    from firecracer.analysis import load_recording, assemble_from_seed, attribute, tables, compare

    rec = load_recording("recording/")            # Recording: meta, memmap, trace, nmt
    att = attribute(rec)                          # Attribution: per-row / per-phys / per-trace owners
    tabs = tables(att)                            # dict name -> Table (columns, rows), plus "totals"
    cmp = compare(attribute(rec_a), attribute(rec_b))   # Comparison tables

Modules: ``addr`` (file_off ↔ gpa), ``nmt`` (jcmd NMT parser), ``memmap`` (memmap.npz),
``seedmemmap`` (seed ``= / v / p`` text), ``recording`` (directories, seed import), ``join``
(attribution), ``tables`` (reports), ``compare`` (two recordings). ``docs/analysis.md`` explains them.
"""

from __future__ import annotations

# Eager on purpose: the functions ``tables`` and ``compare`` share their modules' names, and binding
# them here (after the submodule import) keeps ``firecracer.analysis.tables`` the function.
from firecracer.analysis.compare import compare
from firecracer.analysis.join import attribute
from firecracer.analysis.recording import assemble_from_seed, load_recording
from firecracer.analysis.tables import tables

__all__ = ["assemble_from_seed", "attribute", "compare", "load_recording", "tables"]
