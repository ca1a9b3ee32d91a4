"""Restored bytes per JVM NMT category for one run, via ``firecracer.analysis`` (join + tables).

A JVM study collects memmap + NMT once per variant, before the snapshot (``variants/<name>/``), and each
run's page server writes ``trace.npz`` (``runs/<id>/``); a run directory may also carry its own memmap and
NMT. Runs without NMT (the probe guest, File restores without a trace) have no categories.
"""

from __future__ import annotations

from pathlib import Path

from firecracer.analysis import attribute, tables
from firecracer.analysis.recording import Recording, load_recording, load_trace


def _has_owners(d: Path) -> bool:
    return (d / "nmt.txt").exists() and ((d / "memmap.npz").exists() or (d / "memmap.txt").exists())


def restored_by_category(rundir: Path, variant_dir: Path | None = None) -> dict[str, int] | None:
    """Bytes restored per NMT category (``restored_kb`` of the analysis table × 1024), or None.

    Owners (memmap + nmt.txt) come from ``rundir`` when present, else from ``variant_dir``; the restore
    order from ``rundir/trace.npz``. Raises ``FormatError`` if one of those files is malformed.
    """
    trace_path = rundir / "trace.npz"
    if not trace_path.exists():
        return None
    owners_dir = rundir if _has_owners(rundir) else variant_dir
    if owners_dir is None or not _has_owners(owners_dir):
        return None
    owners = load_recording(owners_dir)
    rec = Recording(rundir, owners.meta, owners.memmap, load_trace(trace_path), owners.nmt)
    table = tables(attribute(rec))["nmt_categories"]
    if not table.rows:
        return None
    col = table.columns.index("restored_kb")
    return {str(row[0]): int(row[col]) * 1024 for row in table.rows}
