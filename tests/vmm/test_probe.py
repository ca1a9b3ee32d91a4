"""Probe guest: build rules (no Firecracker needed) and a real boot under every installed Firecracker."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from firecracer.vmm.probe import (
    IMAGE_BASE,
    PAGE_SIZE,
    ProbeBoot,
    ProbeReady,
    ProbeResult,
    build_probe,
    min_mem_mib,
    parse_line,
    probe_info,
    sample_offsets,
)

FILL = range(4096, 4096 + 64)  # 16 MiB .. 16 MiB + 256 KiB


def test_build_is_cached_and_described() -> None:
    a = build_probe([4096, 4097, 9000], FILL, seed=7)
    b = build_probe([4096, 4097, 9000], FILL, seed=7)
    c = build_probe([4096, 4097, 9000], FILL, seed=8)
    assert a == b and a != c
    assert a.read_bytes()[:4] == b"\x7fELF"
    info = probe_info(a)
    assert (info.fill_pages, info.trace_pages, info.seed, info.max_page) == (64, 3, 7, 9000)
    assert info.image_start <= IMAGE_BASE < info.image_end
    assert IMAGE_BASE // PAGE_SIZE in info.image_pages


def test_rejects_reserved_and_hole_pages() -> None:
    with pytest.raises(ValueError, match="overlaps the probe image"):
        build_probe([IMAGE_BASE // PAGE_SIZE], FILL)
    with pytest.raises(ValueError, match="MMIO hole"):
        build_probe([], [(3 << 30) // PAGE_SIZE])
    with pytest.raises(ValueError, match="writes has"):
        build_probe([4096], FILL, writes=[True, False])
    with pytest.raises(ValueError, match="samples"):
        build_probe([4096], FILL, samples=0)


def test_sample_offsets() -> None:
    assert sample_offsets(1) == [0]
    assert sample_offsets(2) == [0, 4088]
    assert sample_offsets(512) == list(range(0, 4096, 8))


def test_min_mem_mib_accounts_for_the_hole() -> None:
    assert min_mem_mib(4096) == 17
    assert min_mem_mib((4 << 30) // PAGE_SIZE) == 3 * 1024 + 1


def test_parse_line() -> None:
    assert parse_line("PROBE BOOT\r\n") == ProbeBoot()
    assert parse_line("PROBE READY fill_pages=3 trace_pages=2 seed=0x1f") == ProbeReady(3, 2, 0x1F)
    assert parse_line("PROBE RESULT round=2 kind=trace pages=5 errors=1 cycles=99") == \
        ProbeResult(2, "trace", 5, 1, 99)
    assert parse_line("PROBE RESULT round=2 kind=trace pages=5 err") is None
    assert parse_line("random kernel noise") is None


def _run_with_config(fc: Path, elf: Path, mem_mib: int, tmp: Path, triggers: bytes) -> list[str]:
    """Boot with --config-file, send each trigger after the previous line, return the probe lines."""
    cfg = {"boot-source": {"kernel_image_path": str(elf), "boot_args": "console=ttyS0"},
           "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": mem_mib}}
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    (tmp / "fc.log").touch()  # v1.4 logs only into an existing file
    proc = subprocess.Popen([str(fc), "--api-sock", str(tmp / "api.sock"), "--config-file",
                             str(tmp / "cfg.json"), "--level", "Warning", "--log-path", str(tmp / "fc.log")],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    buf = b""
    pending = list(triggers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not r:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith("PROBE"):
                    lines.append(text)
                    if isinstance(parse_line(text), ProbeReady | ProbeResult) and pending:
                        proc.stdin.write(bytes([pending.pop(0)]))
                        proc.stdin.flush()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    return lines


@pytest.mark.firecracker
def test_probe_boots_fills_and_verifies(fc_any: Path, tmp_path: Path) -> None:
    """Fill above 1 GiB too (own page tables), trace with writes and unfilled (zero) pages."""

    from tests.vmm.hostcaps import can_boot

    if not can_boot(fc_any):
        pytest.skip("Firecracker < 1.5 cannot start a vCPU on this host (CPUID brand string without "
                    "frequency; fixed in v1.5)")
    high = (1 << 30) // PAGE_SIZE + 5
    fill = [*FILL, high]
    trace = [4096, 4100, 9000, high, 4096]
    elf = build_probe(trace, fill, writes=[False, True, True, False, False], samples=4)
    lines = _run_with_config(fc_any, elf, min_mem_mib(high), tmp_path, b"tta" + b"q")
    parsed = [parse_line(x) for x in lines]
    assert parsed[0] == ProbeBoot()
    assert parsed[1] == ProbeReady(65, 5, probe_info(elf).seed)
    results = [p for p in parsed if isinstance(p, ProbeResult)]
    assert [(r.round, r.kind, r.pages, r.errors) for r in results] == \
        [(1, "trace", 5, 0), (2, "trace", 5, 0), (3, "verify", 65, 0)]
    assert all(r.cycles > 0 for r in results)


def test_skip_reserved_drops_unusable_pages() -> None:
    low, hole = IMAGE_BASE // PAGE_SIZE, (3 << 30) // PAGE_SIZE
    elf = build_probe([low, 4096, hole, 4097], [low, 4096, hole], writes=[True, False, True, True],
                      skip_reserved=True)
    info = probe_info(elf)
    assert (info.trace_pages, info.fill_pages) == (2, 1)
    assert elf == build_probe([4096, 4097], [4096], writes=[False, True])
