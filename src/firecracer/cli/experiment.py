"""``firecracer experiment``: whole studies from a spec — run (resumable, shardable), report, merge."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from firecracer.cli._render import console, err_console, print_json, print_table

if TYPE_CHECKING:
    from firecracer.experiment.spec import Spec


@click.group()
def experiment() -> None:
    """Run a matrix of variants × restore strategies × repetitions, and report on it."""
    from firecracer.cli.vm import term_runs_cleanup

    term_runs_cleanup()  # SIGTERM (a job runner's stop) unwinds like Ctrl-C: the run in flight is cleaned up


def _load(spec_file: str | None, example: bool) -> Spec:
    from firecracer.experiment.spec import example_spec_path, load_spec

    if example == bool(spec_file):
        raise click.UsageError("give SPEC.toml or --example (the bundled probe-guest study), not both")
    return load_spec(example_spec_path() if example or spec_file is None else spec_file)


@experiment.command()
@click.argument("spec_file", metavar="SPEC.toml", required=False, type=click.Path(dir_okay=False))
@click.option("--example", is_flag=True, help="Run the bundled example spec (probe guest, 24 runs).")
@click.option("-o", "--output", "out", metavar="RESULTS/", type=click.Path(file_okay=False),
              help="Results directory (default: ./results-<study name>). Re-running resumes there.")
@click.option("--dry-run", is_flag=True, help="Print the plan (and what is already done) and exit.")
@click.option("--shard", metavar="i/n", help="Run only slice i of n (merge the shards' results later).")
@click.option("--retry-failed", is_flag=True, help="Run again the runs recorded as failed.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--firecracker", "firecracker", metavar="PATH",
              help="Firecracker binary (overrides study.firecracker; else $FIRECRACKER, cache, PATH).")
@click.option("--keep-going", is_flag=True,
              help="Exit 0 even when runs failed (they are recorded either way).")
@click.option("--lab/--no-lab", "use_lab", default=None,
              help="Run the whole study in one L1 of the lab (default: only a jvm study, and only when this "
                   "host's KVM cannot boot Linux guests).")
@click.option("--lab-mem", type=click.IntRange(2048), default=8192, show_default=True, metavar="MIB",
              help="L1's RAM with --lab.")
@click.option("--cluster", "cluster", metavar="HEAD:PORT|auto|none",
              help="Run each variant as a task on a Ray cluster (overrides study.cluster; 'none': here). "
                   "Needs the cluster extra: pip install 'firecracer[cluster]'.")
def run(spec_file: str | None, example: bool, out: str | None, dry_run: bool, shard: str | None,
        retry_failed: bool, as_json: bool, firecracker: str | None, keep_going: bool, use_lab: bool | None,
        lab_mem: int, cluster: str | None) -> None:
    """Run a study spec: every variant × strategy × repetition, recorded in RESULTS/results.sqlite.

    Interrupt it any time (Ctrl-C); running the same command again skips every recorded run. A run
    that fails is recorded with its reason and the study goes on; the command then exits 1 (unless
    --keep-going). One command writes a results directory at a time: a second one refuses at once.
    A jvm study on a host whose KVM cannot boot Linux guests (PVM-nested, none) runs in the lab (QEMU
    TCG): its timings are then TCG timings, its counts real. With --cluster each variant runs on a
    machine of a Ray cluster that has what it needs; this command alone writes RESULTS.
    """
    from firecracer.experiment.plan import Shard, plan_runs
    from firecracer.experiment.runner import Event, make_backend, run_study
    from firecracer.experiment.store import DB_NAME, ResultsLock, ResultStore

    spec = _load(spec_file, example)
    if firecracker:
        spec = dataclasses.replace(spec, firecracker=firecracker)
    sh = Shard.parse(shard) if shard else None
    results = Path(out) if out else Path(f"results-{spec.name}")

    if dry_run:
        runs = plan_runs(spec, sh)
        have: dict[str, str] = {}
        if (results / DB_NAME).exists():
            with ResultStore.open(results) as store:
                have = store.statuses()
        if as_json:
            print_json({"study": spec.name, "backend": spec.backend, "digest": spec.digest,
                        "results": str(results), "shard": str(sh) if sh else None,
                        "runs": [{"run_id": r.run_id, "variant": r.variant.name, "strategy": r.strategy.name,
                                  "repetition": r.repetition, "status": have.get(r.run_id, "pending")}
                                 for r in runs]})
            return
        table = Table(title=f"plan: {spec.name} ({spec.backend})" + (f", shard {sh}" if sh else ""))
        for col in ("#", "run", "variant", "strategy", "rep", "status"):
            table.add_column(col)
        for r in runs:
            st = have.get(r.run_id, "pending")
            mark = {"ok": "[green]done[/]", "failed": "[red]failed[/]"}.get(st, "pending")
            table.add_row(str(r.index), r.run_id, r.variant.name, r.strategy.name, str(r.repetition), mark)
        print_table(table)
        todo = sum(1 for r in runs if have.get(r.run_id) is None
                   or (retry_failed and have.get(r.run_id) == "failed"))
        nq = len(spec.workload.requests)
        console.print(f"{len(runs)} runs in this plan ({len(spec.variants)} variants × "
                      f"{len(spec.strategies)} strategies × {spec.repetitions} repetitions"
                      + (f" × {nq} first requests" if nq > 1 else "")
                      + (f", shard {sh}" if sh else "") + f"); {todo} to run; results in {results}")
        return

    address = cluster or spec.cluster
    ray_cluster = None
    if address and address != "none":
        from firecracer.experiment.cluster import Cluster

        ray_cluster = Cluster(address)  # before any output: no Ray, no cluster, nobody able: one line
        ray_cluster.check(spec)
    if ray_cluster is None and _route_to_lab(spec, use_lab):
        with ResultsLock(results):  # 9p locks in L1 are no-ops in QEMU: the host holds the lock
            _run_in_lab(spec_file, example, results, shard, retry_failed, firecracker, lab_mem, keep_going)
        return
    backend = make_backend(spec) if ray_cluster is None else None
    if backend is not None:
        backend.check()  # before any output: a host that cannot run the study is one line, nothing else
    # the lock before any output too: a second run into the same directory refuses at once, in one line
    with ResultsLock(results), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                        TimeElapsedColumn(), TextColumn("[red]{task.fields[failed]} failed"),
                                        console=err_console, transient=False) as progress:
        task = progress.add_task(spec.name, total=None, failed=0)
        nfail = 0

        def on_event(e: Event) -> None:
            nonlocal nfail
            if e.kind == "start":
                progress.update(task, total=e.total, completed=e.skipped)
                if e.skipped:
                    progress.console.print(f"resuming: {e.skipped} runs already recorded in {results}")
            elif e.kind == "variant":
                progress.update(task, description=f"{spec.name}: preparing {e.variant}"
                                + (f" on {e.host}" if e.host else ""))
                if e.host:
                    progress.console.print(f"{e.variant}: on {e.host}", highlight=False)
            elif e.kind == "lost":
                progress.console.print(f"[yellow]lost[/] {e.variant} on {e.host or 'a worker'}: {e.reason}",
                                       markup=True, highlight=False)
            elif e.kind == "run" and e.run is not None:
                progress.update(task, description=f"{spec.name}: {e.run.run_id}")
            elif e.kind == "done" and e.record is not None:
                if not e.record.ok:
                    nfail += 1
                    where = f" on {e.host}" if e.host else ""
                    progress.console.print(f"[red]failed[/] {e.record.run_id}{where}: {e.record.reason}",
                                           markup=True, highlight=False)
                progress.update(task, advance=1, failed=nfail)
                if e.host:  # a cluster: no per-run start events, say what was done where
                    progress.update(task, description=f"{spec.name}: {e.record.run_id} on {e.host}")

        try:
            if ray_cluster is not None:
                with ray_cluster:
                    summary = ray_cluster.run_study(spec, results, shard=sh, retry_failed=retry_failed,
                                                    on_event=on_event)
            else:
                summary = run_study(spec, results, backend=backend, shard=sh, retry_failed=retry_failed,
                                    on_event=on_event)
        except (KeyboardInterrupt, SystemExit) as exc:
            if isinstance(exc, SystemExit) and ray_cluster is None:
                raise
            progress.stop()
            what = "; the cluster's tasks are cancelled" if ray_cluster is not None else ""
            err_console.print(f"interrupted{what}: finished runs are kept in {results}; run the same command "
                              "again to resume")
            raise
    console.print(f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} already recorded; "
                  f"results in {results}  (report: firecracer experiment report {results})", highlight=False)
    if summary.failed or summary.failed_before:
        ids = ", ".join(summary.failed_runs[:5]) + (" …" if len(summary.failed_runs) > 5 else "")
        what = (f"{summary.failed} of {summary.planned - summary.skipped} runs failed: {ids}"
                if summary.failed else f"{summary.failed_before} runs recorded as failed earlier")
        err_console.print(f"{what}; their reasons are in {results / DB_NAME} (firecracer experiment report "
                          f"{results}; --retry-failed runs them again)", highlight=False, soft_wrap=True)
        if summary.failed and not keep_going:
            sys.exit(1)


def _route_to_lab(spec: Spec, use_lab: bool | None) -> bool:
    from firecracer import host
    from firecracer.placement import lab_or_error, why_lab

    if host.in_lab() or use_lab is False:
        return False
    why = why_lab()
    if use_lab is None:
        if spec.backend != "jvm" or why is None:
            return False
        lab_or_error(f"the jvm backend needs a KVM that boots Linux guests ({why})")
        err_console.print(f"[yellow]{why}: running the study in the lab (QEMU TCG, emulated SVM); timings "
                          "will be TCG timings, counts are real[/]", highlight=False)
    else:
        lab_or_error("--lab asked for")
    if spec.backend == "jvm" and spec.guest.vcpus > 1:
        err_console.print(f"[yellow]the guest has {spec.guest.vcpus} vCPUs: in the lab two of them on TCG's "
                          "threads lose a guest now and then (a lost boot is retried, a lost restore fails "
                          "its run); vcpus = 1 is steadier (docs/lab.md)[/]", highlight=False)
    return True


def _run_in_lab(spec_file: str | None, example: bool, results: Path, shard: str | None, retry_failed: bool,
                firecracker: str | None, lab_mem: int, keep_going: bool) -> None:
    """The same ``experiment run`` inside one L1 for the whole study; results land in RESULTS here."""
    from firecracer.experiment.spec import example_spec_path
    from firecracer.lab.machine import LabSpec
    from firecracer.placement import run_cli

    spec_path = Path(example_spec_path() if example or spec_file is None else spec_file).resolve()
    results = results.resolve()
    args = ["experiment", "run", str(spec_path), "-o", str(results), "--no-lab"]
    if shard:
        args += ["--shard", shard]
    if retry_failed:
        args.append("--retry-failed")
    if keep_going:
        args.append("--keep-going")
    if firecracker:
        args += ["--firecracker", str(Path(firecracker).resolve())]

    def put(stream: typing.BinaryIO) -> typing.Callable[[bytes], None]:
        def write(data: bytes) -> None:
            stream.write(data)
            stream.flush()
        return write

    res = run_cli(args, shares=[results], spec=LabSpec(mem_mib=lab_mem),
                  progress=lambda m: err_console.print(f"[dim]lab: {m}[/]", highlight=False),
                  stdout=put(sys.stdout.buffer), stderr=put(sys.stderr.buffer))
    if res.interrupted:
        err_console.print(f"interrupted ({res.interrupted}): L1 powered off; finished runs are kept in "
                          f"{results}; run the same command again to resume")
        raise KeyboardInterrupt
    if res.rc != 0:
        sys.exit(res.rc if 0 < res.rc < 256 else 1)


@experiment.command()
@click.argument("results", metavar="RESULTS/", type=click.Path(file_okay=False, exists=True))
@click.option("-o", "--output", "out", metavar="report.html", type=click.Path(dir_okay=False),
              help="Where to write the report (default: RESULTS/report.html).")
def report(results: str, out: str | None) -> None:
    """Write the study's self-contained HTML report (tables and SVG plots, no network)."""
    from firecracer.experiment.report import write_report

    path = write_report(results, out or Path(results) / "report.html")
    console.print(f"report written: {path}")


@experiment.command()
@click.argument("dest", metavar="OUT/", type=click.Path(file_okay=False))
@click.argument("shards", metavar="SHARD_DIR...", nargs=-1, required=True,
                type=click.Path(file_okay=False, exists=True))
@click.option("--no-recordings", is_flag=True, help="Merge only the database rows, not runs/<id>/ dirs.")
def merge(dest: str, shards: tuple[str, ...], no_recordings: bool) -> None:
    """Merge the results directories of a study's shards into OUT/ (same spec required)."""
    from firecracer.experiment.store import merge as merge_results

    counts = merge_results(dest, shards, copy_recordings=not no_recordings)
    console.print(f"merged {len(shards)} result directories into {dest}: {counts['added']} runs added, "
                  f"{counts['replaced']} failed runs replaced by ok ones, {counts['kept']} duplicates kept")


@experiment.command()
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), help="Copy the spec to this file.")
@click.option("--jvm", is_flag=True,
              help="The JVM-settings study on Spring PetClinic instead (jvm backend: 5 JVM option sets × "
                   "ondemand, prefetch × 3), with guest.kernel/rootfs set to the built image.")
@click.option("--crac", is_flag=True,
              help="The CRaC study on Spring PetClinic instead: one JVM restored as a VM (ondemand, "
                   "prefetch) "
                   "and as a process with CRIU (criu, criu-lazy) × 3, with the built image's paths.")
@click.option("--jdks", is_flag=True,
              help="JDK 17 + AppCDS against JDK 25 + its AOT cache (a variant with its own image), each "
                   "restored as a VM and as a process (ondemand, criu-lazy) × 3.")
@click.option("--restores", is_flag=True,
              help="How predictable PetClinic's working set is over three first requests, and which load "
                   "order wins for a prefetch racing the vCPUs (ondemand, prefetch-background@runs|touch|"
                   "file × 3 requests × 2).")
@click.option("--warmup", is_flag=True,
              help="When to snapshot: PetClinic snapshotted after k = 0, 1, 10, 100, 1000 requests "
                   "(ondemand × 2).")
@click.option("--repetitions", type=click.IntRange(1, 1000), default=None,
              help="Another repetition count than the spec's.")
def example(out: str | None, jvm: bool, crac: bool, jdks: bool, restores: bool, warmup: bool,
            repetitions: int | None) -> None:
    """Print (or copy out) a bundled spec: the probe-guest study (2 working sets × 4 strategies × 3), with
    --jvm the JVM-settings study on PetClinic, with --crac the VM-vs-process restore study, with --jdks
    the JDK 17 + AppCDS vs JDK 25 + AOT cache study, with --restores the predictability and load-order
    study, with --warmup the when-to-snapshot sweep."""
    from firecracer.experiment.spec import (
        crac_example_spec_path,
        example_spec_path,
        example_spec_text,
        jdks_example_spec_path,
        jvm_example_text,
        restores_example_spec_path,
        warmup_example_spec_path,
    )

    chosen = {"--crac": crac_example_spec_path, "--jdks": jdks_example_spec_path,
              "--restores": restores_example_spec_path, "--warmup": warmup_example_spec_path}
    picked = [flag for flag, on in (("--jvm", jvm), ("--crac", crac), ("--jdks", jdks),
                                    ("--restores", restores), ("--warmup", warmup)) if on]
    if len(picked) > 1:
        raise click.UsageError(f"one of --jvm, --crac, --jdks, --restores, --warmup (not "
                               f"{' and '.join(picked)})")
    if picked:
        from firecracer.image.kernel import latest_kernel
        from firecracer.image.rootfs import latest_rootfs
        from firecracer.paths import images_dir

        images = images_dir()  # not built yet: where 'image kernel' / 'image rootfs' will put them
        text = jvm_example_text(latest_kernel() or images / "vmlinux",
                                latest_rootfs("petclinic") or images / "rootfs.ext4",
                                chosen[picked[0]]() if picked[0] in chosen else None, repetitions)
    else:
        text = example_spec_text(repetitions) if repetitions else example_spec_path().read_text()
    if out:
        Path(out).write_text(text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


COMMANDS = [experiment]
