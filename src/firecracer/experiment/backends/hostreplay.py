"""``host-replay``: no VM. Each variant's working set is replayed against a memory file on the host.

Why it exists: the study machinery (plan, resume, shards, store, report) must be testable on any Linux
host, quickly and deterministically, and a spec should be checkable end to end before a KVM host is
booked. It does real, small work that mirrors a restore: a sparse "memory file" with a verifiable
pattern in the working-set pages, the page cache dropped before each run (``POSIX_FADV_DONTNEED``),
and the working set read back in touch order the way each strategy would serve it — ``file`` through an
mmap (kernel paging), ``ondemand`` one ``pread`` per page, ``fault-around:N`` one ``pread`` per aligned
N-page block, ``prefetch`` the working set recorded in a first pass read in contiguous runs before
touching, ``eager`` the whole file. Counts (faults, pages, bytes) are deterministic; times are real
host times. Rows are labelled ``backend = host-replay`` and the report says so: they are never a
Firecracker or JVM result.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firecracer.errors import FirecracerError
from firecracer.experiment import workingset
from firecracer.experiment.backend import Backend, RunFailed, RunOutcome
from firecracer.experiment.plan import Run
from firecracer.experiment.spec import Variant
from firecracer.experiment.store import now_iso
from firecracer.formats import RecordingFacts
from firecracer.uffd.trace import FLAG_FAULTING, Action, make_trace, save_trace

PAGE = workingset.PAGE
_MAGIC = np.uint64(0x9E3779B97F4A7C15)



def pattern(pages: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The 8-byte word every page of the working set is filled with (a function of its number)."""
    return (pages.astype(np.uint64) * _MAGIC) | np.uint64(1)


@dataclass
class HostState:
    """A prepared variant: the memory file, its size in pages and the working set in touch order."""

    variant: Variant
    workdir: Path
    mem: Path
    mem_pages: int
    pages: npt.NDArray[np.uint64]
    prefetch: npt.NDArray[np.uint64] | None = None


class _Trace:
    """Rows of a ``trace.npz`` (docs/formats.md) gathered during one replay."""

    def __init__(self) -> None:
        self.t0 = time.monotonic_ns()
        self.rows: list[tuple[int, int, int, int, int, int]] = []  # t_ns, page, flags, action, fault, service

    def add(self, pages: range | list[int], action: int, fault: int, faulting: int | None,
            service_ns: int) -> None:
        t = time.monotonic_ns() - self.t0
        for p in pages:
            self.rows.append((t, p, FLAG_FAULTING if p == faulting else 0, action, fault, service_ns))

    def save(self, path: Path, strategy: str, mem: Path, faults: int) -> None:
        a = np.array(self.rows, dtype=np.int64).reshape(-1, 6)
        off = (a[:, 1] * PAGE).astype(np.uint64)
        meta = {"page_size": PAGE, "strategy": strategy, "regions": [], "vmm": "host-replay",
                "mem_file": str(mem), "faults": faults, "events": {"pagefault": faults}}
        save_trace(make_trace({"t_ns": a[:, 0], "hva": off, "file_off": off, "gpa": off, "flags": a[:, 2],
                               "action": a[:, 3], "fault": a[:, 4],
                               "service_ns": np.minimum(a[:, 5], 2**32 - 1)}, meta), path)


class HostReplayBackend(Backend[HostState]):
    """See module doc."""

    name = "host-replay"

    def versions(self) -> dict[str, Any]:
        return {"backend": "host-replay (no VM)", "numpy": np.__version__}

    @contextmanager
    def variant(self, variant: Variant, workdir: Path) -> Iterator[HostState]:
        mem_pages = self.spec.guest.mem_size_mib * 256
        if variant.trace is not None:
            pages = workingset.from_trace(variant.trace)
            if len(pages) and int(pages.max()) >= mem_pages:
                raise RunFailed("prepare", f"{variant.trace}: page {int(pages.max())} is beyond the "
                                           f"{self.spec.guest.mem_size_mib} MiB guest")
        else:
            assert variant.working_set_pages is not None
            lo, hi = workingset.scatter_range("host-replay", self.spec.guest.mem_size_mib)
            pages = workingset.scattered(variant.working_set_pages, lo, hi, variant.mean_run_pages,
                                         variant.seed)
        mem = workdir / "mem"
        marker = workdir / "variant.json"
        want = {"variant": variant.as_dict(), "mem_pages": mem_pages, "pages": len(pages)}
        if not (marker.exists() and json.loads(marker.read_text()).get("key") == want):
            marker.unlink(missing_ok=True)
            _write_memory(mem, mem_pages, pages)
            marker.write_text(json.dumps({"key": want, "created": now_iso()}))
        state = HostState(variant, workdir, mem, mem_pages, pages)
        rec = workdir / "prefetch-trace.npz"
        if rec.exists():
            state.prefetch = workingset.from_trace(rec)
        yield state

    def run(self, state: HostState, run: Run, rundir: Path) -> RunOutcome:
        strategy = run.strategy
        if strategy.name == "prefetch" and state.prefetch is None:
            # Like REAP: a first restore records the working set; later restores prefetch it.
            trace, _, _ = self._replay(state, "ondemand")
            path = state.workdir / "prefetch-trace.npz"
            trace.save(path, "ondemand", state.mem, len(state.pages))
            state.prefetch = workingset.from_trace(path)
        trace, timings, metrics = self._replay(state, strategy.name)
        if metrics["errors"]:
            raise RunFailed("verify", f"{metrics['errors']} of {len(state.pages)} pages had wrong contents")
        faults = int(metrics.get("faults", 0))
        if strategy.uses_uffd:  # the File backend has no page server, hence no trace
            trace.save(rundir / "trace.npz", strategy.name, state.mem, faults)
        note = "no VM: working set replayed against a host file"
        guest = {"mem_size_mib": self.spec.guest.mem_size_mib}
        RecordingFacts(source="local", created=now_iso(), guest=guest, strategy=strategy.name,
                       timings_ms=timings, extra={"backend": "host-replay", "note": note},
                       ).write(rundir / "recording.json")
        a = np.array(trace.rows, dtype=np.int64).reshape(-1, 6)
        faulting = a[(a[:, 2] & FLAG_FAULTING) != 0, 1].astype(np.uint64) if strategy.uses_uffd else None
        return RunOutcome(timings_ms=timings, metrics=metrics, pages=faulting)

    def _replay(self, state: HostState, strategy: str) -> tuple[_Trace, dict[str, float], dict[str, Any]]:
        """Drop the file's cached pages, then serve and touch the working set as ``strategy`` would."""
        trace = _Trace()
        fd = os.open(state.mem, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            ru0 = _faults()
            install_ms = 0.0
            served = np.zeros(state.mem_pages, dtype=bool)
            buf: dict[int, bytes] = {}
            faults = 0
            nbytes = 0
            svc_total = 0
            if strategy == "file":
                with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                    got = [mm[int(p) * PAGE:int(p) * PAGE + 8] for p in state.pages]
                first_response = (time.perf_counter() - t0) * 1e3
                words = np.frombuffer(b"".join(got), dtype="<u8")
                errors = int(np.count_nonzero(words != pattern(state.pages)))
                kernel_faults = _faults() - ru0
                return trace, {"first_response": first_response}, {
                    "errors": errors, "faults": kernel_faults, "pages": len(state.pages),
                    "fault_source": "getrusage (kernel page faults of the replaying process)"}
            if strategy in ("prefetch", "eager"):
                t_i = time.perf_counter()
                if strategy == "prefetch":
                    assert state.prefetch is not None
                    spans = workingset.runs_of(state.prefetch)
                    action = Action.PREFETCH
                else:
                    spans = [(0, state.mem_pages)]
                    action = Action.EAGER
                for start, count in spans:
                    for s in range(start, start + count, 1024):  # at most 4 MiB per read
                        n = min(1024, start + count - s)
                        t_s = time.monotonic_ns()
                        data = os.pread(fd, n * PAGE, s * PAGE)
                        svc = time.monotonic_ns() - t_s
                        svc_total += svc
                        nbytes += len(data)
                        for k in range(n):
                            buf[s + k] = data[k * PAGE:k * PAGE + 8]
                        served[s:s + n] = True
                        trace.add(range(s, s + n), action, -1, None, svc)
                install_ms = (time.perf_counter() - t_i) * 1e3
            around = 1
            if strategy.startswith("fault-around:"):
                around = int(strategy.split(":", 1)[1])
            words_out = []
            for p in (int(x) for x in state.pages):
                if not served[p]:
                    lo = p - p % around if around > 1 else p
                    hi = min(lo + around, state.mem_pages)
                    t_s = time.monotonic_ns()
                    data = os.pread(fd, (hi - lo) * PAGE, lo * PAGE)
                    svc = time.monotonic_ns() - t_s
                    svc_total += svc
                    nbytes += len(data)
                    new = [q for q in range(lo, hi) if not served[q]]
                    for q in new:
                        buf[q] = data[(q - lo) * PAGE:(q - lo) * PAGE + 8]
                    served[lo:hi] = True
                    trace.add([p], Action.LOAD, faults, p, svc)
                    trace.add([q for q in new if q != p], Action.AROUND, faults, None, svc)
                    faults += 1
                words_out.append(buf[p])
            first_response = (time.perf_counter() - t0) * 1e3
        finally:
            os.close(fd)
        words = np.frombuffer(b"".join(words_out), dtype="<u8")
        errors = int(np.count_nonzero(words != pattern(state.pages)))
        metrics: dict[str, Any] = {"errors": errors, "faults": faults, "pages": int(served.sum()),
                                   "bytes": nbytes, "service_ms": svc_total / 1e6}
        if strategy == "prefetch":
            assert state.prefetch is not None
            metrics["prefetched"] = len(state.prefetch)
            metrics["misses"] = faults
        timings = {"first_response": first_response}
        if install_ms:
            timings["install"] = install_ms
        return trace, timings, metrics


def _faults() -> int:
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int(ru.ru_minflt + ru.ru_majflt)


def _write_memory(mem: Path, mem_pages: int, pages: npt.NDArray[np.uint64]) -> None:
    """A sparse file of ``mem_pages`` pages; working-set pages hold their pattern word repeated."""
    tmp = mem.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.truncate(mem_pages * PAGE)
            for start, count in workingset.runs_of(pages):
                block = np.repeat(pattern(np.arange(start, start + count, dtype=np.uint64)), PAGE // 8)
                f.seek(start * PAGE)
                f.write(block.astype("<u8").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, mem)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FirecracerError(f"{mem}: cannot write the replay memory file: {exc}") from None
