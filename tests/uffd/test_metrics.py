"""The page server's metrics file: one type reads it (validated), unknown keys survive a round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firecracer.errors import FormatError
from firecracer.uffd.metrics import ServerMetrics

SESSION = {"session": 0, "strategy": "eager", "faults": 3, "pages": {"load": 2, "zero": 1},
           "pages_total": 3, "bytes_copied": 8192, "bytes_zeroed": 4096, "latency_us": {"p50": 4.5},
           "handshake_to_last_fault_ms": 1.5, "ended": "closed", "error": None,
           "prefetch": {"eager_ms": 2.5, "runs": 1}, "events": {"pagefault": 3}, "taxonomy": {"new": 1}}


def test_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    doc = {"ok": True, "error": None, "sessions": [SESSION], "traces": ["t.npz"], "compressed": {"x": 1}}
    m = ServerMetrics.from_dict(doc)
    assert m.first is not None and m.first.install_ms == 2.5 and m.first.bytes_served == 12288
    m.write(tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == doc
    assert ServerMetrics.read(tmp_path / "m.json") == m


@pytest.mark.parametrize(("doc", "why"), [
    ([], "must be a JSON object"),
    ({"sessions": []}, "ok is missing"),
    ({"ok": True, "sessions": [{"strategy": "x"}]}, r"sessions\[0\]\.faults is missing"),
    ({"ok": True, "sessions": [{**SESSION, "faults": "3"}]}, r"sessions\[0\]\.faults must be int"),
])
def test_bad_metrics_name_file_and_key(tmp_path: Path, doc: object, why: str) -> None:
    p = tmp_path / "m.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=why) as err:
        ServerMetrics.read(p)
    assert str(err.value).startswith(str(p))
