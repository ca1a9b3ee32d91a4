"""End-to-end self test with the probe guest: boot, snapshot Full and Diff, restore with the File
and the Uffd backend, trigger, verify. Returns structured checks; the CLI renders them.

Each check is ``{name, ok, ms, unsupported}``: ``unsupported`` is None or the reason a check
cannot run with this Firecracker on this host (then ``ok`` is False and the run still passes).

Its VMs run in the state directory like any other (``vm ls`` shows them while it runs; names
``selftest-<id>…``), with its snapshots inside the booted VM's run directory. A passing selftest removes
them all; a failing one keeps them for post-mortem and names them (``SelftestReport.kept``).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError
from firecracer.fcversion import firecracker_version
from firecracer.paths import state_dir
from firecracer.vmm.api import Unsupported
from firecracer.vmm.binary import find_firecracker
from firecracer.vmm.config import MemBackend, SnapshotType
from firecracer.vmm.machine import MicroVM
from firecracer.vmm.probe import build_probe
from firecracer.vmm.probe.run import boot_probe, trigger
from firecracer.vmm.snapshot import Snapshot

FILL = range(4096, 4096 + 2048)  # 8 MiB at 16 MiB
TRACE = [*range(4096, 4096 + 512, 2), *range(8192, 8192 + 64)]  # filled pages, then 64 zero pages


@dataclass
class SelftestStep:
    """One step of the selftest: passed, failed, or unsupported on this host (with why)."""

    name: str
    ok: bool
    ms: float | None
    unsupported: str | None = None
    detail: str | None = None

    def passed(self) -> bool:
        return self.ok or self.unsupported is not None


@dataclass
class SelftestReport:
    firecracker: str
    firecracker_version: str
    checks: list[SelftestStep]
    kept: list[str] = field(default_factory=list)  # run directories kept because a check failed

    @property
    def ok(self) -> bool:
        return all(c.passed() for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"firecracker": self.firecracker, "firecracker_version": self.firecracker_version,
                "ok": self.ok, "checks": [asdict(c) for c in self.checks], "kept": self.kept}


def run_selftest(firecracker: str | Path | None = None, *, workdir: Path | None = None,
                 page_server: Sequence[str] | None = None) -> SelftestReport:
    """Run every phase; never raises for a failing phase (it becomes a failed check).

    :param page_server: argv of the page server for the Uffd restore, with ``{socket}`` and
        ``{mem}`` placeholders (see :meth:`MicroVM.restore`); default ``firecracer uffd serve``.
    """
    binary = find_firecracker(firecracker)
    version = firecracker_version(binary)
    checks: list[SelftestStep] = []
    blocked: str | None = None  # Unsupported reason that makes every later check impossible
    failed: str | None = None  # a failure that makes later checks impossible (they fail too)
    prefix = f"selftest-{uuid.uuid4().hex[:8]}"
    run_dirs: list[Path] = [state_dir() / "vms" / prefix]
    tmp = Path(workdir) / prefix if workdir else run_dirs[0] / "snapshots"
    writes = [i % 7 == 0 for i in range(len(TRACE))]
    try:
        elf = build_probe(TRACE, FILL, writes=writes)
    except (FirecracerError, ValueError) as exc:
        return SelftestReport(str(binary), str(version),
                              [SelftestStep("build_probe", False, None, detail=str(exc))])

    def phase(name: str, fn: Callable[[], tuple[float | None, str | None]]) -> bool:
        if blocked or failed:
            skipped = f"skipped: {failed}" if failed else None
            checks.append(SelftestStep(name, False, None, unsupported=blocked, detail=skipped))
            return False
        try:
            ms, detail = fn()
        except Unsupported as exc:
            checks.append(SelftestStep(name, False, None, unsupported=exc.reason))
            return False
        except FirecracerError as exc:
            checks.append(SelftestStep(name, False, None, detail=str(exc)))
            return False
        checks.append(SelftestStep(name, detail is None, None if ms is None else round(ms, 3), detail=detail))
        return detail is None

    state: dict[str, Any] = {}
    snaps: dict[SnapshotType, Snapshot] = {}

    def verify(vm: MicroVM, prefix: str) -> tuple[float | None, str | None]:
        res = trigger(vm, b"t")
        first_ms = vm.timings_ms["result"]
        if res.errors or res.pages != len(TRACE):
            return first_ms, f"{prefix}: trace walk saw {res.errors} errors over {res.pages} pages"
        full = trigger(vm, b"a")
        if full.errors or full.pages != len(FILL):
            return first_ms, f"{prefix}: verify saw {full.errors} errors over {full.pages} pages"
        return first_ms, None

    def do_boot() -> tuple[float | None, str | None]:
        t0 = time.perf_counter()
        vm = boot_probe(elf, binary, track_dirty_pages=True, name=prefix)
        state["vm"] = vm
        return (time.perf_counter() - t0) * 1000, None

    def do_first_result() -> tuple[float | None, str | None]:
        return verify(state["vm"], "booted")

    def do_snap(kind: SnapshotType) -> Callable[[], tuple[float | None, str | None]]:
        def run() -> tuple[float | None, str | None]:
            vm: MicroVM = state["vm"]
            snap = vm.snapshot(tmp / kind.value.lower(), kind, punch_holes=kind is SnapshotType.FULL)
            snaps[kind] = snap
            vm.resume()
            if kind is SnapshotType.FULL:
                trigger(vm, b"t")  # dirties the write pages and the stack: something for the Diff
            return snap.timings_ms["create"], None
        return run

    def do_restore(kind: SnapshotType, backend: MemBackend) -> Callable[[], tuple[float | None, str | None]]:
        def run() -> tuple[float | None, str | None]:
            snap = snaps[kind]
            argv = page_server if backend is MemBackend.UFFD else None
            name = f"{prefix}-{kind.value.lower()}-{backend.value.lower()}"
            run_dirs.append(state_dir() / "vms" / name)
            with MicroVM.restore(snap, firecracker=binary, backend=backend, page_server=argv, name=name,
                                 purpose="selftest") as vm:
                load_ms = vm.timings_ms["load_snapshot"]
                first_ms, detail = verify(vm, f"{kind.value}/{backend.value} restore")
                state[f"first-{kind.value}-{backend.value}"] = first_ms
            return load_ms, detail
        return run

    try:
        if phase("boot", do_boot):
            phase("first_result", do_first_result)
        elif checks[-1].unsupported:
            blocked = checks[-1].unsupported
        else:
            failed = "boot failed"
        phase("snapshot_full", do_snap(SnapshotType.FULL))
        phase("snapshot_diff", do_snap(SnapshotType.DIFF))
        if "vm" in state:
            state["vm"].kill()
        for kind, backend in ((SnapshotType.FULL, MemBackend.FILE), (SnapshotType.DIFF, MemBackend.FILE),
                              (SnapshotType.FULL, MemBackend.UFFD)):
            name = f"restore_{backend.value.lower()}_{kind.value.lower()}"
            if kind not in snaps:
                checks.append(SelftestStep(name, False, None, unsupported=blocked,
                                           detail=None if blocked else f"skipped: no {kind.value} snapshot"))
                continue
            ok = phase(name, do_restore(kind, backend))
            first = state.get(f"first-{kind.value}-{backend.value}")
            if ok and first is not None:
                checks.append(SelftestStep(f"{name}_first_result", True, round(first, 3)))
    finally:
        if "vm" in state:
            state["vm"].kill()
        report = SelftestReport(str(binary), str(version), checks)
        if report.ok or not checks:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in run_dirs:
                shutil.rmtree(d, ignore_errors=True)
        else:
            report.kept = [str(d) for d in run_dirs if d.exists()]
    return report
