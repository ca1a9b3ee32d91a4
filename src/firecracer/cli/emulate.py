"""``firecracer emulate``: record a real JVM's lazy-restore page order under QEMU TCG (no KVM needed)."""

from __future__ import annotations

from pathlib import Path

import click

from firecracer.cli._render import console, err_console, print_json
from firecracer.errors import FirecracerError

VARIANTS = {
    "default": ("", False),
    "thp-appcds": ("-XX:+UseTransparentHugePages", True),
}


def _default_image() -> tuple[Path | None, Path | None]:
    try:
        from firecracer.image.kernel import latest_kernel
        from firecracer.image.rootfs import latest_rootfs
    except ImportError:
        return None, None
    return latest_kernel(), latest_rootfs()


@click.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Recording directory to write.")
@click.option("--kernel", type=click.Path(path_type=Path), help="vmlinux (default: last built).")
@click.option("--rootfs", type=click.Path(path_type=Path), help="rootfs.ext4 (default: last built).")
@click.option("--variant", type=click.Choice(sorted(VARIANTS)), default="default", show_default=True,
              help="JVM flag set: default, or THP + AppCDS.")
@click.option("--java-options", default=None, help="Extra JVM options (overrides the variant's).")
@click.option("--mem-mib", type=int, default=1024, show_default=True)
@click.option("--cpus", type=int, default=2, show_default=True)
@click.option("--warmup", type=int, default=30, show_default=True, help="Warm-up requests.")
@click.option("--request", "request_path", default="/owners/1", show_default=True,
              help="The first request sent after the restore.")
@click.option("--boot-timeout", type=float, default=1200.0, show_default=True)
@click.option("--keep-snapshot", is_flag=True, help="Copy vmstate + sparse mem into RECORDING/snapshot/.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the run's work files here.")
@click.option("--qemu", default="qemu-system-x86_64", show_default=True)
@click.option("--cpu-model", default="max", show_default=True, help="QEMU -cpu for both VMs.")
@click.option("--list-samples", is_flag=True, help="List the bundled real recordings and exit.")
@click.option("--extract-sample", metavar="NAME", help="Unpack a bundled recording into OUT.")
@click.option("--json", "as_json", is_flag=True)
def emulate(out: Path | None, kernel: Path | None, rootfs: Path | None, variant: str,
            java_options: str | None, mem_mib: int, cpus: int, warmup: int, request_path: str,
            boot_timeout: float, keep_snapshot: bool,
            workdir: Path | None, qemu: str, cpu_model: str, list_samples: bool, extract_sample: str | None,
            as_json: bool) -> None:
    """Boot the image under QEMU TCG, warm up, collect, snapshot, restore lazily, record the page order.

    The restored VM's RAM is a file on a FUSE mount served by this tool with readahead off, so every
    page the restored guest touches first is read once, in order: the same trace a userfaultfd
    `ondemand` restore gives. TCG times are not comparable to KVM times (the recording says so).
    """
    from firecracer import samples

    if list_samples:
        rows = []
        for name in samples.names():
            rec = samples.info(name)
            rows.append({"name": name, "source": rec.get("source"), "label": rec.get("label"),
                         "pages": (rec.get("trace") or {}).get("pages"), "created": rec.get("created")})
        if as_json:
            print_json(rows)
        else:
            for row in rows:
                console.print(f"{row['name']}: {row['label']} ({row['source']}, {row['pages']} pages, "
                              f"{row['created']})")
        return
    if extract_sample:
        dest = samples.extract(extract_sample, out or Path("."))
        if as_json:
            print_json({"sample": extract_sample, "path": str(dest)})
        else:
            console.print(str(dest))
        return

    from firecracer.emulate.runner import EmulateConfig, run

    k_default, r_default = _default_image()
    kernel = kernel or k_default
    rootfs = rootfs or r_default
    if kernel is None or rootfs is None:
        raise FirecracerError("no guest image: build one with `firecracer image kernel` and "
                              "`firecracer image rootfs`, or pass --kernel and --rootfs")
    opts, appcds = VARIANTS[variant]
    cfg = EmulateConfig(kernel=kernel, rootfs=rootfs, out=out or Path(f"recording-emulate-{variant}"),
                        mem_mib=mem_mib, cpus=cpus,
                        java_options=opts if java_options is None else java_options,
                        appcds=appcds, label=f"petclinic {variant} (QEMU TCG, FUSE lazy restore)",
                        warmup=warmup, request_path=request_path, boot_timeout=boot_timeout, qemu=qemu,
                        keep_snapshot=keep_snapshot, workdir=workdir, cpu_model=cpu_model)

    def progress(msg: str) -> None:
        if not as_json:
            err_console.print(f"[dim]emulate:[/] {msg}")

    res = run(cfg, progress)
    if as_json:
        print_json(res.as_dict())
        return
    console.print(f"recording: {res.out}")
    console.print(f"first-touch pages until the first response: {res.pages} "
                  f"({res.zero_pages} zero, {res.reads_before_resume} during vmstate load)")
    console.print(f"first-touch pages attributed to an owner: {res.attributed_pct} %")
    for key, val in res.timings_ms.items():
        console.print(f"  {key}: {val} ms")
    console.print("[yellow]times are QEMU TCG (software emulation), not comparable to KVM[/]")
    for p in res.problems:
        err_console.print(f"[yellow]problem:[/] {p}")


COMMANDS = [emulate]
