"""Bad inputs to ``image rootfs`` fail up front with one clear line (before any slow step)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from firecracer.image._build import DiskFull, ImageError, NullReporter, error_line, need_free, run_logged
from firecracer.image.apps import PETCLINIC, TINY
from firecracer.image.rootfs import (
    build_rootfs,
    host_mirror,
    jar_main_class,
    parse_size,
    resolve_app,
    resolve_jdk,
)


def _jar(path: Path, manifest: str | None, classes: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if manifest is not None:
            zf.writestr("META-INF/MANIFEST.MF", manifest)
        for c in classes:
            zf.writestr(c, b"\xca\xfe\xba\xbe")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firecracer", "image", *args], capture_output=True,
                          text=True, timeout=120)


def test_missing_jdk_dir_is_one_line(tmp_path: Path) -> None:
    res = _cli("rootfs", "--jdk", str(tmp_path / "no-jdk"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such directory or tarball" in lines[0], res.stderr


def test_jdk_dir_without_java(tmp_path: Path) -> None:
    (tmp_path / "jdk" / "bin").mkdir(parents=True)
    with pytest.raises(ImageError, match="no bin/java"):
        resolve_jdk(str(tmp_path / "jdk"))


def test_jdk_tarball_checked(tmp_path: Path) -> None:
    good = tmp_path / "jdk.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        info = tarfile.TarInfo("jdk-17/bin/java")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"#!\n"))
    assert resolve_jdk(str(good)).kind == "tarball"
    bad = tmp_path / "empty.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("README")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(ImageError, match="no <top>/bin/java"):
        resolve_jdk(str(bad))
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(ImageError, match="not a readable tar archive"):
        resolve_jdk(str(junk))


def test_jar_without_main_class_is_one_line(tmp_path: Path) -> None:
    jar = _jar(tmp_path / "app.jar", "Manifest-Version: 1.0\r\n", ["a/B.class"])
    res = _cli("rootfs", "--app", str(jar))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "has no Main-Class in its manifest; give the main class with --main" in lines[0]


def test_jar_main_class_resolution(tmp_path: Path) -> None:
    jar = _jar(tmp_path / "app.jar", "Manifest-Version: 1.0\r\nMain-Class: a.Main\r\n", ["a/Main.class"])
    assert jar_main_class(jar) == "a.Main"
    spec = resolve_app(str(jar), None, "--port 9 --name 'x y'")
    assert (spec.main, spec.args) == ("a.Main", ("--port", "9", "--name", "x y"))
    with pytest.raises(ImageError, match=r"has no class b\.Other"):
        resolve_app(str(jar), "b.Other", None)
    (tmp_path / "x.jar").write_text("plain text")
    with pytest.raises(ImageError, match="not a JAR"):
        resolve_app(str(tmp_path / "x.jar"), None, None)
    with pytest.raises(ImageError, match="no such JAR"):
        resolve_app(str(tmp_path / "missing.jar"), None, None)


def test_bundled_apps() -> None:
    """petclinic (default) and tiny: their main class, args, the --owners knob, the Debian packages."""
    spec = resolve_app("petclinic", None, None)
    assert spec.main == PETCLINIC.main and spec.args == ("--port", "8080")
    assert "libspring-web-servlet-java" in spec.packages and "libh2-java" in spec.packages
    big = resolve_app("petclinic", None, None, owners=50_000)
    assert big.args == ("--port", "8080", "--owners", "50000") and big.identity == spec.identity
    tiny = resolve_app("tiny", None, None, owners=10)
    assert tiny.main == TINY.main and tiny.packages == () and tiny.args[-2:] == ("--owners", "10")
    assert tiny.identity != spec.identity
    with pytest.raises(ImageError, match="--main is for a JAR"):
        resolve_app("petclinic", "x.Y", None)
    with pytest.raises(ImageError, match="now called 'tiny'"):
        resolve_app("demo", None, None)
    with pytest.raises(ImageError, match="--owners 0: must be between"):
        resolve_app("petclinic", None, None, owners=0)


def test_owners_is_for_bundled_apps_only(tmp_path: Path) -> None:
    jar = _jar(tmp_path / "app.jar", "Manifest-Version: 1.0\r\nMain-Class: a.Main\r\n", ["a/Main.class"])
    res = _cli("rootfs", "--app", str(jar), "--owners", "5")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--owners is for the bundled apps" in lines[0], res.stderr


def test_sizes() -> None:
    assert parse_size("1G") == 1 << 30
    assert parse_size("1536M") == 1536 << 20
    assert parse_size("800MiB") == 800 << 20
    with pytest.raises(ImageError, match="expected a size"):
        parse_size("big")


def test_host_mirror_is_a_url() -> None:
    assert host_mirror().startswith(("http://", "https://", "file:"))


def test_failed_tool_gives_its_error_line(tmp_path: Path) -> None:
    """A failing apt-like step: the 'E:' line and the log's path, not a traceback."""
    log = tmp_path / "log"
    script = ("echo 'Reading package lists...'; echo 'E: Unable to locate package nope' >&2; "
              "echo done; exit 100")
    with pytest.raises(ImageError) as err:
        run_logged(["sh", "-c", script], log, "apt-get install nope", NullReporter())
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("apt-get install nope failed (exit 100): E: Unable to locate package nope")
    assert str(log) in msg and "Unable to locate" in log.read_text()
    assert error_line([]) == "no output"


def test_disk_full_is_recognised(tmp_path: Path) -> None:
    with pytest.raises(DiskFull, match="no space left on device"):
        run_logged(["sh", "-c", "echo 'cp: error writing x: No space left on device'; exit 1"],
                   tmp_path / "l", "copying", NullReporter())
    with pytest.raises(DiskFull, match=r"needs about \d+ MiB free in .*, only \d+ MiB are free"):
        need_free(tmp_path, 1 << 60, "the rootfs build")


@pytest.mark.root
def test_rootfs_on_a_full_disk_is_one_line(tmp_path: Path, need_root: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A real small file system as the cache: the build stops before debootstrap with one line."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        monkeypatch.setenv("FIRECRACER_CACHE", str(mnt / "cache"))
        res = _cli("rootfs", "--quiet")
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs about 3072 MiB free" in lines[0], res.stderr
        assert not any((mnt / "cache" / "images" / "build").glob("*/root")), "left a tree behind"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_failed_debootstrap_is_one_line_and_leaves_nothing(tmp_path: Path, need_root: None) -> None:
    """debootstrap against a mirror that does not answer: one line with its 'E:' message, no tree left."""
    with pytest.raises(ImageError) as err:
        build_rootfs(mirror="http://127.0.0.1:9/debian", reporter=NullReporter())
    msg = str(err.value)
    assert "\n" not in msg and "debootstrap" in msg and ("E:" in msg or "Failed" in msg), msg
    assert not list((Path(os.environ["FIRECRACER_CACHE"]) / "images" / "build").glob("*/root"))
