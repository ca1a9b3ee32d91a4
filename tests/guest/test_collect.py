"""Collect a real JVM on this host and check the memmap against smaps, kpagecount and NMT.

Done-when of issue #6: present pages x 4 KiB == smaps Rss (1 %), kpagecount > 1 pages appear as shared,
every NMT reserved region lies inside the JVM's mappings, the seed export parses back to the same pages.
"""

from __future__ import annotations

import collections
import ctypes
import io
import json
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firecracer.formats import merge_recording
from firecracer.guest import jvm as jvmmod
from firecracer.guest import memmap, recording, seedfmt, workload
from firecracer.guest.procfs import KPF, PAGE_SIZE

from .conftest import need_root

pytestmark = pytest.mark.root

DTYPES = {"owner_pid": "int64", "map_owner": "int32", "map_start": "uint64", "map_end": "uint64",
          "map_offset": "uint64", "map_perms": "uint8", "page_map": "int32", "page_owner": "int32",
          "page_vaddr": "uint64", "page_paddr": "uint64", "page_pm": "uint8", "page_kflags": "uint64",
          "page_kcount": "uint32"}


def smaps_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps") as fh:
        return sum(int(line.split()[1]) for line in fh if line.startswith("Rss:"))


def nmt_reserved(text: str) -> list[tuple[int, int, str]]:
    """Reserved regions of `jcmd VM.native_memory detail` (the test's own small reader)."""
    rx = re.compile(r"^\[0x([0-9a-f]+) - 0x([0-9a-f]+)\] reserved.* for (.+?)(?: from)?\s*$")
    return [(int(m[1], 16), int(m[2], 16), m[3]) for m in map(rx.match, text.splitlines()) if m]


def covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Is [start, end) inside the union of the sorted [a, b) ranges?"""
    pos = start
    for a, b in sorted(ranges):
        if b <= pos:
            continue
        if a > pos:
            return False
        pos = b
        if pos >= end:
            return True
    return pos >= end


def parse_seed(text: str) -> tuple[set[tuple[int, int, int, int]], set[tuple[int, int, int]], dict[int, str]]:
    """The test's seed reader: process pages (pid, vaddr, paddr, pm), other pages (pid, paddr, kflags)."""
    def num(tok: str) -> int:
        return int(tok[2:18], 16)  # what UffdVisualizer does; works for the 18-zero quirk too

    procs: set[tuple[int, int, int, int]] = set()
    other: set[tuple[int, int, int]] = set()
    exes: dict[int, str] = {}
    pid = None
    for line in text.splitlines():
        f = line.split(" ")
        if f[0] == "=":
            pid = int(f[1])
            exes[pid] = " ".join(f[2:])
        elif f[0] == "p":
            assert pid is not None
            if pid > 0:
                procs.add((pid, num(f[1]), num(f[2]), int(f[3]) | int(f[4]) << 1))
            else:
                other.add((pid, num(f[1]), num(f[2])))
        else:
            assert f[0] == "v", line
    return procs, other, exes


@pytest.fixture(scope="module")
def collected(jvm: workload.RunningJvm) -> memmap.Memmap:
    need_root()
    return memmap.collect([jvm.pid], sections=("processes", "kernel"))


def test_present_pages_match_smaps_rss(jvm: workload.RunningJvm, collected: memmap.Memmap) -> None:
    rss_kib = smaps_rss_kib(jvm.pid)
    pages = sum(1 for o in collected.page_owner if collected.owner_pid[o] == jvm.pid)
    assert rss_kib > 20_000  # the workload holds 32 MiB of arrays
    assert abs(pages * PAGE_SIZE // 1024 - rss_kib) <= rss_kib * 0.01, (pages * 4, rss_kib)


def test_multiply_mapped_pages_are_not_exclusive(collected: memmap.Memmap) -> None:
    shared = [k for k in range(collected.n_pages)
              if collected.owner_pid[collected.page_owner[k]] > 0 and collected.page_kcount[k] > 1]
    assert shared, "a JVM maps libc/libjvm pages that other processes map too"
    assert all(collected.page_pm[k] & 1 == 0 for k in shared)
    single = [k for k in range(collected.n_pages) if collected.owner_pid[collected.page_owner[k]] > 0
              and collected.page_kcount[k] == 1 and collected.page_kflags[k] & (1 << KPF["ANON"])]
    assert single and sum(collected.page_pm[k] & 1 for k in single) >= 0.99 * len(single)


def test_cow_shared_pages_appear_in_both_processes() -> None:
    """Deterministic sharing: anon pages shared copy-on-write by this process and a forked child."""
    need_root()
    npages = 16
    mem = mmap.mmap(-1, npages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(npages):
        mem[i * PAGE_SIZE] = 7
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child: wait until the parent has looked, then exit
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        mm = memmap.collect([os.getpid(), child], sections=("processes",))
    finally:
        os.close(w)
        os.waitpid(child, 0)
        mem.close()
    rows: dict[int, dict[int, tuple[int, int]]] = collections.defaultdict(dict)
    for k in range(mm.n_pages):
        v = mm.page_vaddr[k]
        if addr <= v < addr + npages * PAGE_SIZE:
            packed = mm.page_kcount[k] << 8 | mm.page_pm[k]
            rows[mm.owner_pid[mm.page_owner[k]]][v] = (mm.page_paddr[k], packed)
    assert set(rows) == {os.getpid(), child}
    assert len(rows[child]) == npages
    assert rows[child] == rows[os.getpid()]  # same PFNs at the same addresses
    for _paddr, packed in rows[child].values():
        assert packed >> 8 == 2 and packed & 1 == 0  # kpagecount 2, not exclusive


def test_nmt_reserved_regions_lie_inside_mappings(jvm: workload.RunningJvm, collected: memmap.Memmap) -> None:
    text = jvmmod.native_memory(jvm.pid)
    assert text.startswith(f"{jvm.pid}:\n")
    regions = nmt_reserved(text)
    cats = {c for _, _, c in regions}
    assert {"Java Heap", "Thread Stack", "Code"} <= cats, cats
    owner = list(collected.owner_pid).index(jvm.pid)
    maps = [(collected.map_start[j], collected.map_end[j]) for j in range(len(collected.map_owner))
            if collected.map_owner[j] == owner]
    outside = [(hex(s), hex(e), c) for s, e, c in regions if not covered(maps, s, e)]
    assert not outside


def test_attach_and_jcmd_binary_agree_on_the_header(jvm: workload.RunningJvm) -> None:
    a = jvmmod.attach_jcmd(jvm.pid, "VM.version")
    b = jvmmod.binary_jcmd(jvm.pid, "VM.version")
    assert a == b


def test_seed_export_parses_back_to_the_same_pages(jvm: workload.RunningJvm,
                                                   collected: memmap.Memmap) -> None:
    out = io.StringIO()
    n = seedfmt.write_seed(collected, out, full_names=False)
    procs, other, exes = parse_seed(out.getvalue())
    want_procs = {(collected.owner_pid[collected.page_owner[k]], collected.page_vaddr[k],
                   collected.page_paddr[k], collected.page_pm[k] & 3)
                  for k in range(collected.n_pages) if collected.owner_pid[collected.page_owner[k]] > 0}
    want_other = {(collected.owner_pid[collected.page_owner[k]], collected.page_vaddr[k],
                   collected.page_kflags[k])
                  for k in range(collected.n_pages) if collected.owner_pid[collected.page_owner[k]] <= 0}
    assert procs == want_procs
    assert other == want_other
    assert n == len(procs) + len(other) == collected.n_pages
    assert exes[jvm.pid].endswith("/java") and exes[0] == "kernel"


def test_cli_collect_local_writes_a_recording(jvm: workload.RunningJvm, tmp_path: Path) -> None:
    need_root()
    out = tmp_path / "rec"
    proc = subprocess.run([sys.executable, "-m", "firecracer", "collect", "--local", "--pid", str(jvm.pid),
                           "--format", "seed", "--json", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["jvm_pid"] == jvm.pid
    assert {"memmap.npz", "memmap.txt", "nmt.txt", f"smaps/{jvm.pid}.txt", "recording.json"} <= set(
        summary["files"])
    with np.load(out / "memmap.npz") as z:
        assert {k: str(z[k].dtype) for k in z.files if k != "meta"} == DTYPES
        meta = json.loads(bytes(z["meta"]).decode())
        assert meta["format"] == "firecracer-memmap" and meta["version"] == 1 and meta["page_size"] == 4096
        assert len(meta["owner_exe"]) == len(z["owner_pid"]) and len(meta["map_name"]) == len(z["map_start"])
        assert set(z["owner_pid"].tolist()) == {jvm.pid, 0, -1, -2}
        n_rows = len(z["page_paddr"])
        assert all(len(z[c]) == n_rows for c in DTYPES if c.startswith("page_"))
        # page cache rows are MAPPEDTODISK and not ANON; free rows are BUDDY
        po = z["owner_pid"][z["page_owner"]]
        fl = z["page_kflags"]
        assert np.all((fl[po == -1] >> 34) & 1) and not np.any((fl[po == -1] >> 12) & 1)
        assert np.all((fl[po == -2] >> 10) & 1)
        assert np.all(z["page_map"][po < 0] == -1) and np.all(z["page_map"][po > 0] >= 0)
    rec = json.loads((out / "recording.json").read_text())
    assert rec["format"] == "firecracer-recording" and rec["source"] == "local"
    assert rec["jvm"]["pid"] == jvm.pid and "-XX:NativeMemoryTracking=detail" in rec["jvm"]["options"]
    assert (out / "nmt.txt").read_text().startswith(f"{jvm.pid}:\n")


def test_without_root_privileges_the_error_says_why(tmp_path: Path) -> None:
    """As nobody (a forked child that drops privileges): CollectError naming kpageflags and root."""
    need_root()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 5
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            recording.collect_local(tmp_path / "r")
        except memmap.CollectError as exc:
            os.write(w, str(exc).encode())
            code = 1
        except BaseException as exc:
            os.write(w, repr(exc).encode())
            code = 4
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        text = fh.read().decode()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 1, text
    assert "/proc/kpageflags" in text and "root" in text
    assert not (tmp_path / "r").exists()


def test_recording_merges_existing_facts(tmp_path: Path) -> None:
    (tmp_path / "recording.json").write_text(json.dumps({"source": "firecracker", "vmm": {"v": "1.14.2"},
                                                         "jvm": {"options": ["x"]}}))
    merge_recording(tmp_path, {"jvm": {"pid": 5}, "collect": {"pages": 1}},
                                   {"source": "qemu-tcg-postcopy"})
    doc = json.loads((tmp_path / "recording.json").read_text())
    assert doc["source"] == "firecracker" and doc["vmm"] == {"v": "1.14.2"}
    assert doc["jvm"] == {"options": ["x"], "pid": 5} and doc["format"] == "firecracer-recording"
