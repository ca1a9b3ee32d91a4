"""Real recordings shipped with the package, so ``firecracer demo`` shows a JVM's restore anywhere.

Each sample is ``firecracer/samples/<name>.tar.xz``: one recording directory (``recording.json``,
``trace.npz``, ``memmap.npz``, ``nmt.txt``, ``smaps/``, console logs) packed with xz. ``extract`` unpacks
one into a directory that ``firecracer analyze`` / ``view`` read like any recording.
"""

from __future__ import annotations

import json
import tarfile
from importlib import resources
from pathlib import Path

from firecracer.errors import FirecracerError, FormatError
from firecracer.formats import RECORDING_LIMIT, RecordingFacts

SUFFIX = ".tar.xz"


def _dir() -> Path:
    return Path(str(resources.files("firecracer") / "samples"))


def names() -> list[str]:
    """Names of the bundled samples (e.g. ``petclinic-default``, ``petclinic-thp-appcds``)."""
    d = _dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in d.glob(f"*{SUFFIX}"))


def path(name: str) -> Path:
    """The archive of sample ``name``; ``FirecracerError`` naming the known samples if absent."""
    p = _dir() / f"{name}{SUFFIX}"
    if not p.is_file():
        raise FirecracerError(f"no bundled sample {name!r}; known: {', '.join(names()) or 'none'}")
    return p


def extract(name: str, dest: str | Path) -> Path:
    """Unpack sample ``name`` into ``dest/<name>`` (replacing nothing outside it); returns that directory."""
    out = Path(dest) / name
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path(name), "r:xz") as tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()) or member.name.startswith(("/", "..")) \
                    or ".." in Path(member.name).parts:
                raise FirecracerError(f"{path(name)}: refusing archive member {member.name!r}")
        tar.extractall(out, filter="data")
    return out


def info(name: str) -> RecordingFacts:
    """``recording.json`` of sample ``name`` (validated) without unpacking the rest."""
    where = f"{path(name)}:recording.json"
    with tarfile.open(path(name), "r:xz") as tar:
        fh = tar.extractfile("recording.json")
        if fh is None:
            raise FirecracerError(f"{path(name)}: no recording.json")
        try:
            doc = json.loads(fh.read(RECORDING_LIMIT + 1))
        except ValueError as exc:
            raise FormatError(where, 0, f"recording.json is not valid JSON ({exc})") from None
        return RecordingFacts.from_dict(doc, where)


def pack(recording: str | Path, name: str, dest_dir: str | Path | None = None) -> Path:
    """Pack a recording directory as sample ``name`` (xz -9); snapshots are left out (too big to ship)."""
    src = Path(recording)
    if not (src / "recording.json").is_file():
        raise FirecracerError(f"{src}: not a recording directory (no recording.json)")
    dest = Path(dest_dir) if dest_dir else _dir()
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{name}{SUFFIX}"
    with tarfile.open(out, "w:xz", preset=9) as tar:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            if rel.parts[0] == "snapshot" and p.name in ("mem", "vmstate"):
                continue
            if p.is_file():
                tar.add(p, arcname=str(rel))
    return out
