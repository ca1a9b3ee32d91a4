"""Process restores for the jvm backend: the JVM checkpointed with CRIU, restored in a fresh boot.

CRaC's answer to a cold start is to checkpoint the JVM *process* and restore it later; its engine is
CRIU. Here that runs inside our guest (docs/crac.md):

* **At the variant's preparation**, after the VM snapshot (which it must not disturb): the guest agent
  runs the app's after-restore hooks (the snapshot's before-hooks ran in ``prepare``), then
  ``checkpoint``: the before-checkpoint hooks, GC, trim and ``criu dump`` onto the **scratch drive**, an
  ext4 image this host made and attached as the VM's second drive. The JVM ends; so does that VM.
* **Per run** (``criu`` or ``criu-lazy``): a fresh VM boots the same image without a JVM (``FC_JAVA=off``)
  with the scratch drive attached read-only, the agent runs ``criu restore`` (``--lazy-pages`` with
  CRIU's lazy-pages daemon for ``criu-lazy``), the after-restore hooks and the first request from inside
  the guest, timed from the restore command. The host then asks the same path over vsock once more
  (the answer must be 200 too).
* **The recording** is in image space (:mod:`firecracer.analysis.process`): the JVM's dumped pages by
  virtual address, with its maps and NMT report from the variant, so ``analyze``/``view``/``--compare``
  read it like a VM restore's. A lazy restore's trace holds the faults the daemon logged until the first
  response; an eager one, every page of the images (all loaded before the JVM runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from firecracer.agentclient.client import AgentClient, AgentError
from firecracer.analysis.memmap import load_memmap, save_memmap
from firecracer.analysis.process import eager_pages, eager_trace, fault_trace, process_image
from firecracer.errors import FirecracerError
from firecracer.experiment.backend import RunFailed
from firecracer.uffd.trace import save_trace

CHECKPOINT_NAME = "jvm"
#: the scratch drive's size: sparse, so only what CRIU writes takes space (a 1 GiB JVM's images: ~0.2 GB)
SCRATCH_MIB = 4096
#: what a variant keeps of its checkpoint (besides the drive): the JVM's maps and the dumped page ranges
CRAC_DIR = "crac"


def make_scratch(path: Path, mib: int = SCRATCH_MIB) -> Path:
    """A sparse ext4 image for CRIU's images (``mkfs.ext4``, no mount: works without root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(mib << 20)
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    try:
        r = subprocess.run([mkfs, "-q", "-F", "-L", "fc-scratch", str(path)], capture_output=True, text=True,
                           timeout=120, check=False)
    except OSError as exc:
        raise RunFailed("checkpoint", f"cannot make the scratch drive: {mkfs}: {exc.strerror or exc} "
                                      "(install e2fsprogs)") from None
    if r.returncode != 0:
        raise RunFailed("checkpoint", f"mkfs.ext4 {path}: {(r.stderr or r.stdout).strip()[:300]}")
    return path


def checkpoint(agent: AgentClient, workdir: Path, timeout: float) -> dict[str, Any]:
    """Checkpoint the prepared JVM onto the scratch drive; keep its maps and page ranges in ``workdir``.

    The VM snapshot's ``prepare`` ran the app's before-checkpoint hooks and the JVM has been running
    since: its after-restore hooks run first, so the checkpoint's own before-hooks find it as CRaC would.
    """
    try:
        agent.call("after-restore", {"steps": ["hooks"], "generation": 0}, timeout=timeout)
        rep = agent.call("checkpoint", {"name": CHECKPOINT_NAME}, timeout=timeout)
    except AgentError as exc:
        raise RunFailed("checkpoint", str(exc)) from None
    d = workdir / CRAC_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / "maps.txt").write_text(str(rep.pop("maps", "")))
    (d / "dumped.json").write_text(json.dumps(rep.pop("dumped", {})))
    facts = {k: rep.get(k) for k in ("pid", "seconds", "bytes", "pages", "files", "prepare_seconds")}
    (d / "checkpoint.json").write_text(json.dumps(facts, indent=1))
    return facts


def wait_agent(address: str, deadline_s: float, alive: Any) -> float:
    """Until the guest agent answers ``ping``; seconds it took. ``alive()`` false ends the wait at once."""
    t0 = time.monotonic()
    last = "no answer"
    while time.monotonic() - t0 < deadline_s:
        if not alive():
            raise RunFailed("boot", "the guest died before its agent answered")
        try:
            with AgentClient.connect(address, timeout=5.0) as a:
                a.ping()
            return time.monotonic() - t0
        except FirecracerError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RunFailed("boot", f"the guest agent did not answer within {deadline_s:g} s: {last}")


def restore_in_guest(agent: AgentClient, *, lazy: bool, port: int, path: str,
                     timeout: float) -> dict[str, Any]:
    try:
        return agent.call("restore", {"name": CHECKPOINT_NAME, "lazy": lazy,
                                      "request": {"port": port, "path": path, "timeout": timeout}},
                          timeout=timeout + 600)
    except AgentError as exc:
        raise RunFailed("restore", str(exc)) from None


def jvm_exe(workdir: Path, pid: int) -> str:
    """The JVM's executable as the variant's memmap names it (so VM and process recordings compare by
    virtual address), else the ``…/bin/java`` mapping of its maps."""
    with contextlib.suppress(FirecracerError, OSError):
        mm = load_memmap(workdir / "memmap.npz")
        hits = np.flatnonzero(mm.owner_pid == pid)
        if hits.size:
            return mm.owner_exe[int(hits[0])]
    with contextlib.suppress(OSError):
        for line in (workdir / CRAC_DIR / "maps.txt").read_text().splitlines():
            name = line.split(None, 5)[5] if len(line.split(None, 5)) == 6 else ""
            if name.endswith("/bin/java"):
                return name
    return "java"


def write_recording(workdir: Path, rundir: Path, reply: dict[str, Any], kind: str) -> dict[str, Any]:
    """``memmap.npz`` (image space), ``trace.npz`` and ``nmt.txt`` of one process restore; its metrics."""
    d = workdir / CRAC_DIR
    meta = json.loads((d / "checkpoint.json").read_text())
    pid = int(meta.get("pid") or reply.get("pid") or 0)
    dumped = json.loads((d / "dumped.json").read_text()).get(str(pid), [])
    faults = reply.get("faults") or {}
    addrs = [int(a) for a in faults.get("addr", [])]
    extra = np.asarray(addrs, dtype=np.uint64) & ~np.uint64(4095)
    image = process_image(pid, jvm_exe(workdir, pid), (d / "maps.txt").read_text(), dumped, extra)
    save_memmap(image.memmap({"checkpoint_bytes": meta.get("bytes")}), rundir / "memmap.npz")
    offset = float(reply.get("lazy_daemon_start_s") or 0.0)  # daemon clock → since the restore began
    trace_meta = {"checkpoint_pages": int(image.dumped.sum())}
    eager = eager_pages(dumped)
    if kind == "criu-lazy":
        t_s = [max(0.0, float(t) - offset) for t in faults.get("t_s", [])]
        trace = fault_trace(image, t_s, addrs, faults.get("zero", []), kind, trace_meta, eager=eager)
    else:
        trace = eager_trace(image, kind, trace_meta)
    save_trace(trace, rundir / "trace.npz")
    if (workdir / "nmt.txt").exists():
        try:
            os.link(workdir / "nmt.txt", rundir / "nmt.txt")
        except OSError:
            shutil.copyfile(workdir / "nmt.txt", rundir / "nmt.txt")
    zero = int(np.count_nonzero(trace.is_zero()))
    faulted = int(np.count_nonzero(trace.fault >= 0))
    metrics: dict[str, Any] = {
        "pages": len(trace), "bytes": len(trace) * 4096, "zero_pages": zero, "faults": faulted,
        "checkpoint_bytes": meta.get("bytes"), "checkpoint_pages": int(image.dumped.sum())}
    if kind == "criu-lazy":
        # pages CRIU installs before the JVM runs even in a lazy restore (None: an older checkpoint's
        # ranges do not say which; its trace then holds the faults only)
        metrics["eager_pages"] = None if eager is None else int(eager.size)
    if kind == "criu-lazy":
        bg = faults.get("background_start_s")
        cut = reply.get("response_daemon_s")
        metrics["background_before_response"] = bg is not None and cut is not None and float(bg) <= float(cut)
        metrics["faults_logged_at_reply"] = reply.get("faults_total_so_far")
    return metrics
