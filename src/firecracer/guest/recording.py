"""Fill a recording directory with memmap + NMT + smaps + facts, collected on this machine.

Writes, per docs/formats.md: ``memmap.npz`` (and ``memmap.txt`` in the seed's text format when asked),
``nmt.txt`` (jcmd VM.native_memory detail of the workload JVM, verbatim), ``smaps/PID.txt``, and merges
``recording.json`` (keys other stages wrote are kept). Standard library only, so it runs in a guest too;
collecting a guest from the host through its agent is ``firecracer.agentclient.collect``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.formats import merge_recording, this_host
from firecracer.guest import jvm, memmap
from firecracer.guest.seedfmt import write_seed_text


@dataclass
class CollectSummary:
    """What was written, for the CLI to render."""

    out: Path
    pages: int = 0
    owners: int = 0
    jvm_pid: int | None = None
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _pick_jvm(candidates: list[int], problems: list[str]) -> int | None:
    if not candidates:
        return None
    if len(candidates) > 1:
        problems.append(f"several JVMs {candidates}: took {candidates[0]} for nmt.txt (use --jvm to choose)")
    return candidates[0]


def collect_local(out: str | Path, *, pids: list[int] | None = None, jvm_pid: int | None = None,
                  sections: tuple[str, ...] = memmap.SECTIONS, seed: bool = False,
                  restrict_output_to: set[int] | None = None) -> CollectSummary:
    """Collect this machine into recording directory ``out`` (created if missing).

    ``pids``: processes to walk (default all). ``jvm_pid``: the JVM for nmt.txt/smaps (default the only
    ``java`` among ``pids``/all processes). ``restrict_output_to``: keep only these owner pids in the
    written memmap (e.g. ``{jvm, 0}`` for a small fixture). Raises ``memmap.CollectError`` when not root,
    ``memmap.NoSuchProcess`` before anything is read or written when none of ``pids`` exists (some
    missing among several are a problem note).
    """
    t0 = time.monotonic()
    outp = Path(out)
    summary = CollectSummary(outp)
    mm = memmap.collect(pids, sections=sections, exclude=(os.getpid(),), source="local")
    outp.mkdir(parents=True, exist_ok=True)
    if restrict_output_to is not None:
        mm = memmap.restrict(mm, restrict_output_to)
    for s in mm.meta.get("skipped", []):
        summary.problems.append(f"pid {s['pid']} skipped: {s['why']}")
    if jvm_pid is None:
        pool = pids if pids is not None else [p for p in mm.owner_pid if p > 0]
        jvm_pid = _pick_jvm([p for p in pool if jvm.is_java(p)], summary.problems)
    _write_common(outp, mm, summary, seed)
    jvm_facts: dict[str, Any] = {}
    if jvm_pid is not None:
        summary.jvm_pid = jvm_pid
        jvm_facts = {"pid": jvm_pid, "options": jvm.jvm_options(jvm_pid)}
        _save_text(outp, "nmt.txt", lambda: jvm.native_memory(jvm_pid, detail=True), summary)
        _save_text(outp, f"smaps/{jvm_pid}.txt", lambda: _read_smaps(jvm_pid), summary)
    skipped = {s["pid"] for s in mm.meta.get("skipped", [])}  # already a note: no second one for smaps
    for p in pids or []:
        if p != jvm_pid and p not in skipped:
            _save_text(outp, f"smaps/{p}.txt", lambda p=p: _read_smaps(p), summary)  # type: ignore[misc]
    summary.seconds = round(time.monotonic() - t0, 3)
    merge_recording(outp, {
        "source": "local",
        "guest": {"kernel": platform.release(), "mem_size_mib": mm.meta["phys_mem_bytes"] >> 20},
        "jvm": jvm_facts,
        "host": this_host(),
        "collect": {"collected": mm.meta.get("collected"), "seconds": summary.seconds,
                    "pages": summary.pages, "sections": list(sections), "problems": summary.problems},
    })
    summary.files.append("recording.json")
    return summary


def _read_smaps(pid: int) -> str:
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _save_text(out: Path, rel: str, produce: Callable[[], str], summary: CollectSummary) -> None:
    try:
        text = produce()
    except (jvm.JvmError, OSError) as exc:
        summary.problems.append(f"{rel}: {exc}")
        return
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    summary.files.append(rel)


def _write_common(out: Path, mm: memmap.Memmap, summary: CollectSummary, seed: bool) -> None:
    mm.write(out / "memmap.npz")
    summary.files.append("memmap.npz")
    summary.pages = mm.n_pages
    summary.owners = len(mm.owner_pid)
    if seed:
        write_seed_text(mm, out / "memmap.txt")
        summary.files.append("memmap.txt")

