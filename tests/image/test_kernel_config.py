"""The kernel config fragment: parsing, verification, and that it asks for what the experiments need."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from firecracer.image._build import ImageError, NullReporter
from firecracer.image.kernel import (
    check_vmlinux,
    fragment_options,
    fragment_text,
    missing_options,
    resolve_source,
)

REQUIRED = [
    "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_VSOCKETS",
    "VIRTIO_BALLOON", "SERIAL_8250", "SERIAL_8250_CONSOLE", "EXT4_FS", "OVERLAY_FS", "TMPFS", "DEVTMPFS",
    "PROC_PAGE_MONITOR", "TRANSPARENT_HUGEPAGE", "IDLE_PAGE_TRACKING", "PAGE_IDLE_FLAG", "ANON_VMA_NAME",
    "DAMON", "DAMON_VADDR", "DAMON_PADDR", "DAMON_SYSFS", "DEBUG_FS", "IP_PNP",
]


def test_fragment_asks_for_everything_the_issue_names() -> None:
    opts = fragment_options(fragment_text())
    for name in REQUIRED:
        assert opts.get(f"CONFIG_{name}") == "y", name
    assert opts["CONFIG_MODULES"] == "n"


def test_acpi_comes_with_pci_as_firecracker_requires() -> None:
    """Firecracker >= 1.8 passes ACPI tables that Linux cannot load without PCI support; the lab saw the
    image's root disk go missing under v1.14.2 ("ACPI: Unable to load the System Description Tables")."""
    opts = fragment_options(fragment_text())
    assert opts["CONFIG_ACPI"] == "y"
    for name in ("PCI", "PCI_MMCONFIG", "PCI_MSI", "VIRTIO_PCI", "X86_MPPARSE", "SERIO_I8042",
                 "KEYBOARD_ATKBD"):
        assert opts.get(f"CONFIG_{name}") == "y", name


def test_fragment_options_parses_set_unset_and_values() -> None:
    text = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=32\nCONFIG_D=\"x y\"\n  \n"
    assert fragment_options(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "32", "CONFIG_D": '"x y"'}


def test_missing_options_names_what_did_not_land() -> None:
    frag = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_M is not set\n"
    final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_M=y\n"
    assert missing_options(frag, final) == ["CONFIG_B=y (got n)", "CONFIG_M=n (got y)"]
    assert missing_options(frag, "CONFIG_A=y\nCONFIG_B=y\n") == []


def test_built_kernel_has_every_fragment_option(built_kernel: Path) -> None:
    """The cached build's final .config (kept beside vmlinux) contains the whole fragment."""
    config = built_kernel.parent / "config"
    assert missing_options(fragment_text(), config.read_text()) == []
    check_vmlinux(built_kernel)


def test_bad_sources_give_one_clear_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(ImageError, match="no such directory or tarball"):
        resolve_source(str(tmp_path / "nope"), NullReporter(), log)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match=r"expected a \.tar\.xz/\.tar\.gz tarball"):
        resolve_source(str(tmp_path / "notes.txt"), NullReporter(), log)
    (tmp_path / "tree").mkdir()
    with pytest.raises(ImageError, match="not a Linux source tree"):
        resolve_source(str(tmp_path / "tree"), NullReporter(), log)


def test_tarball_source_is_identified_by_content(tmp_path: Path) -> None:
    tgz = tmp_path / "linux-x.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(__file__, arcname="linux-x/Makefile")
    src = resolve_source(str(tgz), NullReporter(), tmp_path / "log")
    assert src.kind == "tarball" and src.identity.startswith("tarball:")


def test_check_vmlinux_rejects_non_elf(tmp_path: Path) -> None:
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"MZ" + b"\0" * 64)
    with pytest.raises(ImageError, match="not an x86-64 ELF"):
        check_vmlinux(bad)


def test_failed_make_is_one_line_and_cleans_up(tmp_path: Path) -> None:
    """A source tree whose make fails: one line naming the step, log kept, build tree removed."""
    from firecracer.image._build import missing_packages
    from firecracer.image.kernel import BUILD_PACKAGES, build_kernel
    from firecracer.paths import images_dir

    if missing_packages(BUILD_PACKAGES):
        pytest.skip(f"kernel build packages missing: {missing_packages(BUILD_PACKAGES)}")
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Kconfig").write_text("")
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n"
                                   "allnoconfig:\n\t@echo 'scripts/kconfig: error: broken tree'; exit 2\n")
    with pytest.raises(ImageError) as err:
        build_kernel(str(tree), reporter=NullReporter())
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("make allnoconfig failed (exit 2)") and "broken tree" in msg
    logs = list(images_dir().glob("kernel-*.build.log"))
    assert len(logs) == 1 and str(logs[0]) in msg
    assert not list((images_dir() / "build").glob("kernel-*"))
