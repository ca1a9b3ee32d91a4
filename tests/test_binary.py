"""Firecracker discovery, version parsing and installation into the cache."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from firecracer.errors import BinaryNotFound, FirecracerError
from firecracer.fcversion import Version
from firecracer.paths import bin_dir
from firecracer.vmm.binary import find_firecracker, install_firecracker, installed_binaries


@pytest.mark.parametrize(("text", "expected", "gen"), [
    ("Firecracker v1.4.0", Version(1, 4, 0), "1.4"),
    ("Firecracker v1.7.0\n", Version(1, 7, 0), "1.7"),
    ("v1.11.3", Version(1, 11, 3), "1.7"),
    ("Firecracker v1.14.2", Version(1, 14, 2), "1.12"),
    ("1.17.0-dev", Version(1, 17, 0), "1.12"),
])
def test_version_parse(text: str, expected: Version, gen: str) -> None:
    v = Version.parse(text)
    assert v == expected
    assert v.api_generation == gen


def test_version_parse_garbage() -> None:
    with pytest.raises(FirecracerError, match="cannot read a Firecracker version"):
        Version.parse("hello")


def test_explicit_missing_binary_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound, match=str(tmp_path / "nope")):
        find_firecracker(tmp_path / "nope")


def test_env_then_cache_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fc"
    fake.write_text("#!/bin/sh\necho 'Firecracker v1.9.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FIRECRACKER", str(fake))
    assert find_firecracker() == fake.resolve()
    monkeypatch.delenv("FIRECRACKER")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BinaryNotFound, match="install-firecracker"):
        find_firecracker()


def _fake_elf_script(version: str) -> bytes:
    """A script that answers --version like Firecracker but is no ELF: install must refuse it."""
    return f"#!/bin/sh\necho 'Firecracker v{version}'\n".encode()


def test_install_rejects_non_elf(tmp_path: Path) -> None:
    f = tmp_path / "firecracker"
    f.write_bytes(_fake_elf_script("1.0.0"))
    with pytest.raises(FirecracerError, match=r"not a readable tarball|not an ELF"):
        install_firecracker(str(f))


def test_install_offline_url_fails_with_one_line() -> None:
    with pytest.raises(FirecracerError, match=r"cannot download .*offline"):
        install_firecracker("http://127.0.0.1:9/firecracker-v1.14.2-x86_64.tgz", timeout=5)


def test_install_real_binary_and_tarball(firecracker_bin: Path, tmp_path: Path) -> None:
    rec = install_firecracker(str(firecracker_bin))
    assert Path(rec["path"]).is_file()
    assert (bin_dir() / "firecracker").resolve() == Path(rec["path"])
    # the same binary packed as an official release tarball
    version = rec["version"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(firecracker_bin, arcname=f"release-v{version}-x86_64/firecracker-v{version}-x86_64")
    tgz = tmp_path / f"firecracker-v{version}-x86_64.tgz"
    tgz.write_bytes(buf.getvalue())
    rec2 = install_firecracker(str(tgz))
    assert rec2["sha256"] == rec["sha256"]
    assert version in installed_binaries()
    out = subprocess.run([sys.executable, "-m", "firecracer", "doctor", "--json", "--need", "vm"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert f"v{version}" in out.stdout
