"""Spring PetClinic inside the built image, booted under QEMU TCG: its pages, its JSON, the write paths
and the error statuses answer as on a host JVM (``petclinic_endpoints``). One boot for the module.

Marked ``slow``: the Spring context takes a minute or more to start under TCG. Run it with
``pytest -m slow tests/image/test_qemu_petclinic.py`` (``FIRECRACER_IMAGE_DIR`` picks the images dir).
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firecracer.image.check import QemuGuest, app_of, page_checks, qemu_guest

from .conftest import USER_IMAGES, newest_rootfs
from .petclinic_endpoints import Client, check_errors, check_reads, check_writes

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Booted:
    guest: QemuGuest
    client: Client
    owners: int
    console_log: Path


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    kernel = USER_IMAGES / "vmlinux"
    rootfs = newest_rootfs("petclinic")
    if not kernel.exists():
        pytest.skip(f"no kernel built in {USER_IMAGES} (run 'firecracer image kernel')")
    if rootfs is None:
        pytest.skip(f"no PetClinic rootfs built in {USER_IMAGES} (run 'firecracer image rootfs')")
    args = json.loads((rootfs.parent / "image.json").read_text())["app"]["args"]
    owners = int(args[args.index("--owners") + 1]) if "--owners" in args else 2000
    log = tmp_path_factory.mktemp("qemu") / "console.log"
    with qemu_guest(kernel.resolve(), rootfs, log, app_port=app_of(rootfs)[1]) as guest:
        ready = guest.wait_for("ready", 1200)
        assert ready is not None, f"PetClinic not ready: {guest.last_lines(8)}"
        yield Booted(guest, Client(guest.http_port, timeout=300), owners, log)


def test_ready_and_first_response_lines(booted: Booted) -> None:
    checks = page_checks(booted.guest.http_port)
    assert all(c.ok for c in checks), [c.detail for c in checks]
    assert booted.guest.wait_for("first_response", 60) is not None
    text = booted.console_log.read_text(errors="replace")
    m = re.search(r"petclinic: ready port=8080 owners=(\d+) startup_ms=\d+ uptime_ms=\d+", text)
    assert m is not None and int(m.group(1)) == booted.owners, text[-2000:]
    assert "petclinic: first response status=200" in text


def _with_console(booted: Booted, check: Callable[[], None]) -> None:
    """Runs the check; a failure shows the guest's last console lines (the app logs every request)."""
    try:
        check()
    except (AssertionError, OSError, http.client.HTTPException) as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}; console: {booted.guest.last_lines(15)}") from exc


def test_pages_and_json(booted: Booted) -> None:
    _with_console(booted, lambda: check_reads(booted.client, booted.owners))


def test_write_paths_and_their_transaction(booted: Booted) -> None:
    _with_console(booted, lambda: check_writes(booted.client))


def test_error_statuses(booted: Booted) -> None:
    _with_console(booted, lambda: check_errors(booted.client, booted.owners))
