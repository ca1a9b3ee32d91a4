"""Our seed-format exports fed to the ORIGINAL UffdVisualizer (opt-in: its source is not in this repo).

Set ``FIRECRACER_UFFDVISUALIZER`` to the seed's ``tools/UffdVisualizer/src/io/simonis/UffdVisualizer.java``
(public repository simonis/fireCRaCer). The test compiles it (JDK 17+, ``--enable-preview``), runs it
headless on each real fixture exported to seed text, and compares the three console lines it prints
before its window would open with our ``totals``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from firecracer.analysis import attribute, load_recording
from firecracer.analysis.tables import totals
from firecracer.guest.seedfmt import write_seed_text
from firecracer.uffd.trace import export_seed_log

from .regen_golden import FIXTURES, RECORDINGS

SRC = os.environ.get("FIRECRACER_UFFDVISUALIZER")
pytestmark = pytest.mark.skipif(
    not SRC or not Path(SRC).is_file() or not shutil.which("javac"),
    reason="set FIRECRACER_UFFDVISUALIZER to the original UffdVisualizer.java (and have a JDK)")

MAPS = re.compile(r"Parsed (\d+) mappings for (\d+) processes")
UFFD = re.compile(r"Parsed (\d+) UFFD events \((\d+) pages / \d+kb loaded,  (\d+) pages / \d+kb zeroed\)")
NMT = re.compile(r"Parsed (\d+) NMT mappings for Java process (\d+)")


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uffdvis")
    subprocess.run(["javac", "--release", "17", "--enable-preview", "-d", str(out), str(SRC)],
                   check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("name", RECORDINGS)
def test_original_visualizer_counts_equal_our_totals(classes: Path, tmp_path: Path, name: str) -> None:
    rec = load_recording(FIXTURES / name)
    tot = totals(attribute(rec))
    write_seed_text(rec.memmap, tmp_path / "memmap.txt", full_names=True, include_free=True)
    log = tmp_path / "uffd.log"
    if rec.trace is not None:
        export_seed_log(rec.trace, log)
    else:   # the visualizer needs at least one event line; a page nobody owns changes no count we check
        log.write_text("UFFD_EVENT_PAGEFAULT (r): 0x0000000000000000 0x0000000000000000  "
                       "Loading: 0x0000000000000000 - 0x0000000000001000\n")
    args = [str(tmp_path / "memmap.txt"), str(log)]
    if rec.nmt is not None:
        args.append(str(FIXTURES / name / "nmt.txt"))
    res = subprocess.run(["java", "--enable-preview", "-Djava.awt.headless=true", "-cp", str(classes),
                          "io.simonis.UffdVisualizer", *args], capture_output=True, text=True, timeout=300)
    out = res.stdout
    m = MAPS.search(out)
    assert m, out + res.stderr
    assert (int(m[1]), int(m[2])) == (tot["physical_pages"], tot["processes"])
    u = UFFD.search(out)
    assert u, out + res.stderr
    if rec.trace is not None:
        assert (int(u[1]), int(u[2]), int(u[3])) == (tot["uffd_events"], tot["pages_loaded"],
                                                     tot["pages_zeroed"])
    if rec.nmt is not None:
        n = NMT.search(out)
        assert n, out + res.stderr
        assert (int(n[1]), int(n[2])) == (tot["nmt_regions"], rec.nmt_pid)
