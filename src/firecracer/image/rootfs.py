"""Build the guest root file system: Debian bookworm + JDK + python3 + init + agent + the workload.

The workload is a bundled app (:mod:`firecracer.image.apps`: Spring PetClinic by default, or the tiny
JDK-only service), compiled in the image against the Debian jars it needs, or a user JAR.

debootstrap (minbase) fills a directory, the project's files are copied in, the workload is compiled
and trained *inside* that tree (``unshare --mount --pid --net --fork --mount-proc chroot``: the proc
mount and the network namespace vanish with the process, whatever happens), then ``mkfs.ext4 -d`` turns
the tree into an image without mounting anything. The tree is always deleted, on success and failure.

Cache (under ``images_dir()``): ``base-<key>.tar`` is the debootstrapped system (reused when only
project files, the app or the JDK directory change); ``rootfs-<key>/{rootfs.ext4,image.json,build.log}``
is the result; ``images_dir()/rootfs.ext4`` points at the newest one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from firecracer.fsio import file_sha256, short_hash
from firecracer.image import crac
from firecracer.image._build import (
    BUILDER_VERSION,
    DiskFull,
    ImageError,
    NullReporter,
    Reporter,
    ensure_packages,
    link_latest,
    need_free,
    prune,
    run_logged,
)
from firecracer.image.apps import BUNDLED, DEFAULT_APP, BundledApp, build_script, source_files
from firecracer.paths import images_dir

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: criu: process checkpoint/restore of the JVM inside the guest (CRaC's engine; docs/crac.md)
BASE_PACKAGES = ("python3", "procps", "iproute2", "criu")
DEBIAN_JDK_PACKAGE = "openjdk-17-jdk-headless"
DEBIAN_JDK_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
HOST_PACKAGES = ("debootstrap", "e2fsprogs", "util-linux", "tar")
APP_PORT = 8080
INIT_PATH = "/sbin/firecracer-init"
#: kernel arguments every boot of this image needs (plus console/ip/FC_* per use)
KERNEL_ARGS = f"root=/dev/vda ro init={INIT_PATH}"


def jdk_feature_version(home: Path) -> int:
    """The JDK's feature release (17, 25, …) from its ``release`` file; 0 when unknown."""
    try:
        text = (home / "release").read_text(errors="replace")
    except OSError:
        return 0
    m = re.search(r'^JAVA_VERSION="?(\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def jdk_has_crac(home: Path, release: dict[str, str]) -> bool:
    """Whether a JDK has CRaC built in: its ``release`` lists the ``jdk.crac`` module, or it bundles CRIU
    (``lib/criu``, where CRaC builds keep theirs)."""
    modules = release.get("MODULES", "").split()
    return "jdk.crac" in modules or (home / "lib" / "criu").exists()


@dataclass(frozen=True)
class JdkSpec:
    """``debian`` (openjdk-17-jdk-headless from the mirror), a JDK directory, or a JDK tarball."""

    kind: str
    path: Path | None
    identity: str


@dataclass(frozen=True)
class AppSpec:
    """The workload: a bundled app (compiled from source in the image) or a user JAR + main class.

    ``kind`` is the bundled app's name (``petclinic``, ``tiny``) or ``jar``.
    """

    kind: str
    jar: Path | None
    main: str
    args: tuple[str, ...]
    identity: str
    train_seconds: float = 20.0
    bundled: BundledApp | None = None

    @property
    def packages(self) -> tuple[str, ...]:
        """Debian packages the workload needs in the image (a bundled app's libraries)."""
        return self.bundled.packages if self.bundled else ()


@dataclass(frozen=True)
class RootfsBuild:
    """A built root file system in the cache."""

    image: Path
    manifest: Path
    key: str
    seconds: float
    cached: bool
    info: dict[str, object] = field(default_factory=dict)


def parse_size(text: str) -> int:
    """``1G``, ``1536M``, ``800MiB`` or bytes → bytes; ``ImageError`` on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise ImageError(f"--size {text!r}: expected a size such as 1G or 1536M")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def host_mirror() -> str:
    """The host's Debian mirror (deb822 ``URIs:`` or sources.list ``deb URL``), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[2] if parts[1].startswith("[") else parts[1]
    return DEFAULT_MIRROR


def resolve_jdk(spec: str) -> JdkSpec:
    """Check a JDK argument before anything slow runs; ``ImageError`` names what is wrong."""
    if spec == "debian":
        return JdkSpec("debian", None, f"debian:{DEBIAN_JDK_PACKAGE}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "bin" / "java").is_file():
            raise ImageError(f"JDK directory {path}: no bin/java in it")
        release = (path / "release").read_text(errors="replace") if (path / "release").is_file() else ""
        return JdkSpec("dir", path.resolve(), f"dir:{path.resolve()}:{short_hash([release])}:"
                       f"{(path / 'bin' / 'java').stat().st_mtime_ns}")
    if path.is_file():
        try:
            with tarfile.open(path) as tf:
                names = tf.getnames()
        except (tarfile.TarError, OSError) as exc:
            raise ImageError(f"JDK tarball {path}: not a readable tar archive ({exc})") from None
        if not any(re.fullmatch(r"(\./)?[^/]+/bin/java", n) for n in names):
            raise ImageError(f"JDK tarball {path}: no <top>/bin/java in it")
        return JdkSpec("tarball", path.resolve(), f"tarball:{file_sha256(path)}")
    raise ImageError(f"JDK {spec!r}: no such directory or tarball (or use 'debian')")


def jar_main_class(jar: Path) -> str | None:
    """``Main-Class`` of a JAR's manifest, or None."""
    with zipfile.ZipFile(jar) as zf:
        try:
            text = zf.read("META-INF/MANIFEST.MF").decode("utf-8", errors="replace")
        except KeyError:
            return None
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.lower().startswith("main-class:"):
            return line.split(":", 1)[1].strip() or None
    return None


def resolve_app(app: str, main: str | None, args: str | None, train_seconds: float = 20.0,
                owners: int | None = None) -> AppSpec:
    """A bundled app (``petclinic``, ``tiny``) or a JAR (with ``--main`` or a manifest Main-Class in it).

    ``owners`` (bundled apps only) is the number of owners the app seeds its data with (``--owners N``).
    """
    argv = tuple(shlex.split(args)) if args else ()
    names = " or ".join(f"'{n}'" for n in BUNDLED)
    if owners is not None and not 1 <= owners <= 10_000_000:
        raise ImageError(f"--owners {owners}: must be between 1 and 10000000")
    if app in BUNDLED:
        bundled = BUNDLED[app]
        if main:
            raise ImageError(f"--main is for a JAR given with --app; {app} has its own main class")
        argv = argv or bundled.args
        if owners is not None:
            argv = (*argv, "--owners", str(owners))
        tree = short_hash(part for rel, data in source_files(bundled) for part in (rel, data))
        return AppSpec(app, None, bundled.main, argv, f"{app}:{tree}", bundled=bundled)
    if app == "demo":
        raise ImageError("--app demo is now called 'tiny' (the small JDK-only service); the default is "
                         "'petclinic' (Spring PetClinic)")
    if owners is not None:
        raise ImageError(f"--owners is for the bundled apps ({names}), not for a JAR")
    jar = Path(app).expanduser()
    if not jar.is_file():
        raise ImageError(f"--app {app}: no such JAR (or use {names})")
    if not zipfile.is_zipfile(jar):
        raise ImageError(f"--app {jar}: not a JAR (zip) file")
    cls = main or jar_main_class(jar)
    if not cls:
        raise ImageError(f"JAR {jar} has no Main-Class in its manifest; give the main class with --main")
    with zipfile.ZipFile(jar) as zf:
        entry = cls.replace(".", "/") + ".class"
        if entry not in zf.namelist():
            raise ImageError(f"JAR {jar} has no class {cls} ({entry})")
    return AppSpec("jar", jar.resolve(), cls, argv, f"jar:{file_sha256(jar)}", train_seconds)


#: what the image carries of the package besides ``guest/``: the standard-library modules guest code
#: imports (format names and ``RecordingFacts``; bounded reads, atomic writes; the typed errors)
GUEST_LEAVES = ("formats.py", "fsio.py", "errors.py")


def guest_files() -> list[tuple[str, bytes]]:
    """(path below ``firecracer/``, bytes) of the code the image ships: ``guest/`` and its leaves.

    Host-only code (the agent's client, numpy) lives outside ``guest/`` (``firecracer.agentclient``),
    so nothing the guest cannot run is copied; tests/image/test_guest_files.py imports the set alone.
    """
    pkg = resources.files("firecracer")
    return ([(name, pkg.joinpath(name).read_bytes()) for name in GUEST_LEAVES]
            + _tree_files(pkg.joinpath("guest"), "guest/"))


def _init_script() -> Traversable:
    return resources.files("firecracer.image").joinpath("guest_init", "init.py")


def _tree_files(root: Traversable, prefix: str = "") -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every file below ``root`` except caches, sorted."""
    out: list[tuple[str, bytes]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name in ("__pycache__",) or entry.name.endswith(".pyc"):
            continue
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            out += _tree_files(entry, rel + "/")
        else:
            out.append((rel, entry.read_bytes()))
    return out


def _files_hash(files: list[tuple[str, bytes]]) -> str:
    return short_hash(part for rel, data in files for part in (rel, data))


def _tree_hash(root: Traversable) -> str:
    return _files_hash(_tree_files(root))


def latest_rootfs(app: str | None = None) -> Path | None:
    """The newest cached ``rootfs.ext4`` (``images_dir()/rootfs.ext4``), or None.

    With ``app`` (``petclinic``, ``tiny``, ``jar``): the newest build of that workload, by its manifest.
    """
    if app is None:
        link = images_dir() / "rootfs.ext4"
        return link.resolve() if link.exists() else None
    builds = sorted(images_dir().glob("rootfs-*/image.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in builds:
        try:
            name = json.loads(manifest.read_text()).get("app", {}).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if name == app and (manifest.parent / "rootfs.ext4").is_file():
            return manifest.parent / "rootfs.ext4"
    return None


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a build tree, first unmounting anything a crashed chroot step left below it."""
    if not path.exists():
        return
    for point in _mounts_below(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_below(path):
        raise ImageError(f"cannot remove {path}: still mounted below it: {', '.join(_mounts_below(path))}")
    shutil.rmtree(path)


def in_chroot(root: Path, argv: list[str], log: Path, what: str, reporter: Reporter,
              timeout: float = 900) -> None:
    """Run ``argv`` inside ``root`` with private mount, pid and network namespaces and its own /proc."""
    env = {"PATH": "/opt/jdk/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    run_logged(["unshare", "--mount", "--pid", "--net", "--fork", f"--mount-proc={root / 'proc'}",
                "chroot", str(root), *argv], log, what, reporter, env=env, timeout=timeout)


def _dpkg_packages(root: Path) -> dict[str, str]:
    status = root / "var" / "lib" / "dpkg" / "status"
    pkgs: dict[str, str] = {}
    for block in status.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            pkgs[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(pkgs.items()))


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total


def build_rootfs(jdk: str = "debian", app: str = DEFAULT_APP, main: str | None = None,
                 args: str | None = None, output: Path | None = None, size: str | None = None,
                 mirror: str | None = None, train_seconds: float = 20.0, reporter: Reporter | None = None,
                 force: bool = False, owners: int | None = None) -> RootfsBuild:
    """Build (or reuse from the cache) a root file system image; copy it to ``output`` when given."""
    rep: Reporter = reporter or NullReporter()
    jdk_spec = resolve_jdk(jdk)
    app_spec = resolve_app(app, main, args, train_seconds, owners)
    size_bytes = parse_size(size) if size else None
    if os.geteuid() != 0:
        raise ImageError("image rootfs needs root (debootstrap and chroot); run it as root")
    images = images_dir()
    images.mkdir(parents=True, exist_ok=True)
    ensure_packages(HOST_PACKAGES, "the rootfs build", rep, images / "apt.log")
    mirror_url = mirror or host_mirror()
    packages = ([*BASE_PACKAGES] + ([DEBIAN_JDK_PACKAGE] if jdk_spec.kind == "debian" else [])
                + list(app_spec.packages))
    base_key = short_hash(["base", BUILDER_VERSION, SUITE, mirror_url, *packages])
    key = short_hash(["rootfs", base_key, jdk_spec.identity, app_spec.identity, app_spec.main,
                      *app_spec.args, str(app_spec.train_seconds), _init_script().read_bytes(),
                      _files_hash(guest_files()), _tree_hash(crac.sources()), str(size_bytes)])
    final = images / f"rootfs-{key}"
    if (final / "rootfs.ext4").is_file() and (final / "image.json").is_file() and not force:
        rep.step(f"rootfs {key} is cached: {final / 'rootfs.ext4'}")
        link_latest(final / "rootfs.ext4", images / "rootfs.ext4")
        _copy_out(final / "rootfs.ext4", output)
        return RootfsBuild(final / "rootfs.ext4", final / "image.json", key, 0.0, True,
                           json.loads((final / "image.json").read_text()))

    t0 = time.monotonic()
    work = images / "build" / f"rootfs-{key}"
    remove_tree(work)  # leftovers of a killed run
    root = work / "root"
    log = work / "build.log"
    try:
        need_free(images, 3 << 30, "the rootfs build")
        root.mkdir(parents=True)
        _base_system(root, images, base_key, packages, mirror_url, log, rep)
        jdk_home = _install_jdk(root, jdk_spec, work, log, rep)
        _install_project_files(root)
        crac_agent = _install_crac_agent(root, jdk_spec, log, rep)
        app_info = _install_app(root, app_spec, jdk_spec, log, rep)
        info = _manifest(root, jdk_spec, jdk_home, app_spec, app_info, mirror_url, key)
        info["crac_agent"] = crac_agent
        (root / "opt" / "firecracer" / "image.json").write_text(json.dumps(info, indent=2) + "\n")
        final_tmp = images / f".rootfs-{key}.tmp"
        remove_tree(final_tmp)
        final_tmp.mkdir()
        image = final_tmp / "rootfs.ext4"
        tree_bytes = _du(root)
        info["sizes"] = _make_ext4(root, image, tree_bytes, size_bytes, log, rep)
        info["hashes"]["rootfs_sha256"] = file_sha256(image)  # type: ignore[index]
        info["build_seconds"] = round(time.monotonic() - t0, 1)
        (final_tmp / "image.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.copy2(log, final_tmp / "build.log")
        remove_tree(final)
        final_tmp.rename(final)
    except OSError as exc:
        if exc.errno == 28:
            raise DiskFull(f"rootfs build: no space left on device ({exc.filename or images})") from None
        raise ImageError(f"rootfs build: {exc}") from None
    finally:
        remove_tree(root)  # never leave a root-owned tree behind (the log stays for a failed build)
    remove_tree(work)
    link_latest(final / "rootfs.ext4", images / "rootfs.ext4")
    prune(images, "rootfs")
    seconds = time.monotonic() - t0
    rep.step(f"rootfs built in {seconds:.0f} s: {final / 'rootfs.ext4'}")
    _copy_out(final / "rootfs.ext4", output)
    return RootfsBuild(final / "rootfs.ext4", final / "image.json", key, seconds, False, info)


def _base_system(root: Path, images: Path, base_key: str, packages: list[str], mirror: str, log: Path,
                 rep: Reporter) -> None:
    """debootstrap into ``root``, or unpack the cached result of an identical earlier debootstrap."""
    base_tar = images / f"base-{base_key}.tar"
    if base_tar.is_file():
        rep.step(f"unpacking the cached Debian base system {base_tar.name}")
        run_logged(["tar", "-xpf", str(base_tar), "-C", str(root)], log, "unpacking the base system", rep)
        return
    rep.step(f"debootstrap {SUITE} (minbase + {', '.join(packages)}) from {mirror}")
    debs = images / "debs"
    debs.mkdir(exist_ok=True)
    try:
        run_logged(["debootstrap", "--variant=minbase", f"--cache-dir={debs}",
                    f"--include={','.join(packages)}", SUITE, str(root), mirror],
                   log, "debootstrap (apt step)", rep, timeout=3600)
    except ImageError as exc:
        detail = _debootstrap_error(root)
        if detail and not isinstance(exc, DiskFull):
            raise ImageError(f"debootstrap (apt step) failed: {detail} (full log: {log})") from None
        raise
    for junk in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        junk.unlink()
    for junk in (root / "var" / "lib" / "apt" / "lists").glob("*_Packages"):
        junk.unlink()
    rep.step(f"saving the base system for reuse: {base_tar.name}")
    partial = base_tar.with_suffix(".partial")
    run_logged(["tar", "-cpf", str(partial), "-C", str(root), "."], log, "saving the base system", rep)
    partial.rename(base_tar)


def _debootstrap_error(root: Path) -> str | None:
    dlog = root / "debootstrap" / "debootstrap.log"
    if not dlog.is_file():
        return None
    lines = [ln.strip() for ln in dlog.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("E:", "W: Failure", "dpkg: error")):
            return ln
    return None


def _install_jdk(root: Path, spec: JdkSpec, work: Path, log: Path, rep: Reporter) -> str:
    """Make the JDK available as /opt/jdk in the image; returns its real home inside the image."""
    opt = root / "opt"
    opt.mkdir(exist_ok=True)
    if spec.kind == "debian":
        (opt / "jdk").symlink_to(DEBIAN_JDK_HOME)
        return DEBIAN_JDK_HOME
    assert spec.path is not None
    rep.step(f"copying the JDK {spec.path} to /opt/jdk")
    if spec.kind == "dir":
        shutil.copytree(spec.path, opt / "jdk", symlinks=True)
    else:
        (opt / "jdk").mkdir()
        run_logged(["tar", "-xf", str(spec.path), "-C", str(opt / "jdk"), "--strip-components=1"], log,
                   f"unpacking the JDK {spec.path}", rep)
    if not (opt / "jdk" / "bin" / "java").is_file():
        raise ImageError(f"JDK {spec.path}: /opt/jdk/bin/java missing after the copy")
    return "/opt/jdk"


def _install_project_files(root: Path) -> None:
    """init as /sbin/firecracer-init, the guest agent package under /opt/firecracer, overlay dirs."""
    init = root / INIT_PATH.lstrip("/")
    init.write_bytes(_init_script().read_bytes())
    init.chmod(0o755)
    pkg = root / "opt" / "firecracer" / "firecracer"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""firecracer guest-side code (copied by image rootfs)."""\n')
    for rel, data in guest_files():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    for d in ("overlay", "rom", "mnt"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc" / "hostname").write_text("firecracer\n")


def _install_crac_agent(root: Path, jdk: JdkSpec, log: Path, rep: Reporter) -> str | None:
    """The CRaC agent jar (and the org.crac sources apps build against) under /opt/firecracer/crac.

    Compiled with the image's javac, like the bundled apps (class files the image's JDK runs, no JDK
    needed on the host). A JDK without javac gets no agent (None; init then starts the JVM without it).
    """
    home = root / crac.IMAGE_DIR.lstrip("/")
    crac.write_sources(home / "source")
    if jdk.kind != "debian" and not (root / "opt" / "jdk" / "bin" / "javac").exists():  # debian: a link
        rep.step("the JDK has no javac: no CRaC agent in this image (org.crac hooks will not run)")
        return None
    rep.step("compiling the CRaC agent (jdk.crac for a stock JDK + its control socket) inside the image")
    in_chroot(root, ["/bin/sh", "-c", crac.agent_build_script(f"{crac.IMAGE_DIR}/source", crac.IMAGE_DIR)],
              log, "compiling the CRaC agent (javac)", rep)
    return crac.IMAGE_AGENT_JAR


def _install_app(root: Path, app: AppSpec, jdk: JdkSpec, log: Path, rep: Reporter) -> dict[str, object]:
    """Install (and for a bundled app, compile) the workload; make the default and AppCDS archives."""
    app_dir = root / "opt" / "app"
    app_dir.mkdir(parents=True)
    java = "/opt/jdk/bin/java"
    classpath: list[str]
    if app.bundled is not None:
        b = app.bundled
        if not (root / "opt" / "jdk" / "bin" / "javac").exists() and jdk.kind != "debian":
            raise ImageError(f"JDK {jdk.path} has no bin/javac (a JRE?); {b.name} is compiled with it")
        missing = [j for j in b.library_jars() if not (root / j.lstrip("/")).exists()]
        if missing:
            raise ImageError(f"the {b.name} app needs {', '.join(missing)}, which the Debian packages "
                             f"{' '.join(b.packages)} did not install")
        for rel, data in source_files(b):
            target = app_dir / "source" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        rep.step(f"compiling {b.name} ({b.summary}) with javac inside the image")
        script = build_script(b, "/opt/app/source", "/opt/app", crac_source_dir=f"{crac.IMAGE_DIR}/source")
        in_chroot(root, ["/bin/sh", "-c", script], log,
                  f"compiling {b.name} (javac)", rep)
        jar = f"/opt/app/{b.jar_name()}"
        classpath = b.classpath(jar)
        train_args = [*app.args, *b.train_args]
        train_seconds = 900.0
    else:
        assert app.jar is not None
        shutil.copy2(app.jar, app_dir / app.jar.name)
        jar = f"/opt/app/{app.jar.name}"
        classpath = [jar]
        train_args = list(app.args)
        train_seconds = app.train_seconds
    if not (root / "opt" / "jdk" / "lib" / "server" / "classes.jsa").exists():
        rep.step("creating the default CDS archive (java -Xshare:dump)")
        in_chroot(root, [java, "-Xshare:dump"], log, "java -Xshare:dump", rep)
    how = " ".join(app.bundled.train_args) if app.bundled else f"{train_seconds:.0f} s, then SIGTERM"

    def train(what: str, option: str, out: str, slack: float) -> None:
        """One training run of the app with ``option`` (it writes ``out`` at exit), bounded."""
        rep.step(f"{what} of {app.main} ({how})")
        in_chroot(root, ["/usr/bin/python3", "-I", INIT_PATH, "--train", str(train_seconds), "--", java,
                         option, "-cp", ":".join(classpath), app.main, *train_args],
                  log, what, rep, timeout=train_seconds + slack)
        if not (root / out.lstrip("/")).is_file():
            raise ImageError(f"the {what} of {app.main} wrote no {out} (see {log})")

    train("AppCDS training run", "-XX:ArchiveClassesAtExit=/opt/app/app-cds.jsa", "/opt/app/app-cds.jsa", 300)
    aot = None
    jdk_link = root / "opt" / "jdk"  # Debian's: a link to an absolute path inside the image
    jdk_home = root / os.readlink(jdk_link).lstrip("/") if jdk_link.is_symlink() else jdk_link
    if jdk_feature_version(jdk_home) >= 25:
        # JEP 483/514: an AOT cache (classes loaded and linked, method profiles) from one training run;
        # the JVM takes it with -XX:AOTCache (a study's variant: `experiment example --jdks`)
        aot = "/opt/app/app.aot"
        train("AOT cache training run", f"-XX:AOTCacheOutput={aot}", aot, 600)
    info: dict[str, object] = {
        "name": app.kind, "classpath": classpath, "main": app.main, "jar": jar, "args": list(app.args),
        "appcds": "/opt/app/app-cds.jsa", "aotcache": aot, "workdir": "/opt/app",
        "port": APP_PORT if app.bundled else None,
        "debian_packages": list(app.packages),
    }
    (root / "opt" / "firecracer" / "app.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _manifest(root: Path, jdk: JdkSpec, jdk_home: str, app: AppSpec, app_info: dict[str, object],
              mirror: str, key: str) -> dict[str, object]:
    release: dict[str, str] = {}
    rel_file = root / jdk_home.lstrip("/") / "release"
    if rel_file.is_file():
        for line in rel_file.read_text(errors="replace").splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                release[k] = v.strip('"')
    home = root / jdk_home.lstrip("/")
    archives = {}
    for rel in ("lib/server/classes.jsa", "lib/server/classes_nocoops.jsa"):
        if (home / rel).is_file():
            archives[f"{jdk_home}/{rel}"] = (home / rel).stat().st_size
    archives["/opt/app/app-cds.jsa"] = (root / "opt" / "app" / "app-cds.jsa").stat().st_size
    shipped = {rel: hashlib.sha256(data).hexdigest() for rel, data in guest_files()}
    return {
        "format": "firecracer-image", "version": 1, "key": key,
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "debian": {"suite": SUITE, "mirror": mirror},
        "packages": _dpkg_packages(root),
        "jdk": {"source": jdk.kind, "path": str(jdk.path) if jdk.path else DEBIAN_JDK_PACKAGE,
                "home": jdk_home,
                "version": release.get("JAVA_RUNTIME_VERSION") or release.get("JAVA_VERSION"),
                "has_jcmd": (home / "bin" / "jcmd").exists(),
                # a CRaC JDK checkpoints itself (JDK.checkpoint, -XX:CRaCRestoreFrom, its own criu):
                # docs/crac.md; recorded so a study can say which engine its process restores used
                "crac": jdk_has_crac(home, release)},
        "app": app_info | {"source": str(app.jar) if app.jar else f"bundled:{app.kind}"},
        "archives": archives,
        "init": INIT_PATH, "kernel_args": KERNEL_ARGS,
        "agent": {"module": "firecracer.guest.agent", "pythonpath": "/opt/firecracer",
                  "installed": "guest/agent.py" in shipped},
        "hashes": {"init_sha256": hashlib.sha256(_init_script().read_bytes()).hexdigest(),
                   "guest_files_sha256": shipped},
    }


def _make_ext4(root: Path, image: Path, tree_bytes: int, size_bytes: int | None, log: Path,
               rep: Reporter) -> dict[str, int]:
    """``mkfs.ext4 -d``: the tree becomes the image, no mount. Default size: tree + 25 % + 128 MiB."""
    need = int(tree_bytes * 1.08) + (16 << 20)
    if size_bytes is None:
        size_bytes = ((int(tree_bytes * 1.25) + (128 << 20)) + (64 << 20) - 1) // (64 << 20) * (64 << 20)
    elif size_bytes < need:
        raise ImageError(f"--size {size_bytes >> 20} MiB is too small: the tree needs about {need >> 20} MiB")
    need_free(image.parent, size_bytes + (64 << 20), "writing the ext4 image")
    rep.step(f"mkfs.ext4 -d: {tree_bytes >> 20} MiB of files into a {size_bytes >> 20} MiB image")
    with image.open("wb") as f:
        f.truncate(size_bytes)
    try:
        run_logged(["mkfs.ext4", "-q", "-F", "-L", "firecracer", "-E", "root_owner=0:0", "-d", str(root),
                    str(image)], log, "mkfs.ext4 -d", rep)
    except DiskFull:
        if shutil.disk_usage(image.parent).free > (256 << 20):  # the image, not the host, is full
            raise ImageError(f"the files do not fit in a {size_bytes >> 20} MiB image; give a larger --size"
                             ) from None
        raise
    return {"tree_bytes": tree_bytes, "image_bytes": size_bytes,
            "image_allocated_bytes": image.stat().st_blocks * 512}


def _copy_out(image: Path, output: Path | None) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, output)
