"""Shared plumbing of the image builders: logged subprocesses, apt, disk space, input hashing.

Errors are ``ImageError``: one line naming the step and what went wrong, with the log's path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from firecracer.errors import FirecracerError

#: bumped when a builder changes in a way that must invalidate cached artefacts
BUILDER_VERSION = "1"

DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded", "ENOSPC")


class ImageError(FirecracerError):
    """A step of an image build failed (bad input, apt, make, mkfs, disk full …)."""


class DiskFull(ImageError):
    """Not enough free space for a build step."""


class Reporter(Protocol):
    """Where builders send progress: ``step`` for phases (kept), ``line`` for build-log lines (transient)."""

    def step(self, message: str) -> None: ...

    def line(self, text: str) -> None: ...


class NullReporter:
    """Reporter that drops everything (library default)."""

    def step(self, message: str) -> None:
        pass

    def line(self, text: str) -> None:
        pass


def need_free(path: Path, need_bytes: int, what: str) -> None:
    """Raise ``DiskFull`` if the file system holding ``path`` has less than ``need_bytes`` free."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise DiskFull(f"{what} needs about {need_bytes >> 20} MiB free in {probe}, "
                       f"only {free >> 20} MiB are free")


def run_logged(argv: Sequence[str], log_path: Path, what: str, reporter: Reporter, *,
               cwd: Path | None = None, env: dict[str, str] | None = None,
               timeout: float | None = None) -> None:
    """Run ``argv``, appending its merged output to ``log_path`` and each line to the reporter.

    A non-zero exit raises ``ImageError`` with the last error-looking line and the log's path;
    "No space left on device" anywhere raises ``DiskFull``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    disk_full = False
    with log_path.open("a", encoding="utf-8", errors="replace", buffering=1) as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", start_new_session=True)
        except FileNotFoundError:
            raise ImageError(f"{what}: program {argv[0]!r} not found") from None
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                log.write(raw)
                reporter.line(line)
                if line.strip():
                    tail.append(line.strip())
                    del tail[:-40]
                if any(m in line for m in DISK_FULL_MARKERS):
                    disk_full = True
            rc = proc.wait(timeout=timeout)
        except BaseException:
            _kill_group(proc)
            raise
    if disk_full:
        raise DiskFull(f"{what}: no space left on device (see {log_path})")
    if rc != 0:
        raise ImageError(f"{what} failed (exit {rc}): {error_line(tail)} (full log: {log_path})")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the child's process group (it was started in its own session) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def error_line(lines: Sequence[str]) -> str:
    """The most telling line of a failed tool's output.

    The last line with a strong marker (a compiler ``error:``, apt's ``E:``, ``fatal``), else the last
    with a weak one (``Error``, ``failed``, ``cannot`` …), else the last line; make's
    Entering/Leaving-directory chatter is never chosen.
    """
    useful = [ln for ln in lines if not re.match(r"make(\[\d+\])?: (Entering|Leaving) directory", ln)]
    for keys in (("error:", "E: ", "fatal:", "FATAL"),
                 ("Error", "ERROR", "failed", "Failed", "cannot", "Couldn't", "No such", "***")):
        for line in reversed(useful):
            if any(k in line for k in keys):
                return line
    return useful[-1] if useful else "no output"


def missing_packages(packages: Iterable[str]) -> list[str]:
    """Debian packages (from ``packages``) that dpkg does not report as installed."""
    out: list[str] = []
    for pkg in packages:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True,
                             check=False)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            out.append(pkg)
    return out


def ensure_packages(packages: Sequence[str], why: str, reporter: Reporter, log_path: Path) -> list[str]:
    """Install the missing ones with apt-get (saying so); returns what was installed.

    Not root, or apt failing, gives one line naming the packages and apt's error.
    """
    if shutil.which("dpkg-query") is None:
        raise ImageError(f"{why} needs the Debian packages {' '.join(packages)}; this host has no dpkg")
    missing = missing_packages(packages)
    if not missing:
        return []
    names = " ".join(missing)
    if os.geteuid() != 0:
        raise ImageError(f"{why} needs {names}: run 'sudo apt-get install {names}' or run as root")
    reporter.step(f"installing with apt-get (needed for {why}): {names}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run_logged(["apt-get", "install", "-y", "--no-install-recommends", *missing], log_path,
                   f"apt-get install {names}", reporter, env=env, timeout=1800)
    except DiskFull:
        raise
    except ImageError as exc:
        # apt's index may simply be stale: update once and retry
        reporter.step(f"apt-get install failed ({exc}); running apt-get update and retrying")
        run_logged(["apt-get", "update"], log_path, "apt-get update", reporter, env=env, timeout=900)
        run_logged(["apt-get", "install", "-y", "--no-install-recommends", *missing], log_path,
                   f"apt-get install {names}", reporter, env=env, timeout=1800)
    return missing


def link_latest(target: Path, link: Path) -> None:
    """Point ``link`` (e.g. images/vmlinux) at the newest build, atomically, with a relative path."""
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    tmp.replace(link)


def prune(images: Path, prefix: str, keep: int = 3) -> list[Path]:
    """Delete all but the ``keep`` newest ``<prefix>-<key>`` builds (the one just built is newest)."""
    dirs = sorted((d for d in images.glob(f"{prefix}-*") if d.is_dir()), key=lambda d: d.stat().st_mtime,
                  reverse=True)
    removed = []
    for d in dirs[keep:]:
        shutil.rmtree(d)
        removed.append(d)
    return removed
