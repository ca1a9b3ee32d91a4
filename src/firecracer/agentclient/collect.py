"""Collect a guest from the host, through its agent, into a recording directory.

The guest side (``firecracer.guest.memmap``) walks the pages; this host side asks for them over vsock,
completes the kernel's allocations (numpy, ``kernelpages``), fetches NMT, smaps and the JVM's options,
and merges the facts into ``recording.json`` (``firecracer.formats.RecordingFacts``).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from firecracer import host
from firecracer.agentclient.client import AgentClient, AgentError
from firecracer.agentclient.kernelpages import complete_memmap
from firecracer.errors import FirecracerError
from firecracer.formats import merge_recording, this_host
from firecracer.guest import memmap, npyio
from firecracer.guest.recording import CollectSummary
from firecracer.guest.seedfmt import write_seed_text


def collect_agent(client: AgentClient, out: str | Path, *, pids: list[int] | None = None,
                  jvm_pid: int | None = None, seed: bool = False, source: str | None = None,
                  sections: list[str] | None = None) -> CollectSummary:
    """Collect a guest through an ``AgentClient`` into recording directory ``out``.

    The memmap is collected first (before jcmd touches the JVM), then NMT and smaps of the JVM.
    Agent errors for NMT/smaps are recorded as problems; a failing memmap raises ``AgentError`` (code
    ``no-such-process`` when none of ``pids`` exists in the guest), and then nothing is written.
    """
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
        updates["host"] = this_host(host.host_label())
        updates["timings_comparable_to_kvm"] = host.timings_comparable_to_kvm()
    merge_recording(outp, updates, {"source": source} if source else None)
    summary.files.append("recording.json")
    return summary


def address_is_vsock(address: str) -> bool:
    return address.startswith("vsock:")
