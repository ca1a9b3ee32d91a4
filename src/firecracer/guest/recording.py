"""Fill a recording directory with memmap + NMT + smaps + facts, from this machine or from the agent.

Writes, per docs/formats.md: ``memmap.npz`` (and ``memmap.txt`` in the seed's text format when asked),
``nmt.txt`` (jcmd VM.native_memory detail of the workload JVM, verbatim), ``smaps/PID.txt``, and merges
``recording.json`` (keys other stages wrote are kept). Standard library only, so it runs in a guest too.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.guest import jvm, memmap, npyio, seedfmt

RECORDING_FORMAT = "firecracer-recording"


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (py<3.11 guests)


def merge_recording_json(out: Path, updates: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Create or update ``recording.json``: keys in ``updates`` replace (dicts merge into) the old ones;
    keys in ``defaults`` are set only where absent (e.g. ``source``, which the vmm stage knows best)."""
    path = out / "recording.json"
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                doc = loaded
        except ValueError:
            doc = {}
    doc.setdefault("format", RECORDING_FORMAT)
    doc.setdefault("version", 1)
    doc.setdefault("created", _now())
    for key, val in (defaults or {}).items():
        doc.setdefault(key, val)
    for key, val in updates.items():
        if isinstance(val, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **val}
        else:
            doc[key] = val
    tmp = path.with_name("recording.json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_seed_text(mm: memmap.Memmap, path: Path, *, full_names: bool = False) -> int:
    """``memmap.txt`` in the seed's ``= / v / p`` format; returns the number of ``p`` lines."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
        n = seedfmt.write_seed(mm, fh, full_names=full_names)
    tmp.replace(path)
    return n


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
    merge_recording_json(outp, {
        "source": "local",
        "guest": {"kernel": platform.release(), "mem_size_mib": mm.meta["phys_mem_bytes"] >> 20},
        "jvm": jvm_facts,
        "host": {"kernel": platform.release(), "machine": platform.machine(), "hostname": platform.node()},
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


def collect_agent(client: Any, out: str | Path, *, pids: list[int] | None = None,
                  jvm_pid: int | None = None, seed: bool = False, source: str | None = None,
                  sections: list[str] | None = None) -> CollectSummary:
    """Collect a guest through an ``AgentClient`` into recording directory ``out``.

    The memmap is collected first (before jcmd touches the JVM), then NMT and smaps of the JVM.
    Agent errors for NMT/smaps are recorded as problems; a failing memmap raises ``AgentError`` (code
    ``no-such-process`` when none of ``pids`` exists in the guest), and then nothing is written.
    """
    from firecracer.guest.client import AgentError

    t0 = time.monotonic()
    outp = Path(out)
    summary = CollectSummary(outp)
    ping = client.ping()
    t_mm = time.monotonic()
    data, info = client.collect_memmap_info(pids=pids, sections=sections)
    outp.mkdir(parents=True, exist_ok=True)
    timings = {"memmap_s": round(time.monotonic() - t_mm, 3), "memmap_guest_s": info.get("seconds")}
    try:
        cols, meta = npyio.read_npz(io.BytesIO(data))
        mm = memmap.Memmap.from_columns(cols, meta)
    except ValueError as exc:
        raise AgentError(f"{client.address}: collect-memmap returned an unreadable archive: {exc}",
                         "bad-reply") from None
    (outp / "memmap.npz").write_bytes(data)
    summary.files.append("memmap.npz")
    summary.pages, summary.owners = mm.n_pages, len(mm.owner_pid)
    if sections is None or "kernel" in sections:
        # slab, page tables, stacks, vmalloc … belong to no section the agent walks: name them from
        # the guest's kpageflags, so a restore's pages are attributed, not "unknown"
        from firecracer.errors import FirecracerError
        from firecracer.guest.kernelpages import complete_memmap

        t_k = time.monotonic()
        try:
            per_class = complete_memmap(client, outp / "memmap.npz")
            timings["kernel_alloc_s"] = round(time.monotonic() - t_k, 3)
            timings["kernel_alloc_pages"] = sum(per_class.values())
        except (AgentError, FirecracerError) as exc:
            summary.problems.append(f"kernel allocations: {exc}")
    if seed:
        write_seed_text(mm, outp / "memmap.txt")
        summary.files.append("memmap.txt")
    jvm_facts: dict[str, Any] = {}
    t_nmt = time.monotonic()
    try:
        pid, text = client.nmt(jvm_pid)
        timings["nmt_s"] = round(time.monotonic() - t_nmt, 3)
        (outp / "nmt.txt").write_text(text, encoding="utf-8")
        summary.files.append("nmt.txt")
        summary.jvm_pid = pid
        jvm_facts["pid"] = pid
    except AgentError as exc:
        summary.problems.append(f"nmt.txt: {exc}")
    smaps_pid = jvm_pid if jvm_pid is not None else summary.jvm_pid
    try:
        pid, text = client.smaps(smaps_pid)
        (outp / "smaps").mkdir(exist_ok=True)
        (outp / "smaps" / f"{pid}.txt").write_text(text, encoding="utf-8")
        summary.files.append(f"smaps/{pid}.txt")
    except AgentError as exc:
        summary.problems.append(f"smaps: {exc}")
    if summary.jvm_pid is not None:
        try:
            r = client.call("exec", {"argv": ["cat", f"/proc/{summary.jvm_pid}/cmdline"], "timeout_s": 10})
            jvm_facts["options"] = [a for a in str(r["stdout"]).split("\0") if a]
        except AgentError as exc:
            summary.problems.append(f"jvm options: {exc}")
    summary.seconds = round(time.monotonic() - t0, 3)
    updates: dict[str, Any] = {
        "guest": {"kernel": ping.get("kernel"), "mem_size_mib": int(mm.meta.get("phys_mem_bytes", 0)) >> 20,
                  "agent_version": ping.get("agent_version")},
        "jvm": jvm_facts,
        "collect": {"collected": mm.meta.get("collected"), "seconds": summary.seconds,
                    "agent": client.address, "pages": summary.pages, "problems": summary.problems,
                    "timings": timings},
    }
    if address_is_vsock(client.address):  # a microVM on this host (or in the lab's L1)
        from firecracer import host

        updates["host"] = host.host_label()
        updates["timings_comparable_to_kvm"] = host.timings_comparable_to_kvm()
    merge_recording_json(outp, updates, {"source": source} if source else None)
    summary.files.append("recording.json")
    return summary


def address_is_vsock(address: str) -> bool:
    return address.startswith("vsock:")
