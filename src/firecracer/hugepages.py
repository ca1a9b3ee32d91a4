"""The host's pool of 2 MiB huge pages: what is free, whether a guest fits, a reservation that undoes itself.

Firecracker backs a ``huge_pages = "2M"`` guest with hugetlbfs pages mapped ``MAP_NORESERVE``: nothing is
claimed up front, so a pool that is too small shows up later as a ``SIGBUS`` in Firecracker (boot) or an
``ENOMEM`` from ``UFFDIO_COPY`` in the page server (restore). :func:`check_pool` says so in one line
before Firecracker starts. Counts come from ``/sys/kernel/mm/hugepages/hugepages-2048kB`` (the pool of
the 2 MiB size, whatever the default huge page size is).

:class:`Reservation` grows the pool for a run and puts ``/proc/sys/vm/nr_hugepages`` back afterwards on
every exit path: its own ``close()`` (exceptions, Ctrl-C, a SIGTERM the caller turns into an exception)
and, if the process is killed outright, a small guard process that waits for its parent's pipe to close.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from firecracer.errors import FirecracerError

HUGE_2M = 2 << 20
SYSFS_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


class HugePagesError(FirecracerError):
    """The 2 MiB huge-page pool is missing or too small for what was asked."""


@dataclass(frozen=True)
class Pool:
    """The 2 MiB pool (``HugePages_*`` of that size): pages, not bytes."""

    total: int
    free: int
    reserved: int  # promised to mappings (not MAP_NORESERVE) but not yet faulted in
    surplus: int
    overcommit: int  # nr_overcommit_hugepages: extra pages the kernel may allocate on demand

    @property
    def available(self) -> int:
        """Pages a new ``MAP_NORESERVE`` mapping can count on: free and not promised to anyone."""
        return max(0, self.free - self.reserved)

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "free": self.free, "reserved": self.reserved, "surplus": self.surplus,
                "overcommit": self.overcommit, "available": self.available}


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def supported(sysfs: Path = SYSFS_2M) -> bool:
    """Whether the kernel offers 2 MiB hugetlbfs pages at all."""
    return sysfs.is_dir()


def pool(sysfs: Path = SYSFS_2M) -> Pool:
    """The 2 MiB pool now. :raises HugePagesError: the kernel has no 2 MiB hugetlbfs pages."""
    try:
        return Pool(total=_read_int(sysfs / "nr_hugepages"), free=_read_int(sysfs / "free_hugepages"),
                    reserved=_read_int(sysfs / "resv_hugepages"),
                    surplus=_read_int(sysfs / "surplus_hugepages"),
                    overcommit=_read_int(sysfs / "nr_overcommit_hugepages"))
    except (OSError, ValueError) as exc:
        raise HugePagesError(f"{sysfs}: no 2 MiB huge pages on this kernel (CONFIG_HUGETLBFS?): {exc}") \
            from None


def pages_for(mem_size_mib: int) -> int:
    """2 MiB pages that back ``mem_size_mib`` MiB of guest memory."""
    return -(-mem_size_mib // 2)


def reserve_hint(need: int, p: Pool) -> str:
    """The command that makes ``need`` pages available (run as root)."""
    return f"echo {p.total + max(0, need - p.available)} > {NR_HUGEPAGES}"


def check_pool(mem_size_mib: int, what: str, sysfs: Path = SYSFS_2M) -> Pool:
    """Raise one clear line unless ``mem_size_mib`` MiB of guest memory fits in the free 2 MiB pool.

    ``what`` names the guest in the message (``"microVM foo"``, ``"snapshot /x"``). Returns the pool.
    """
    if mem_size_mib % 2:
        raise HugePagesError(f"{what}: {mem_size_mib} MiB of memory is not a multiple of 2 MiB, which "
                             "huge_pages=2M needs")
    p = pool(sysfs)
    need = pages_for(mem_size_mib)
    if p.available < need:
        raise HugePagesError(
            f"{what}: {mem_size_mib} MiB of guest memory needs {need} free 2 MiB huge pages, the pool has "
            f"{p.available} available ({p.total} total, {p.free} free, {p.reserved} reserved); reserve "
            f"them with '{reserve_hint(need, p)}'")
    return p


def reservable(sysfs: Path = SYSFS_2M) -> int:
    """An upper bound on pages that could still be added to the pool: ``MemAvailable`` / 2 MiB.

    Fragmentation can make the kernel give fewer; only writing ``nr_hugepages`` and reading it back
    tells (which :class:`Reservation` does).
    """
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // HUGE_2M
    except (OSError, ValueError, IndexError):
        pass
    return 0


_GUARD = r"""
import os, sys
prev, target, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
data = sys.stdin.buffer.read()  # EOF: the parent is gone (or done)
if data.strip() != b"done":
    try:
        cur = int(open(path).read())
        new = prev if cur == target else max(0, cur - (target - prev))
        open(path, "w").write(f"{new}\n")
    except OSError:
        pass
"""


class Reservation:
    """Make at least ``pages`` 2 MiB pages available until :meth:`close` (or the ``with`` block ends).

    Grows ``nr_hugepages`` by the shortfall only (nothing if enough are free). ``close`` writes the
    previous value back; if someone else changed the pool meanwhile, it removes only what it added.
    A guard process does the same if this process dies without closing (SIGKILL).

    :raises HugePagesError: no permission, no 2 MiB pages, or the kernel could not find enough memory
        (the pool is then put back at once).
    """

    def __init__(self, pages: int, *, sysfs: Path = SYSFS_2M, nr_path: Path = NR_HUGEPAGES) -> None:
        self.pages = pages
        self.sysfs = sysfs
        self.nr_path = nr_path
        self.previous: int | None = None
        self.target: int | None = None
        self._guard: subprocess.Popen[bytes] | None = None
        p = pool(sysfs)
        short = pages - p.available
        if short <= 0:
            return
        try:
            self.previous = _read_int(nr_path)
        except (OSError, ValueError) as exc:
            raise HugePagesError(f"{nr_path}: cannot read the huge-page pool size ({exc})") from None
        self.target = self.previous + short
        # the guard first, so there is no moment where the pool is grown but nobody will shrink it
        self._guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(self.previous), str(self.target),
                                        str(nr_path)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        try:
            nr_path.write_text(f"{self.target}\n")
            got = pool(sysfs)
        except OSError as exc:
            self.close()
            raise HugePagesError(f"{nr_path}: cannot grow the huge-page pool to {self.target} pages "
                                 f"({exc.strerror or exc}; root is needed)") from None
        except BaseException:
            self.close()
            raise
        if got.available < pages:
            self.close()
            raise HugePagesError(f"{nr_path}: asked the kernel for {self.target} huge pages, it gave "
                                 f"{got.total} ({got.available} available, {pages} needed): not enough "
                                 "contiguous free memory")

    @property
    def added(self) -> int:
        """Pages this reservation added to the pool (0 if enough were free)."""
        return 0 if self.target is None or self.previous is None else self.target - self.previous

    def close(self) -> None:
        """Put the pool back (idempotent)."""
        if self.previous is not None and self.target is not None:
            with contextlib.suppress(OSError, ValueError):
                cur = _read_int(self.nr_path)
                new = self.previous if cur == self.target else max(0, cur - self.added)
                self.nr_path.write_text(f"{new}\n")
            self.previous = None
        guard, self._guard = self._guard, None
        if guard is not None:
            with contextlib.suppress(OSError):
                assert guard.stdin is not None
                guard.stdin.write(b"done")
                guard.stdin.close()
            try:
                guard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                guard.kill()
                guard.wait()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self, "_guard", None) is not None:
                self.close()


def summary(sysfs: Path = SYSFS_2M) -> tuple[bool, str, dict[str, object]]:
    """``(ok, sentence, facts)`` for ``firecracer doctor``: ok when the kernel offers 2 MiB pages."""
    if not supported(sysfs):
        return False, "no 2 MiB hugetlbfs pages on this kernel (huge_pages=2M guests cannot run)", {}
    p = pool(sysfs)
    more = reservable(sysfs)
    gib = p.available * HUGE_2M / (1 << 30)
    sentence = (f"2 MiB pool: {p.available} available ({gib:.1f} GiB; {p.total} total, {p.free} free), about "
                f"{more} more reservable; a 1 GiB guest needs 512: "
                f"'{reserve_hint(512, p)}' (root)")
    return True, sentence, {**p.as_dict(), "reservable": more}
