"""The format names and owner pids every stage shares, and ``recording.json``'s owner type.

Standard library only (plus ``errors`` and ``fsio``, the same): the image copies these into the guest
beside ``guest/`` (image/rootfs.py), so the guest collectors and the host analysis import one definition of
each name instead of two that can drift. docs/formats.md describes the files.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from firecracer.errors import FormatError
from firecracer.fsio import atomic_write, read_json

#: ``meta.format`` of ``memmap.npz``
MEMMAP_FORMAT = "firecracer-memmap"
#: ``meta.format`` of ``trace.npz``
TRACE_FORMAT = "firecracer-trace"
#: ``format`` of ``recording.json``
RECORDING_FORMAT = "firecracer-recording"

#: owner pids of the memmap's non-process sections (the seed's ``= 0 kernel``, ``= -1 pagecache``)
PID_KERNEL = 0
PID_PAGECACHE = -1
PID_FREE = -2

#: ``address_space`` of a process restore's recording (docs/crac.md): the JVM's CRIU images laid out
#: by virtual address, not guest-physical memory
ADDRESS_SPACE_PROCESS = "criu-image"

#: bytes a ``recording.json`` may have (a larger one is not ours)
RECORDING_LIMIT = 16 << 20


def is_process_recording(meta: dict[str, Any]) -> bool:
    """A recording (or memmap) in image space, a process restore, rather than guest-physical memory."""
    return meta.get("address_space") == ADDRESS_SPACE_PROCESS


def now_iso() -> str:
    """UTC now, ISO-8601 to the second (what ``created`` holds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (py<3.11 guests)


def this_host(label: str | None = None) -> dict[str, Any]:
    """``recording.json``'s ``host`` object for this machine; ``label`` says what kind of host it is
    (``KVM``, ``PVM-nested KVM``, the lab's name: ``firecracer.host.host_label``)."""
    out: dict[str, Any] = {"kernel": platform.release(), "machine": platform.machine(),
                           "hostname": platform.node()}
    if label:
        out["label"] = label
    return out


_OBJECTS = ("vmm", "guest", "host", "timings_ms", "metrics", "first_request")
_STRINGS = ("created", "source", "label", "strategy", "address_space")


@dataclass
class RecordingFacts:
    """``recording.json``: what was run and measured (docs/formats.md). The one reader and writer.

    Known keys are typed fields; every other key (a backend's own block: ``probe``, ``collect``,
    ``seed_files`` …) rides in ``extra`` and is written back unchanged. A new one is ``created`` now.
    ``host`` is always an object: old files that hold a string (``"KVM"``, the lab's name) read as
    ``{"label": that string}``.
    """

    source: str | None = None
    created: str | None = field(default_factory=lambda: now_iso())
    label: str | None = None
    strategy: str | None = None
    vmm: dict[str, Any] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)
    jvm: dict[str, Any] | None = None
    host: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    address_space: str | None = None
    #: the request a restore answered first: ``method``, ``path`` and ``text`` (``POST /x a=1``)
    first_request: dict[str, Any] | None = None
    timings_comparable_to_kvm: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: object, path: str | Path = "recording.json") -> RecordingFacts:
        """Validate a parsed ``recording.json``; :raises FormatError: naming ``path`` and the key."""
        if not isinstance(doc, dict):
            raise FormatError(path, 0, "recording.json must hold a JSON object")
        d = dict(doc)
        fmt = d.pop("format", RECORDING_FORMAT)
        if fmt != RECORDING_FORMAT:
            raise FormatError(path, 0, f"format is {fmt!r}, expected {RECORDING_FORMAT!r}")
        version = d.pop("version", 1)
        if version != 1:
            raise FormatError(path, 0, f"version {version!r} is not supported (this reads version 1)")
        if isinstance(d.get("host"), str):           # older writers: the host's label alone
            d["host"] = {"label": d["host"]}
        for key in _OBJECTS:
            if d.get(key) is None:
                d.pop(key, None)
            elif not isinstance(d[key], dict):
                raise FormatError(path, 0, f"'{key}' must be an object, not {type(d[key]).__name__}")
        for key in _STRINGS:
            if d.get(key) is not None and not isinstance(d[key], str):
                raise FormatError(path, 0, f"'{key}' must be a string, not {type(d[key]).__name__}")
        if d.get("jvm") is not None and not isinstance(d["jvm"], dict):
            raise FormatError(path, 0, f"'jvm' must be an object or null, not {type(d['jvm']).__name__}")
        bad = [k for k, v in d.get("timings_ms", {}).items()
               if isinstance(v, bool) or not isinstance(v, int | float)]
        if bad:
            raise FormatError(path, 0, f"timings_ms.{bad[0]} must be a number of milliseconds")
        tck = d.get("timings_comparable_to_kvm")
        if tck is not None and not isinstance(tck, bool):
            raise FormatError(path, 0, "'timings_comparable_to_kvm' must be true or false")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: d.pop(k) for k in list(d) if k in names}
        known.setdefault("created", None)             # an old file without one is not made younger
        return cls(**known, extra=d)

    @classmethod
    def read(cls, path: str | Path) -> RecordingFacts:
        """Read and validate ``path`` (a regular file of at most 16 MiB holding one JSON object)."""
        return cls.from_dict(read_json(path, limit=RECORDING_LIMIT, what="recording.json"), path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``format``, ``version``, the fields that are set, then ``extra``."""
        out: dict[str, Any] = {"format": RECORDING_FORMAT, "version": 1}
        for f in fields(self):
            val = getattr(self, f.name)
            if f.name != "extra" and val is not None and val != {}:
                out[f.name] = val
        if self.jvm is not None:
            out["jvm"] = self.jvm
        for key, val in self.extra.items():
            out.setdefault(key, val)
        return out

    def write(self, path: str | Path) -> Path:
        """Write atomically (a temporary file renamed over ``path``)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n",
                            "recording.json")

    def merged(self, updates: dict[str, Any], defaults: dict[str, Any] | None = None) -> RecordingFacts:
        """A copy where ``updates`` replace keys (objects merge into objects) and ``defaults`` fill keys
        that are absent (e.g. ``source``, which the vmm stage knows best)."""
        doc = self.to_dict()
        for key, val in (defaults or {}).items():
            doc.setdefault(key, val)
        for key, val in updates.items():
            old = doc.get(key)
            if key == "host" and isinstance(val, str):
                val = {"label": val}
            doc[key] = {**old, **val} if isinstance(val, dict) and isinstance(old, dict) else val
        return RecordingFacts.from_dict(doc)


def merge_recording(directory: str | Path, updates: dict[str, Any],
                    defaults: dict[str, Any] | None = None) -> Path:
    """Create or update ``directory/recording.json`` (:meth:`RecordingFacts.merged`): several stages
    (the restore, the collect) each add their facts to one file."""
    path = Path(directory) / "recording.json"
    old = RecordingFacts.read(path) if path.exists() else RecordingFacts()
    return old.merged(updates, defaults).write(path)
