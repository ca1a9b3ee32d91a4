"""Regenerate the golden ``analyze --json`` outputs of the real recordings under tests/fixtures/.

    PYTHONPATH=src python tests/analysis/regen_golden.py

Recordings: ``local_jvm`` (a real JVM on the dev host, made by scripts/make_local_fixture.py) and
``probe_ondemand`` and ``probe_around16`` (real uffd restores of one probe-guest snapshot, made by
tests/analysis/make_probe_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOLDEN = FIXTURES / "analysis" / "golden"
RECORDINGS = ("local_jvm", "probe_ondemand", "probe_around16")


def analyze_json(name: str) -> dict[str, Any]:
    """What ``firecracer analyze FIXTURE --json`` prints, without the machine-specific path."""
    from firecracer.analysis import attribute, load_recording, tables
    from firecracer.analysis.tables import totals

    rec = load_recording(FIXTURES / name)
    att = attribute(rec)
    out = {"recording": rec.label, "totals": totals(att),
           "tables": {k: t.to_dicts() for k, t in tables(att).items()}}
    return json.loads(json.dumps(out))


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in RECORDINGS:
        (GOLDEN / f"{name}.json").write_text(json.dumps(analyze_json(name), indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN / (name + '.json')}")


if __name__ == "__main__":
    main()
