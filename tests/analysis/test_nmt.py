"""NMT parser: real JDK 17 output, JDK 21+ wording, a live JVM, and malformed input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from firecracer.analysis.nmt import parse_nmt, parse_nmt_text
from firecracer.errors import FormatError

from .uffdvis_rules import nmt_regions as seed_nmt_regions

FIX = Path(__file__).parent.parent / "fixtures" / "analysis"
KB = 1024


def test_jdk17_detail_regions_and_committed_match_summary() -> None:
    r = parse_nmt(FIX / "nmt_jdk17_detail.txt")
    assert r.pid == 10562
    assert r.has_vm_map
    assert len(r.regions) == 37
    assert r.seed_region_count == seed_nmt_regions(FIX / "nmt_jdk17_detail.txt") == 37
    heap = r.regions[0]
    assert (heap.start, heap.end, heap.category) == (0xF0000000, 0x100000000, "Java Heap")
    assert heap.all_committed and heap.committed_bytes == 262144 * KB
    assert len(heap.committed) == 5                       # printed sub-ranges (G1 + CDS archive)
    # the virtual memory map adds up to the summary's mmap numbers, category by category
    for cat in ("Java Heap", "Metaspace", "Class", "Code", "GC", "Shared class space", "Internal"):
        regs = [x for x in r.regions if x.category == cat]
        assert sum(x.reserved_bytes for x in regs) == r.summary[cat].mmap_reserved, cat
        assert sum(x.committed_bytes for x in regs) == r.summary[cat].mmap_committed, cat
    stacks = [x for x in r.regions if x.category == "Thread Stack"]
    assert len(stacks) == 19
    assert sum(x.reserved_bytes for x in stacks) == 19456 * KB
    assert sum(x.committed_bytes for x in stacks) == 800 * KB   # "(stack: reserved=19456KB, committed=800KB)"
    assert (r.total_reserved, r.total_committed) == (1709322 * KB, 332410 * KB)


def test_arrays_are_sorted_and_consistent() -> None:
    r = parse_nmt(FIX / "nmt_jdk17_detail.txt")
    a = r.arrays()
    assert (a.region_start[1:] > a.region_start[:-1]).all()
    assert (a.region_end[:-1] <= a.region_start[1:]).all()
    assert len(a.committed_start) == sum(len(x.committed) for x in r.regions)
    assert (a.committed_start >= a.region_start[a.committed_region]).all()
    assert (a.committed_end <= a.region_end[a.committed_region]).all()
    assert a.categories[a.region_cat[0]] == "Java Heap"


def test_summary_only() -> None:
    r = parse_nmt(FIX / "nmt_jdk17_summary.txt")
    assert not r.has_vm_map and r.regions == []
    assert r.summary["Java Heap"].committed == 262144 * KB
    assert r.summary["Class"].mmap_reserved == 1048576 * KB


JDK21 = """\
4242:

Native Memory Tracking:

(Omitting categories weighting less than 1KB)

Total: reserved=1508216KB, committed=90564KB
       malloc: 21152KB #51234, peak=23000KB #52000
       mmap:   reserved=1487064KB, committed=69412KB

-                 Java Heap (reserved=262144KB, committed=16384KB)
                            (mmap: reserved=262144KB, committed=16384KB, peak=16384KB)

-                     Class (reserved=1048608KB, committed=224KB)
                            (classes #554)
                            (malloc=32KB tag=Class #649) (peak=33KB #650)
                            (mmap: reserved=1048576KB, committed=192KB, at peak)

Details:

[0x00007f0f3b1b0b51] os::malloc(unsigned long, MemTag, NativeCallStack const&)+0x1a1
                             (malloc=2048KB type=GC #2) (at peak)

[0x00007f0f3b05a0f5] ReservedSpace::reserve(unsigned long, unsigned long, char*, bool)+0x125
                             (reserved=262144KB, committed=16384KB Type=Java Heap)

Virtual memory map:

[0x00000000f0000000 - 0x0000000100000000] reserved 262144KB for Java Heap from
    [0x00007f0f3b05a0f5] ReservedSpace::reserve(unsigned long, unsigned long, char*, bool)+0x125

        [0x00000000f0000000 - 0x00000000f1000000] committed 16384KB from
            [0x00007f0f3ac53e36] G1PageBasedVirtualSpace::commit(unsigned long, unsigned long)+0x66

[0x00007f0ef0000000 - 0x00007f0f30000000] reserved 1048576KB for Class from
    [0x00007f0f3b05a0f5] ReservedSpace::reserve(unsigned long, unsigned long, char*, bool)+0x125

        [0x00007f0ef0000000 - 0x00007f0ef0030000] committed 192KB from
            [0x00007f0f3ac53e36] VirtualSpace::expand_by(unsigned long, bool)+0x1c6

[0x00007f0f38a00000 - 0x00007f0f38b00000] reserved 1024KB for Thread Stack
        [0x00007f0f38afc000 - 0x00007f0f38b00000] committed 16KB

[0x00007f0f3c000000 - 0x00007f0f3c200000] reserved and committed 2MB for Code from
    [0x00007f0f3b05a0f5] ReservedSpace::reserve(unsigned long, unsigned long, char*, bool)+0x125
"""


def test_jdk21_wording_spaces_details_first_and_mb_scale() -> None:
    r = parse_nmt_text(JDK21)
    assert r.pid == 4242
    assert [x.category for x in r.regions] == ["Java Heap", "Class", "Thread Stack", "Code"]
    assert r.regions[0].committed == [(0xF0000000, 0xF1000000)]       # 8-space indentation (JDK 21+)
    assert r.regions[2].has_stack is False and r.regions[2].committed_bytes == 16 * KB
    assert r.regions[3].all_committed and r.regions[3].committed_bytes == 2 << 20
    assert r.seed_region_count == 3
    assert r.summary["Java Heap"].mmap_committed == 16384 * KB
    assert r.summary["Class"].malloc == 32 * KB


@pytest.mark.parametrize(("text", "why"), [
    ("", "not NMT output"),
    ("1234:\nNative memory tracking is not enabled\n", "without Native Memory Tracking"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n[0x1000 - 0x2000] reserved for X from\n",
     "unrecognised reserved-region"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n[0x1000 - 0x2000] reserved 1KB for X from\n",
     "says 1KB"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n\t[0x1000 - 0x2000] committed 4KB from\n",
     "before any reserved"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n[0x1000 - 0x2000] reserved 4KB for X from\n"
     "\t[0x3000 - 0x4000] committed 4KB from\n", "outside its reserved"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n[0x2000 - 0x1000] reserved 4KB for X from\n",
     "inverted"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n[0x1000 - 0x3000] reserved 8KB for X from\n"
     "[0x2000 - 0x3000] reserved 4KB for Y from\n", "overlaps"),
    ("1:\nNative Memory Tracking:\nVirtual memory map:\n[0x2000 - 0x3000] reserved 4KB for Y from\n"
     "[0x1000 - 0x3000] reserved 8KB for X from\n", "0x2000 overlaps the one at 0x1000 \\(line 5\\)"),
])
def test_malformed(text: str, why: str) -> None:
    with pytest.raises(FormatError, match=why) as ei:
        parse_nmt_text(text, "x.txt")
    assert str(ei.value).startswith("x.txt")


def test_the_map_may_come_in_descending_address_order() -> None:
    """OpenJDK 17.0.19 in our guest printed its virtual memory map from the highest address down."""
    r = parse_nmt_text("1:\nNative Memory Tracking:\nVirtual memory map:\n"
                       "[0x5000 - 0x6000] reserved and committed 4KB for Code from\n"
                       "[0x1000 - 0x3000] reserved 8KB for Java Heap from\n"
                       "\t[0x1000 - 0x2000] committed 4KB from\n", "x.txt")
    assert [(g.start, g.category, g.committed) for g in r.sorted_regions()] == [
        (0x1000, "Java Heap", [(0x1000, 0x2000)]), (0x5000, "Code", [(0x5000, 0x6000)])]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="NMT file does not exist"):
        parse_nmt(tmp_path / "missing.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FormatError, match="not UTF-8"):
        parse_nmt(tmp_path / "bin")


@pytest.mark.skipif(not (shutil.which("java") and shutil.which("javac") and shutil.which("jcmd")),
                    reason="needs java, javac and jcmd (a JDK)")
def test_live_jvm(tmp_path: Path) -> None:
    """Start a JVM with NMT detail on this host and parse what jcmd says about it."""
    (tmp_path / "Idle.java").write_text(
        "public class Idle { public static void main(String[] a) throws Exception {"
        " byte[] b = new byte[1 << 22]; System.out.println(\"ready \" + b.length); System.out.flush();"
        " Thread.sleep(120000); } }\n")
    subprocess.run(["javac", "Idle.java"], cwd=tmp_path, check=True, timeout=120)
    jvm = subprocess.Popen(["java", "-XX:NativeMemoryTracking=detail", "-Xmx128m", "-cp", ".", "Idle"],
                           cwd=tmp_path, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert jvm.stdout is not None
        assert jvm.stdout.readline().startswith("ready")
        out = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:     # the attach listener may need a moment
            res = subprocess.run(["jcmd", str(jvm.pid), "VM.native_memory", "detail"],
                                 capture_output=True, text=True, timeout=60)
            out = res.stdout
            if "Virtual memory map:" in out:
                break
            time.sleep(0.5)
        (tmp_path / "nmt.txt").write_text(out)
        r = parse_nmt(tmp_path / "nmt.txt")
        assert r.pid == jvm.pid
        heap = [x for x in r.regions if x.category == "Java Heap"]
        assert len(heap) == 1 and heap[0].reserved_bytes == 128 << 20
        assert r.seed_region_count == seed_nmt_regions(tmp_path / "nmt.txt")
        for cat in ("Java Heap", "Code", "Class"):
            regs = [x for x in r.regions if x.category == cat]
            assert sum(x.reserved_bytes for x in regs) == r.summary[cat].mmap_reserved, cat
    finally:
        os.killpg(jvm.pid, signal.SIGKILL)
        jvm.wait(timeout=30)


def test_jdk8_doc_wording() -> None:
    """Oracle's JDK 8 troubleshooting guide prints two spaces after 'Total:' and commas in malloc lines."""
    r = parse_nmt_text("123:\n\nNative Memory Tracking:\n\n"
                       "Total:  reserved=664192KB,  committed=253120KB\n\n"
                       "-                     Class (reserved=6568KB, committed=4140KB)\n"
                       "                            (classes #665)\n"
                       "                            (malloc=424KB, #1000)\n"
                       "                            (mmap: reserved=6144KB, committed=3716KB)\n")
    assert r.total_reserved == 664192 * KB and r.total_committed == 253120 * KB
    assert r.summary["Class"].malloc == 424 * KB and r.summary["Class"].mmap_committed == 3716 * KB
