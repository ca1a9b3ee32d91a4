"""``vm.json``'s owner type: a round trip keeps every field, a hand-edited record is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firecracer.errors import FormatError
from firecracer.vmm.record import VmRecord


def test_round_trip(tmp_path: Path) -> None:
    rec = VmRecord(name="a", state="running", pid=12, pid_start=345, owner=(7, 8), config={"x": 1},
                   timings_ms={"boot": 1.5}, extra={"future": True})
    rec.write(tmp_path)
    assert (tmp_path / "vm.json").stat().st_mode & 0o077 == 0
    assert VmRecord.read(tmp_path) == rec
    assert json.loads((tmp_path / "vm.json").read_text())["owner"] == [7, 8]


@pytest.mark.parametrize(("doc", "why"), [
    ([], "must be a JSON object"),
    ({"pid": "12"}, "'pid' must be an integer"),
    ({"owner": [1]}, "'owner' must be"),
    ({"lifeline": "yes"}, "'lifeline' must be true or false"),
    ({"config": []}, "'config' must be an object"),
])
def test_bad_records(tmp_path: Path, doc: object, why: str) -> None:
    (tmp_path / "vm.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=why) as err:
        VmRecord.read(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "vm.json"))
    assert VmRecord.find(tmp_path) is None
