"""What the lab's L1 machine boots: Debian's kernel and modules, and an initramfs built from busybox-static.

The L1 kernel is Debian's own ``linux-image-*-amd64`` package, fetched with ``apt-get download`` and
unpacked into the cache (never installed into /boot): it is the kernel the lab was measured with, it has
``kvm_amd``, virtio, 9p and overlayfs as modules, and it costs seconds to fetch instead of the minutes a
kernel build takes on two cores. A ``.deb`` of another Debian kernel can be given instead (for hosts
without apt). Only the kernel image, its config and the modules the lab loads (with their dependencies,
read from each module's ``.modinfo``) are kept: about 20 MB instead of 400.

The initramfs holds busybox (static), those modules and ``init.sh``; it is written here as a ``newc``
cpio archive, so building it needs neither ``cpio`` nor root. Everything is cached under
``cache_dir()/lab`` keyed by the kernel package's version and the inputs' hashes.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from firecracer.errors import FirecracerError
from firecracer.fsio import short_hash
from firecracer.paths import cache_dir

#: the meta package whose dependency names the current Debian kernel
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: modules the L1 init loads, in this order (dependencies are added before each): virtio-pci devices,
#: the 9p shares, the overlay over the read-only root, the control port, entropy, then KVM on AMD SVM and
#: what Firecracker's networking uses (tap in namespaces, veth for clones)
MODULES = ("virtio_pci", "virtio_rng", "virtio_console", "9pnet_virtio", "9p", "overlay",
           "kvm_amd", "tun", "veth")
#: bumped when the layout of the cached assets or the init changes incompatibly
ASSETS_VERSION = "1"


class LabError(FirecracerError):
    """The lab cannot be prepared or run: names the missing piece and how to get it."""


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class L1Kernel:
    """An unpacked Debian kernel: ``vmlinuz``, its ``config`` and ``modules/`` (only what the lab loads)."""

    root: Path
    release: str
    package: str
    version: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def modules_dir(self) -> Path:
        return self.root / "modules"

    @property
    def load_order(self) -> list[str]:
        """Module names in load order (dependencies first)."""
        return json.loads((self.root / "modules.json").read_text())["order"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Assets:
    """Everything QEMU needs to boot L1."""

    kernel: L1Kernel
    initramfs: Path
    busybox: Path


def lab_dir() -> Path:
    return cache_dir() / "lab"


# -- .deb and ELF reading (stdlib only, so hosts without dpkg can use a downloaded .deb) ----------------

def _deb_data(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), opened for streaming."""
    try:
        f = deb.open("rb")
    except OSError as exc:
        raise LabError(f"{deb}: cannot read: {exc.strerror}") from None
    if f.read(8) != b"!<arch>\n":
        f.close()
        raise LabError(f"{deb}: not a Debian package (no ar header)")
    while True:
        head = f.read(60)
        if len(head) < 60:
            f.close()
            raise LabError(f"{deb}: no data.tar member (truncated package?)")
        name = head[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(head[48:58].decode().strip())
        except ValueError:
            f.close()
            raise LabError(f"{deb}: corrupt ar member header for {name!r}") from None
        if name.startswith("data.tar"):
            data = f.read(size)
            f.close()
            if len(data) != size:
                raise LabError(f"{deb}: {name} is truncated ({len(data)} of {size} bytes)")
            if name.endswith(".zst"):
                raise LabError(f"{deb}: {name} is zstd-compressed, which Python cannot read; "
                               "use a Debian bookworm package (xz)")
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        f.seek(size + (size & 1), os.SEEK_CUR)


def modinfo(data: bytes, where: str) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (ELF64 relocatable): ``name``, ``depends`` …"""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise LabError(f"{where}: not an ELF64 kernel module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
        raise LabError(f"{where}: truncated ELF section table")

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.find(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            info: dict[str, str] = {}
            for item in data[off:off + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    raise LabError(f"{where}: no .modinfo section")


def _module_bytes(raw: bytes, name: str) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(raw)
    if name.endswith(".zst"):
        raise LabError(f"{name}: zstd-compressed modules are not supported (Python has no zstd)")
    return raw


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def resolve_order(wanted: Iterable[str], depends: dict[str, list[str]], builtin: set[str]) -> list[str]:
    """Load order for ``wanted`` and their dependencies (dependencies first); built-ins are skipped."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(mod: str, chain: tuple[str, ...]) -> None:
        if mod in seen or mod in builtin:
            return
        if mod in chain:
            raise LabError(f"module dependency cycle: {' -> '.join((*chain, mod))}")
        if mod not in depends:
            raise LabError(f"module {mod} is neither built into the L1 kernel nor shipped as a module")
        for dep in depends[mod]:
            visit(dep, (*chain, mod))
        seen.add(mod)
        order.append(mod)

    for m in wanted:
        visit(m.replace("-", "_"), ())
    return order


def unpack_kernel_deb(deb: Path, dest: Path, package: str, version: str,
                      progress: Progress = _quiet) -> L1Kernel:
    """Unpack ``vmlinuz``, ``config`` and the lab's modules (with dependencies) of a kernel ``.deb``."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        progress(f"unpacking {deb.name}")
        vmlinuz: bytes | None = None
        config = b""
        release = ""
        mods: dict[str, bytes] = {}
        builtin: set[str] = set()
        with _deb_data(deb) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                n = m.name.lstrip("./")
                fobj = tar.extractfile(m)
                if fobj is None:
                    continue
                if re.fullmatch(r"boot/vmlinuz-.+", n):
                    vmlinuz = fobj.read()
                    release = n.split("vmlinuz-", 1)[1]
                elif re.fullmatch(r"boot/config-.+", n):
                    config = fobj.read()
                elif n.endswith("/modules.builtin") and n.startswith(("lib/modules/", "usr/lib/modules/")):
                    builtin = {_module_name(x) for x in fobj.read().decode().split()}
                elif re.search(r"/kernel/.+\.ko(\.xz|\.zst)?$", n):
                    mods[_module_name(n)] = _module_bytes(fobj.read(), n)
        if vmlinuz is None or not mods:
            raise LabError(f"{deb}: no boot/vmlinuz-* or no modules: not a Linux kernel image package")
        depends = {name: [d.replace("-", "_") for d in modinfo(raw, f"{deb.name}:{name}")
                          .get("depends", "").split(",") if d]
                   for name, raw in mods.items()}
        order = resolve_order(MODULES, depends, builtin)
        (tmp / "modules").mkdir()
        for name in order:
            (tmp / "modules" / f"{name}.ko").write_bytes(mods[name])
        (tmp / "vmlinuz").write_bytes(vmlinuz)
        (tmp / "config").write_bytes(config)
        (tmp / "modules.json").write_text(json.dumps({"order": order, "release": release,
                                                      "package": package, "version": version}, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return L1Kernel(dest, release, package, version)


# -- apt ---------------------------------------------------------------------------------------------

def _apt(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise LabError(f"'{argv[0]}' is not available: the lab fetches Debian's kernel with apt; on other "
                       "hosts give a kernel package with --l1-kernel-deb FILE") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"'{' '.join(argv)}' did not finish within {timeout:g} s") from None
    if out.returncode != 0:
        err = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip() and not ln.startswith("W:")]
        raise LabError(f"'{' '.join(argv)}' failed: {(err or ['exit ' + str(out.returncode)])[-1].strip()}")
    return out.stdout


def current_kernel_package() -> tuple[str, str]:
    """``(package, version)`` of the kernel that ``linux-image-amd64`` depends on today."""
    show = _apt(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE], timeout=60)
    dep = re.search(r"^Depends:\s*(linux-image-[^\s,(]+)", show, re.M)
    if not dep:
        raise LabError(f"apt-cache show {KERNEL_META_PACKAGE}: no linux-image dependency found")
    pkg = dep.group(1)
    ver = re.search(r"^Version:\s*(\S+)", _apt(["apt-cache", "show", "--no-all-versions", pkg], timeout=60),
                    re.M)
    if not ver:
        raise LabError(f"apt-cache show {pkg}: no Version field")
    return pkg, ver.group(1)


def _download(package: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("*.deb"):
        old.unlink()
    _apt(["apt-get", "download", "-q", package], cwd=into)
    debs = sorted(into.glob("*.deb"))
    if not debs:
        raise LabError(f"apt-get download {package} left no .deb in {into}")
    return debs[-1]


def _cached_kernels() -> list[L1Kernel]:
    out = []
    for d in sorted(lab_dir().glob("kernel-*")):
        meta = d / "modules.json"
        if (d / "vmlinuz").is_file() and meta.is_file():
            try:
                m = json.loads(meta.read_text())
                out.append(L1Kernel(d, m["release"], m["package"], m["version"]))
            except (OSError, ValueError, KeyError):
                continue
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", text)


def l1_kernel(deb: Path | None = None, progress: Progress = _quiet, *, offline: bool = False) -> L1Kernel:
    """The L1 kernel: from ``deb`` if given, else Debian's current one (downloaded once, then cached).

    ``offline`` uses the newest cached kernel without asking apt (``lab check`` on a machine whose
    mirror is gone still works once the kernel was fetched).
    """
    lab_dir().mkdir(parents=True, exist_ok=True)
    if deb is not None:
        if not deb.is_file():
            raise LabError(f"{deb}: no such kernel package")
        key = f"file-{_safe(deb.stem)}-{deb.stat().st_size}"
        dest = lab_dir() / f"kernel-{key}-{ASSETS_VERSION}"
        if not (dest / "modules.json").is_file():
            unpack_kernel_deb(deb, dest, deb.stem, key, progress)
        return _cached_kernels_by_root(dest)
    cached = _cached_kernels()
    if offline:
        if not cached:
            raise LabError("no L1 kernel in the cache: run 'firecracer lab prepare' once with apt reachable")
        return cached[-1]
    try:
        pkg, ver = current_kernel_package()
    except LabError:
        if cached:
            return cached[-1]
        raise
    dest = lab_dir() / f"kernel-{_safe(pkg)}-{_safe(ver)}-{ASSETS_VERSION}"
    if (dest / "modules.json").is_file():
        return _cached_kernels_by_root(dest)
    progress(f"downloading {pkg} {ver} (apt-get download)")
    dl = _download(pkg, lab_dir() / "downloads")
    try:
        return unpack_kernel_deb(dl, dest, pkg, ver, progress)
    finally:
        dl.unlink(missing_ok=True)


def _cached_kernels_by_root(root: Path) -> L1Kernel:
    for k in _cached_kernels():
        if k.root == root:
            return k
    raise LabError(f"{root}: incomplete L1 kernel in the cache (delete it and retry)")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        data = path.read_bytes()[:4096]
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, off)[0] == 3:  # PT_INTERP
            return False
    return True


def busybox(progress: Progress = _quiet) -> Path:
    """A static busybox: the host's if it is static, else Debian's ``busybox-static`` (cached)."""
    cached = lab_dir() / "busybox"
    if cached.is_file():
        return cached
    for cand in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if _is_static_elf(cand):
            shutil.copy2(cand, cached)
            return cached
    progress(f"downloading {BUSYBOX_PACKAGE} (apt-get download)")
    deb = _download(BUSYBOX_PACKAGE, lab_dir() / "downloads")
    try:
        with _deb_data(deb) as tar:
            for m in tar:
                if m.isfile() and m.name.lstrip("./") == "bin/busybox":
                    f = tar.extractfile(m)
                    assert f is not None
                    tmp = cached.with_suffix(".tmp")
                    tmp.write_bytes(f.read())
                    tmp.chmod(0o755)
                    tmp.rename(cached)
                    return cached
    finally:
        deb.unlink(missing_ok=True)
    raise LabError(f"{BUSYBOX_PACKAGE}: no bin/busybox in the package")


# -- initramfs ---------------------------------------------------------------------------------------

class Cpio:
    """A ``newc`` cpio archive written in memory (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nb = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08X" % v for v in fields) + nb)
        self._buf.write(b"\0" * (-(110 + len(nb)) % 4))
        self._buf.write(data)
        self._buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def init_script() -> bytes:
    return resources.files("firecracer.lab").joinpath("init.sh").read_bytes()


def build_initramfs(kernel: L1Kernel, bb: Path, dest: Path) -> Path:
    """``initramfs.cpio.gz``: busybox, the modules in load order, ``init``."""
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "lower", "upper", "newroot", "run"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", bb.read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    order = kernel.load_order
    for name in order:
        c.file(f"lib/modules/{name}.ko", (kernel.modules_dir / f"{name}.ko").read_bytes())
    c.file("lib/modules/order", ("\n".join(order) + "\n").encode())
    c.file("init", init_script(), 0o755)
    tmp = dest.with_suffix(".tmp")
    with tmp.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(c.finish())
    tmp.rename(dest)
    return dest


def prepare(deb: Path | None = None, progress: Progress = _quiet, *, offline: bool = False) -> Assets:
    """Kernel, busybox and initramfs, fetched or built once and cached."""
    kernel = l1_kernel(deb, progress, offline=offline)
    bb = busybox(progress)
    key = short_hash([ASSETS_VERSION, kernel.version, init_script(), bb.read_bytes()[:1 << 20],
                      *kernel.load_order])
    initrd = lab_dir() / f"initramfs-{key}.cpio.gz"
    if not initrd.is_file():
        progress("building the L1 initramfs (busybox, modules, init)")
        build_initramfs(kernel, bb, initrd)
        for old in lab_dir().glob("initramfs-*.cpio.gz"):
            if old != initrd:
                old.unlink(missing_ok=True)
    return Assets(kernel, initrd, bb)


def cached_assets() -> Assets | None:
    """The assets if they are all in the cache (no download, no build); for ``doctor``."""
    try:
        return prepare(offline=True) if _cached_kernels() and (lab_dir() / "busybox").is_file() else None
    except (LabError, OSError):
        return None
