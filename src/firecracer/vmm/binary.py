"""Find, identify and install Firecracker binaries.

Discovery order, used by every command: an explicit path (``--firecracker``), ``$FIRECRACKER``,
the tool's cache (``~/.cache/firecracer/bin/firecracker``), then ``PATH``. Nothing here needs the
network except :func:`install_firecracker` given a URL, which fails with one line when offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from firecracer.errors import BinaryNotFound, FirecracerError
from firecracer.fcversion import Version, firecracker_version
from firecracer.paths import bin_dir


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of a kernel release string (default: this host's, ``uname -r``)."""
    text = release if release is not None else os.uname().release
    m = re.match(r"(\d+)\.(\d+)", text)
    if not m:
        raise FirecracerError(f"cannot read a kernel version from {text[:80]!r}")
    return int(m.group(1)), int(m.group(2))


def uffd_restore_problem(version: Version, kernel_release: str | None = None) -> str | None:
    """Why Firecracker ``version`` cannot restore through a userfaultfd page server (the Uffd backend) on a
    host running ``kernel_release`` (default: this host), or None when it can.

    Measured (docs/vmm.md, ENVIRONMENT.md): before v1.8 Firecracker rejects the ioctl flags host kernels
    >= 6.6 report when it registers guest memory (``PUT /snapshot/load`` answers 400 "Unrecognized ioctl
    flags", fixed in v1.8); before v1.5 it registers a user-mode-only userfaultfd, so on host kernels
    >= 5.11 the guest kernel's faults fail (EFAULT, "Bad address") and the server sees no fault.
    Callers (``doctor``, the experiment backends, ``demo``) decide with this one function.
    """
    kernel = kernel_version(kernel_release)
    shown = f"{kernel[0]}.{kernel[1]}"
    if not version.at_least(1, 8) and kernel >= (6, 6):
        return (f"Firecracker v{version} cannot register guest memory with userfaultfd on host kernel "
                f"{shown} (kernels >= 6.6 report ioctl flags Firecracker < 1.8 rejects; "
                "use Firecracker >= 1.8)")
    if not version.at_least(1, 5) and kernel >= (5, 11):
        return (f"Firecracker v{version} registers a user-mode-only userfaultfd: on host kernel {shown} "
                "(>= 5.11) the guest kernel's page faults fail (use Firecracker >= 1.5)")
    return None


def find_firecracker(explicit: str | Path | None = None) -> Path:
    """Locate the Firecracker binary to use, in the documented order.

    :raises BinaryNotFound: listing every place looked at.
    """
    looked: list[str] = []
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    env = os.environ.get("FIRECRACKER")
    if env:
        candidates.append(Path(env))
    candidates.append(bin_dir() / "firecracker")
    on_path = shutil.which("firecracker")
    if on_path:
        candidates.append(Path(on_path))
    for cand in candidates:
        looked.append(str(cand))
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand.resolve()
        if explicit and cand == Path(explicit):
            raise BinaryNotFound(f"{cand}: no executable Firecracker binary there")
    raise BinaryNotFound("no Firecracker binary found (looked at --firecracker, $FIRECRACKER, "
                         f"{bin_dir() / 'firecracker'}, PATH); install one with "
                         "'firecracer install-firecracker firecracker-vX.Y.Z-x86_64.tgz'")


def installed_binaries() -> dict[str, Path]:
    """Every version installed in the cache, newest last: ``{"1.14.2": path, ...}``."""
    found: dict[Version, Path] = {}
    if bin_dir().is_dir():
        for p in bin_dir().glob("firecracker-v*"):
            try:
                found[Version.parse(p.name)] = p
            except FirecracerError:
                continue
    return {str(v): found[v] for v in sorted(found)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(source: str, timeout: float) -> tuple[bytes, str]:
    if re.match(r"^[a-z]+://", source):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as resp:
                return resp.read(), source.rsplit("/", 1)[-1]
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FirecracerError(f"{source}: cannot download ({reason}); this host may be offline — "
                                  "download the release elsewhere and pass the file") from exc
    path = Path(source)
    if not path.is_file():
        raise FirecracerError(f"{source}: no such file")
    return path.read_bytes(), path.name


def _binary_from_tarball(data: bytes, name: str) -> bytes:
    """Pick ``release-vX-ARCH/firecracker-vX-ARCH`` out of an official release tarball."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and re.fullmatch(r"firecracker-v[\d.]+-\w+", Path(m.name).name)]
            if not members:
                raise FirecracerError(f"{name}: no 'firecracker-vX.Y.Z-<arch>' binary inside the tarball")
            f = tar.extractfile(members[0])
            assert f is not None
            return f.read()
    except tarfile.TarError as exc:
        raise FirecracerError(f"{name}: not a readable tarball ({exc})") from exc


def install_firecracker(source: str, timeout: float = 30.0, make_default: bool = True) -> dict[str, str]:
    """Install a release tarball or bare binary (path or URL) into the cache.

    Records version and SHA-256 in ``installed.json``; ``firecracker`` in the cache points at the
    newest installed version unless ``make_default`` is false.
    """
    data, name = _read_source(source, timeout)
    if data[:4] != b"\x7fELF":
        data = _binary_from_tarball(data, name)
    if data[:4] != b"\x7fELF":
        raise FirecracerError(f"{name}: not an ELF executable")
    bin_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=bin_dir(), delete=False, prefix=".install-") as tmp:
        tmp.write(data)
    tmp_path = Path(tmp.name)
    tmp_path.chmod(0o755)
    try:
        version = firecracker_version(tmp_path)
    except FirecracerError:
        tmp_path.unlink(missing_ok=True)
        raise
    target = bin_dir() / f"firecracker-v{version}"
    tmp_path.replace(target)
    record = {"version": str(version), "sha256": _sha256(data), "source": source, "path": str(target),
              "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    db_path = bin_dir() / "installed.json"
    db = json.loads(db_path.read_text()) if db_path.is_file() else {}
    db[str(version)] = record
    db_path.write_text(json.dumps(db, indent=2) + "\n")
    if make_default:
        newest = list(installed_binaries().values())[-1]
        link = bin_dir() / "firecracker"
        link.unlink(missing_ok=True)
        link.symlink_to(newest.name)
    return record


UFFD_OLD_FC = "Firecracker < 1.8 on host kernel ≥ 6.6"
UFFD_V14_FC = "Firecracker < 1.5 on host kernel ≥ 5.11"
BRAND_OLD_FC = ("Firecracker < 1.5 cannot start a vCPU on this host: its CPUID brand string has no "
                "frequency (fixed in v1.5)")


def uffd_limit(version: Version, kernel_release: str | None = None) -> str | None:
    """Why this Firecracker cannot do a Uffd restore on this host kernel, or None if it can.

    The judgement is :func:`~firecracer.vmm.binary.uffd_restore_problem` (< 1.5 on >= 5.11: a user-mode-only
    userfaultfd, PR 4086; < 1.8 on >= 6.6: "Unrecognized ioctl flags", #4578); this adds the short label
    ``Unsupported`` errors lead with.
    """
    problem = uffd_restore_problem(version, kernel_release)
    if problem is None:
        return None
    label = UFFD_V14_FC if not version.at_least(1, 5) else UFFD_OLD_FC
    return f"{label} ({problem})"
