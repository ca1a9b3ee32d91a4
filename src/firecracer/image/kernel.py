"""Build the guest kernel: an uncompressed x86-64 ``vmlinux`` that Firecracker and QEMU microvm boot.

The config is ``kernel.config`` (the project's own fragment) applied with ``make allnoconfig
KCONFIG_ALLCONFIG=…``: everything not asked for is off. Every option of the fragment is checked in the
final ``.config`` (Kconfig silently drops options whose dependencies are missing). Results are cached
under ``images_dir()/kernel-<key>/`` where the key hashes the source identity, the fragment, the
compiler version and the builder version; ``images_dir()/vmlinux`` points at the newest build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from firecracer.fsio import file_sha256, short_hash
from firecracer.image._build import (
    BUILDER_VERSION,
    ImageError,
    NullReporter,
    Reporter,
    ensure_packages,
    link_latest,
    need_free,
    prune,
    run_logged,
)
from firecracer.paths import images_dir

DEBIAN_SOURCE_PACKAGE = "linux-source-6.1"
DEBIAN_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
BUILD_PACKAGES = ("build-essential", "bc", "flex", "bison", "libelf-dev", "libssl-dev", "xz-utils")
#: free space a 6.1 build with this config needs (sources ≈ 1.4 GiB + objects)
BUILD_SPACE = 3 << 30
_OPT = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


@dataclass(frozen=True)
class KernelSource:
    """Where the kernel source comes from: ``debian`` (linux-source-6.1), a directory or a tarball."""

    kind: str
    path: Path
    identity: str


@dataclass(frozen=True)
class KernelBuild:
    """A built kernel in the cache."""

    vmlinux: Path
    key: str
    release: str
    config: Path
    log: Path
    seconds: float
    cached: bool


def fragment_text() -> str:
    """The project's config fragment (``firecracer/image/kernel.config``)."""
    return resources.files("firecracer.image").joinpath("kernel.config").read_text()


def fragment_options(text: str) -> dict[str, str]:
    """``{CONFIG_X: value}`` of a config file; ``# CONFIG_X is not set`` gives ``"n"``."""
    opts: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _OPT.match(line)
        if m:
            opts[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            opts[m.group(1)] = "n"
    return opts


def missing_options(fragment: str, final_config: str) -> list[str]:
    """Fragment options whose value differs in the final ``.config`` (as ``CONFIG_X=want (got …)``)."""
    want = fragment_options(fragment)
    got = fragment_options(final_config)
    bad = []
    for name, value in want.items():
        have = got.get(name, "n")
        if have != value:
            bad.append(f"{name}={value} (got {have})")
    return bad


def resolve_source(spec: str, reporter: Reporter, log: Path) -> KernelSource:
    """``debian`` (installing linux-source-6.1 with apt when missing), a source DIR or a TARBALL."""
    if spec == "debian":
        ensure_packages([DEBIAN_SOURCE_PACKAGE], "the kernel source", reporter, log)
        if not DEBIAN_TARBALL.is_file():
            raise ImageError(f"{DEBIAN_SOURCE_PACKAGE} is installed but {DEBIAN_TARBALL} is missing")
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", DEBIAN_SOURCE_PACKAGE],
                             capture_output=True, text=True, check=False).stdout.strip()
        return KernelSource("debian", DEBIAN_TARBALL, f"debian:{DEBIAN_SOURCE_PACKAGE}={ver}")
    path = Path(spec).expanduser()
    if path.is_dir():
        makefile = path / "Makefile"
        if not (makefile.is_file() and (path / "Kconfig").is_file()):
            raise ImageError(f"kernel source {path}: not a Linux source tree (no Makefile/Kconfig)")
        head = makefile.read_text(errors="replace")[:2000]
        ver = ".".join(re.findall(r"^(?:VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", head, re.M))
        newest = max((p.stat().st_mtime_ns for p in path.iterdir()), default=0)
        return KernelSource("dir", path.resolve(), f"dir:{path.resolve()}:{ver}:{newest}")
    if path.is_file():
        if not re.search(r"\.tar(\.(xz|gz|bz2|zst))?$|\.tgz$", path.name):
            raise ImageError(f"kernel source {path}: expected a .tar.xz/.tar.gz tarball or a directory")
        return KernelSource("tarball", path.resolve(), f"tarball:{file_sha256(path)}")
    raise ImageError(f"kernel source {spec!r}: no such directory or tarball (or use 'debian')")


def compiler_version() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        return "none"
    out = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def cache_key(source: KernelSource, fragment: str) -> str:
    return short_hash(["kernel", BUILDER_VERSION, source.identity, fragment, compiler_version()])


def latest_kernel() -> Path | None:
    """The newest cached ``vmlinux`` (``images_dir()/vmlinux``), or None."""
    link = images_dir() / "vmlinux"
    return link.resolve() if link.exists() else None


def check_vmlinux(path: Path) -> None:
    """An uncompressed x86-64 ELF (what Firecracker boots on x86); raises ``ImageError`` otherwise."""
    with path.open("rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or head[4] != 2 or int.from_bytes(head[18:20], "little") != 62:
        raise ImageError(f"{path}: not an x86-64 ELF vmlinux")


def build_kernel(source: str = "debian", output: Path | None = None, jobs: int | None = None,
                 reporter: Reporter | None = None, force: bool = False) -> KernelBuild:
    """Build (or reuse from the cache) the guest kernel; copy it to ``output`` when given."""
    rep: Reporter = reporter or NullReporter()
    images = images_dir()
    images.mkdir(parents=True, exist_ok=True)
    apt_log = images / "apt.log"
    ensure_packages(BUILD_PACKAGES, "the kernel build", rep, apt_log)
    src = resolve_source(source, rep, apt_log)
    fragment = fragment_text()
    key = cache_key(src, fragment)
    final = images / f"kernel-{key}"
    meta_path = final / "kernel.json"
    if meta_path.is_file() and (final / "vmlinux").is_file() and not force:
        meta = json.loads(meta_path.read_text())
        rep.step(f"kernel {key} is cached: {final / 'vmlinux'}")
        link_latest(final / "vmlinux", images / "vmlinux")
        result = KernelBuild(final / "vmlinux", key, meta["release"], final / "config", final / "build.log",
                             float(meta["build_seconds"]), cached=True)
        _copy_out(result, output)
        return result

    t0 = time.monotonic()
    work = images / "build" / f"kernel-{key}"
    log = images / f"kernel-{key}.build.log"  # outside the work dir: it outlives a failed build
    need_free(images, BUILD_SPACE, "the kernel build")
    if work.exists():
        shutil.rmtree(work)
    log.unlink(missing_ok=True)
    try:
        release, n = _configure_and_make(src, fragment, work, log, jobs, rep)
        out = work / "out"
        tmp_final = images / f".kernel-{key}.tmp"
        if tmp_final.exists():
            shutil.rmtree(tmp_final)
        tmp_final.mkdir()
        shutil.copy2(out / "vmlinux", tmp_final / "vmlinux")
        shutil.copy2(out / ".config", tmp_final / "config")
        seconds = time.monotonic() - t0
        meta = {
            "format": "firecracer-kernel", "version": 1, "key": key, "release": release,
            "source": asdict(src) | {"path": str(src.path)}, "compiler": compiler_version(),
            "fragment_sha256": short_hash([fragment]), "options_verified": len(fragment_options(fragment)),
            "jobs": n, "build_seconds": round(seconds, 1),
            "vmlinux_bytes": (out / "vmlinux").stat().st_size, "vmlinux_sha256": file_sha256(out / "vmlinux"),
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp_final / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.move(str(log), tmp_final / "build.log")
        if final.exists():
            shutil.rmtree(final)
        tmp_final.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work)  # objects and unpacked sources: ≈ 2 GiB, never reused
    link_latest(final / "vmlinux", images / "vmlinux")
    prune(images, "kernel")
    rep.step(f"kernel {release} built in {seconds:.0f} s: {final / 'vmlinux'}")
    result = KernelBuild(final / "vmlinux", key, release, final / "config", final / "build.log", seconds,
                         cached=False)
    _copy_out(result, output)
    return result


def _configure_and_make(src: KernelSource, fragment: str, work: Path, log: Path, jobs: int | None,
                        rep: Reporter) -> tuple[str, int]:
    """Unpack (unless a tree was given), ``allnoconfig`` + fragment, verify, ``make vmlinux``."""
    out = work / "out"
    out.mkdir(parents=True)
    if src.kind == "dir":
        tree = src.path
    else:
        tree = work / "src"
        tree.mkdir()
        rep.step(f"unpacking {src.path}")
        run_logged(["tar", "-xf", str(src.path), "-C", str(tree), "--strip-components=1"], log,
                   f"unpacking {src.path}", rep)
    frag_file = work / "fragment.config"
    frag_file.write_text(fragment)
    make = ["make", "-C", str(tree), f"O={out}", "ARCH=x86_64"]
    rep.step("configuring: make allnoconfig with the firecracer fragment")
    run_logged([*make, "allnoconfig", f"KCONFIG_ALLCONFIG={frag_file}"], log, "make allnoconfig", rep)
    bad = missing_options(fragment, (out / ".config").read_text())
    if bad:
        raise ImageError(f"kernel config: {len(bad)} option(s) of the fragment did not land in the final "
                         f".config (missing dependencies?): {', '.join(bad)}")
    n = jobs or (os.cpu_count() or 1) + 1
    rep.step(f"building vmlinux with make -j{n} (log: {log})")
    run_logged(["nice", "-n", "10", *make, f"-j{n}", "vmlinux"], log, "make vmlinux", rep)
    release = (out / "include" / "config" / "kernel.release").read_text().strip()
    check_vmlinux(out / "vmlinux")
    return release, n


def _copy_out(result: KernelBuild, output: Path | None) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.vmlinux, output)
