"""Studies on a Ray cluster: each variant (prepare → its runs) is one Ray task, placed by resource.

Machines say what they can do as Ray custom resources (:func:`host_resources`, from the same checks as
``firecracer doctor``): ``firecracker_probe`` (KVM + Firecracker + uffd: the probe guest runs, PVM-nested
hosts included), ``firecracker_kvm`` (also boots Linux guests: the jvm backend), ``firecracker_lab``
(QEMU can run the lab) and ``firecracer`` (firecracer is installed: host-replay). A resource's amount is
the machine's number of *slots*, variants it runs at once (1 by default, so timings are not disturbed by
a neighbour). A variant task asks for one slot of what its backend needs (:func:`needed_resource`); a
study that no live machine can run is refused before anything is queued (:meth:`Cluster.check`).

Data flow: the worker runs :func:`firecracer.experiment.runner.run_variant` in its own directory
(``<cache>/cluster/<study>-<digest>/``), and streams back, per run, the row and the run's recording
directory as a gzip tar (trace, metrics, viewer page: small). The driver alone writes
``results.sqlite`` (same lock, schema and resume rules as a local study) and unpacks the recording into
``RESULTS/runs/<id>/``. The variant's snapshot stays on the worker (deleted there after the variant
unless ``keep_snapshots``), so a rerun on the same machine reuses it.

Failures: a worker (or its machine) that dies mid-variant costs the variant's unrecorded runs, which are
queued again once (the caller is told: event ``lost``); a second loss records them failed, phase
``cluster``, with the reason. Ctrl-C / SIGTERM on the driver cancels every task: the worker's task gets a
KeyboardInterrupt, and the backend's variant context kills its Firecrackers and page servers as it does
locally (and if the worker process itself dies, their lifelines kill them).

Ray is optional (``pip install 'firecracer[cluster]'``) and imported only here, inside functions.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import queue
import shutil
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer import __version__, host
from firecracer.errors import FirecracerError
from firecracer.experiment.backend import describe_exception
from firecracer.experiment.plan import Run, Shard, group_by_variant, plan_runs
from firecracer.experiment.runner import (
    Event,
    StudySummary,
    host_facts,
    make_backend,
    make_record,
    pending_runs,
    run_variant,
)
from firecracer.experiment.spec import Spec
from firecracer.experiment.store import ResultsLock, ResultStore, RunRecord, now_iso
from firecracer.paths import cache_dir

RES_PROBE = "firecracker_probe"
RES_KVM = "firecracker_kvm"
RES_LAB = "firecracker_lab"
RES_ANY = "firecracer"
RESOURCES = (RES_PROBE, RES_KVM, RES_LAB, RES_ANY)

CANCEL_GRACE_S = 30.0
"""After Ctrl-C, how long cancelled tasks get to clean up before their workers are killed."""


class ClusterError(FirecracerError):
    """The cluster cannot be reached, or cannot run this study."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to get it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray on this machine and on every worker: "
                           "pip install 'firecracer[cluster]' (or: pip install ray)") from None
    return ray


def host_resources(slots: int = 1, firecracker: str | None = None) -> dict[str, float]:
    """The custom resources this machine offers a cluster (see module doc); ``slots`` variants at once."""
    checks = host.run_all(firecracker)
    res = {RES_ANY: float(slots)}
    if not host.missing_for("uffd", checks):
        res[RES_PROBE] = float(slots)
        if checks["linux_guests"].ok:
            res[RES_KVM] = float(slots)
    if not host.missing_for("lab", checks):
        res[RES_LAB] = float(slots)
    return res


def needed_resource(spec: Spec) -> str:
    """The resource one variant task of ``spec`` asks for (one unit of it)."""
    return {"probe": RES_PROBE, "jvm": RES_KVM}.get(spec.backend, RES_ANY)


def worker_root(spec: Spec) -> Path:
    """Where a worker keeps a study's variants (snapshots) and runs in flight."""
    return cache_dir() / "cluster" / f"{spec.name}-{spec.digest}"


@dataclass(frozen=True)
class Node:
    """A live machine of the cluster: Ray node id, its address, and its firecracer resources."""

    node_id: str
    address: str
    resources: dict[str, float]

    def __str__(self) -> str:
        return f"{self.address} (node {self.node_id[:8]})"


class Cluster:
    """A connection of this process (the driver) to a running Ray cluster."""

    def __init__(self, address: str) -> None:
        """Connect to ``address``: ``auto`` (the Ray running on this machine) or ``HOST:PORT`` of its head.

        The driver must run on a machine of the cluster (the head, or one that ran ``firecracer worker``).
        :raises ClusterError: Ray is missing, the address is a Ray Client one, or nothing answers there.
        """
        self.ray = import_ray()
        self.address = address
        if address.startswith("ray://"):
            raise ClusterError(f"--cluster {address}: Ray Client addresses are not supported; run the "
                               "study on a machine of the cluster with --cluster HEAD:PORT (the head's "
                               "'ray start' port, 6379 by default) or --cluster auto")
        kw: dict[str, Any] = {}
        host = address.rsplit(":", 1)[0] if address != "auto" else ""
        if host:  # Ray itself retries an unreachable head for minutes: say it at once
            try:
                socket.create_connection((host, int(address.rsplit(":", 1)[1])), timeout=5).close()
            except (OSError, ValueError) as exc:
                raise ClusterError(f"--cluster {address}: no Ray head answers there "
                                   f"({describe_exception(exc)}; expected HEAD:PORT or auto)") from None
        try:
            if host and ipaddress.ip_address(host).is_loopback:
                kw["_node_ip_address"] = host  # a loopback-only cluster: its nodes carry that address
        except ValueError:
            pass
        try:
            self.ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                          namespace="firecracer", **kw)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError … all mean: no cluster there
            why = describe_exception(exc)
            raise ClusterError(f"--cluster {address}: no Ray cluster to join ({why})") from None

    def close(self) -> None:
        self.ray.shutdown()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def nodes(self) -> list[Node]:
        """The live machines, with the firecracer resources each offers."""
        return [Node(n["NodeID"], n["NodeManagerAddress"],
                     {k: float(v) for k, v in n["Resources"].items() if k in RESOURCES})
                for n in self.ray.nodes() if n.get("Alive")]

    def check(self, spec: Spec) -> None:
        """Refuse, before anything is queued, a study that no live machine has the resource for."""
        need = needed_resource(spec)
        nodes = self.nodes()
        if any(n.resources.get(need, 0) >= 1 for n in nodes):
            return
        have = "; ".join(f"{n}: {', '.join(sorted(n.resources)) or 'none'}" for n in nodes) or "no live node"
        names = ", ".join(v.name for v in spec.variants)
        raise ClusterError(f"no machine of the Ray cluster at {self.address} can run variants {names}: "
                           f"the {spec.backend} backend needs resource {need} (1 per variant), the cluster "
                           f"offers {have}; join a machine that can with 'firecracer worker --address "
                           "HEAD:PORT'")

    def run_study(self, spec: Spec, results_dir: Path | str, *, shard: Shard | None = None,
                  retry_failed: bool = False,
                  on_event: Callable[[Event], None] | None = None) -> StudySummary:
        """Like :func:`firecracer.experiment.runner.run_study`, one Ray task per variant (module doc)."""
        return _Driver(self, spec, Path(results_dir), shard, on_event or (lambda e: None)).run(retry_failed)


# -- the worker's side ----------------------------------------------------------------------------------
def variant_task(spec: Spec, variant_name: str, run_ids: list[str],
                 shard: Shard | None) -> Iterator[tuple[Any, ...]]:
    """The body of a variant's Ray task (streaming): ``("start", node, hostname, version)``, then per run
    ``("record", RunRecord, tar.gz bytes of its recording or b"")``, then ``("end",)``."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    yield ("start", node, socket.gethostname(), __version__)
    want = set(run_ids)
    runs = [r for r in plan_runs(spec) if r.run_id in want]
    variant = spec.variant(variant_name)
    root = worker_root(spec)
    be = make_backend(spec)
    host = {**host_facts(), "ray_node": node}
    try:
        be.check()
    except FirecracerError as exc:  # advertised a resource it cannot honour: every run fails, with why
        versions = {"firecracer": __version__}
        for run in runs:
            yield ("record", make_record(spec.as_dict(), spec, run, shard, host, versions, be.name,
                                         (time.monotonic(), now_iso()), None, phase="check",
                                         reason=f"{socket.gethostname()}: {exc}"), b"")
        yield ("end",)
        return
    versions = {"firecracer": __version__, **be.versions()}
    for rec in run_variant(spec, be, variant, runs, root, shard=shard, host=host, versions=versions):
        rundir = root / "runs" / rec.run_id
        blob = _pack(rundir) if rec.recording else b""
        shutil.rmtree(rundir, ignore_errors=True)
        yield ("record", rec, blob)
    if not spec.keep_snapshots:
        shutil.rmtree(root / "variants" / variant.name, ignore_errors=True)
    yield ("end",)


def _pack(d: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(d, arcname=".")
    return buf.getvalue()


def _unpack(blob: bytes, dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


# -- the driver's side ----------------------------------------------------------------------------------
@dataclass
class _Attempt:
    gen: Any
    thread: threading.Thread
    runs: list[Run]
    host: dict[str, str] = field(default_factory=dict)


class _Driver:
    """Submits variant tasks, records what they stream back, requeues a lost variant once."""

    def __init__(self, cluster: Cluster, spec: Spec, results_dir: Path, shard: Shard | None,
                 emit: Callable[[Event], None]) -> None:
        self.ray = cluster.ray
        self.spec = spec
        self.results_dir = results_dir
        self.shard = shard
        self.emit = emit
        self.q: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.inflight: dict[str, _Attempt] = {}
        self.lost: set[str] = set()
        self.ok = self.failed = 0
        self.failed_ids: list[str] = []
        self.by_id = {r.run_id: r for r in plan_runs(spec)}
        self.task = self.ray.remote(variant_task).options(
            num_returns="streaming", max_retries=0, num_cpus=0, resources={needed_resource(spec): 1})

    def run(self, retry_failed: bool) -> StudySummary:
        spec, results_dir = self.spec, self.results_dir
        with ResultsLock(results_dir), ResultStore.open(results_dir, create=True) as store:
            store.bind_study(spec.name, spec.digest, spec.text, str(spec.path), spec.backend)
            todo, skipped = pending_runs(spec, store, self.shard, retry_failed)
            self.emit(Event("start", total=len(todo) + skipped, skipped=skipped))
            for _variant, runs in group_by_variant(todo):
                self._submit(runs)
            try:
                while self.inflight:
                    try:
                        msg = self.q.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    self._handle(store, *msg)
            except BaseException:  # Ctrl-C, SIGTERM (SystemExit), or a failure of our own: stop the tasks
                self._cancel(store)
                raise
            self.emit(Event("end"))
            done_now = {r.run_id for r in todo}
            statuses = store.statuses()
            failed_before = sum(1 for r in plan_runs(spec, self.shard)
                                if r.run_id not in done_now and statuses.get(r.run_id) == "failed")
        return StudySummary(planned=len(todo) + skipped, skipped=skipped, ok=self.ok, failed=self.failed,
                            results_dir=results_dir, failed_runs=tuple(self.failed_ids),
                            failed_before=failed_before)

    def _submit(self, runs: list[Run]) -> None:
        name = runs[0].variant.name
        gen = self.task.remote(self.spec, name, [r.run_id for r in runs], self.shard)
        t = threading.Thread(target=self._pump, args=(gen, name), name=f"ray-{name}", daemon=True)
        self.inflight[name] = _Attempt(gen, t, list(runs))
        t.start()

    def _pump(self, gen: Any, name: str) -> None:
        """Forward one task's stream to the main thread (which alone touches the store)."""
        exc_mod = self.ray.exceptions
        try:
            for ref in gen:
                self.q.put(("msg", name, self.ray.get(ref)))
            self.q.put(("finished", name, None))
        except exc_mod.TaskCancelledError:
            self.q.put(("cancelled", name, None))
        except exc_mod.RayTaskError as exc:  # our task raised: a bug or a worker without firecracer
            self.q.put(("error", name, exc))
        except exc_mod.RayError as exc:  # the worker process or its machine died
            self.q.put(("lost", name, exc))
        except Exception as exc:
            self.q.put(("error", name, exc))

    def _handle(self, store: ResultStore, kind: str, name: str, payload: Any) -> None:
        att = self.inflight.get(name)
        if att is None:
            return
        if kind == "msg":
            if payload[0] == "start":
                _, node, hostname, version = payload
                att.host = {"hostname": hostname, "ray_node": node}
                where = f"{hostname} (node {node[:8]})"
                if version != __version__:
                    where += f", firecracer {version} there, {__version__} here"
                self.emit(Event("variant", variant=name, host=where))
            elif payload[0] == "record":
                self._record(store, att, payload[1], payload[2])
            return
        del self.inflight[name]
        if kind in ("finished", "cancelled") and not att.runs:
            return
        why = (describe_exception(payload) if payload is not None
               else f"the task was {kind} with {len(att.runs)} runs not done")
        if kind == "lost" and name not in self.lost:
            self.lost.add(name)
            self.emit(Event("lost", variant=name, total=len(att.runs), host=_where(att.host),
                            reason=f"{why}; its {len(att.runs)} unrecorded runs are queued again (once)"))
            self._submit(att.runs)
            return
        reason = (f"variant lost twice on the cluster: {why}" if kind == "lost"
                  else f"variant task failed on the cluster: {why}")
        if kind == "lost":
            self.emit(Event("lost", variant=name, total=len(att.runs), host=_where(att.host),
                            reason=f"{why}; lost twice: its {len(att.runs)} runs are recorded failed"))
        host = {**host_facts(), **att.host} if att.host else host_facts()
        for run in list(att.runs):
            rec = make_record(self.spec.as_dict(), self.spec, run, self.shard, host,
                              {"firecracer": __version__}, self.spec.backend, (time.monotonic(), now_iso()),
                              None, phase="cluster", reason=reason)
            self._record(store, att, rec, b"")

    def _record(self, store: ResultStore, att: _Attempt, rec: RunRecord, blob: bytes) -> None:
        if blob:
            _unpack(blob, self.results_dir / "runs" / rec.run_id)
        store.record(rec)
        att.runs = [r for r in att.runs if r.run_id != rec.run_id]
        if rec.ok:
            self.ok += 1
        else:
            self.failed += 1
            self.failed_ids.append(rec.run_id)
        self.emit(Event("done", run=self.by_id.get(rec.run_id), record=rec, host=_where(att.host)))

    def _cancel(self, store: ResultStore) -> None:
        """Cancel every task (each cleans up as on Ctrl-C), keep recording what finished meanwhile, and
        kill the workers of tasks still running after :data:`CANCEL_GRACE_S`."""
        for att in self.inflight.values():
            with contextlib.suppress(Exception):
                self.ray.cancel(att.gen)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while self.inflight and time.monotonic() < deadline:
            try:
                kind, name, payload = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            left = self.inflight.get(name)
            if left is None:
                continue
            if kind == "msg" and payload[0] == "record":
                self._record(store, left, payload[1], payload[2])
            elif kind != "msg":
                del self.inflight[name]
        for att in self.inflight.values():
            with contextlib.suppress(Exception):  # already gone
                self.ray.cancel(att.gen, force=True)


def _where(host: dict[str, str]) -> str:
    if not host:
        return ""
    return f"{host.get('hostname', '?')} (node {host.get('ray_node', '?')[:8]})"
