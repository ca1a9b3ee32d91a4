"""``recording.json``'s owner type: old files read (host as a string), bad ones are one clear line."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from firecracer import samples
from firecracer.errors import FormatError
from firecracer.formats import RecordingFacts, merge_recording

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*/recording.json")), ids=lambda p: p.parent.name)
def test_fixtures_read_and_round_trip(path: Path, tmp_path: Path) -> None:
    facts = RecordingFacts.read(path)
    doc = json.loads(path.read_text())
    facts.write(tmp_path / "recording.json")
    back = json.loads((tmp_path / "recording.json").read_text())
    assert back == {**doc, "format": "firecracer-recording", "version": 1}


@pytest.mark.parametrize("name", samples.names())
def test_samples_host_string_reads_as_object(name: str) -> None:
    with tarfile.open(samples.path(name)) as tar:
        fh = tar.extractfile("recording.json")
        assert fh is not None
        doc = json.load(fh)
    assert isinstance(doc["host"], str)              # written before the owner type
    facts = RecordingFacts.from_dict(doc)
    assert facts.host == {"label": doc["host"]} and facts.to_dict()["host"] == {"label": doc["host"]}


@pytest.mark.parametrize(("doc", "why"), [
    ([1], "must hold a JSON object"),
    ({"format": "firecracer-trace"}, "format is 'firecracer-trace'"),
    ({"version": 2}, "version 2"),
    ({"guest": "x"}, "'guest' must be an object"),
    ({"timings_ms": {"resume": "fast"}}, "timings_ms.resume must be a number"),
    ({"strategy": 3}, "'strategy' must be a string"),
])
def test_bad_documents_name_the_file_and_key(tmp_path: Path, doc: object, why: str) -> None:
    p = tmp_path / "recording.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=why) as err:
        RecordingFacts.read(p)
    assert str(err.value).startswith(str(p))


def test_merge_keeps_other_stages_keys(tmp_path: Path) -> None:
    RecordingFacts(source="firecracker", vmm={"firecracker": "1.14.2"}, extra={"probe": {"elf": "x"}}) \
        .write(tmp_path / "recording.json")
    merge_recording(tmp_path, {"vmm": {"kernel": "6.1"}, "host": "KVM"}, {"source": "local"})
    facts = RecordingFacts.read(tmp_path / "recording.json")
    assert facts.source == "firecracker" and facts.vmm == {"firecracker": "1.14.2", "kernel": "6.1"}
    assert facts.host == {"label": "KVM"} and facts.extra == {"probe": {"elf": "x"}}
