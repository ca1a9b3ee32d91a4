"""Drive the probe guest inside a :class:`~firecracer.vmm.machine.MicroVM`.

``boot_probe(elf, firecracker=None, ...) -> MicroVM`` boots and waits for the ready line;
``trigger(vm) -> ProbeResult`` sends one trigger byte and waits for its result line. Works the
same on a restored VM (the probe sits in its serial-poll loop when snapshotted).
"""

from __future__ import annotations

import os

from firecracer.errors import FirecrackerError
from firecracer.vmm.machine import MicroVM, VMConfig
from firecracer.vmm.probe import ProbeReady, ProbeResult, min_mem_mib, parse_line, probe_info

_READY_RX = r"^PROBE READY [^\n]*\n"
_RESULT_RX = r"^PROBE RESULT [^\n]*\n"


def probe_config(elf: str | os.PathLike[str], *, mem_size_mib: int | None = None,
                 track_dirty_pages: bool = False, vsock_cid: int | None = 3,
                 huge_pages: str | None = None) -> VMConfig:
    """A VMConfig that boots ``elf`` with enough memory for its highest page (at least 128 MiB).

    ``huge_pages="2M"`` backs guest memory with 2 MiB hugetlbfs pages (rounded up to 2 MiB).
    """
    info = probe_info(elf)
    need = min_mem_mib(max(info.max_page, info.image_end // 4096))
    mem = mem_size_mib if mem_size_mib is not None else max(128, need)
    if mem < need:
        raise ValueError(f"mem_size_mib={mem} is too small for page {info.max_page:#x} (needs {need})")
    if huge_pages == "2M":
        mem += mem % 2
    return VMConfig(kernel=str(elf), boot_args="console=ttyS0", mem_size_mib=mem,
                    track_dirty_pages=track_dirty_pages, vsock_cid=vsock_cid, huge_pages=huge_pages,
                    labels={"probe": {"key": info.key, "seed": info.seed, "fill_pages": info.fill_pages,
                                      "trace_pages": info.trace_pages}})


def boot_probe(elf: str | os.PathLike[str], firecracker: str | os.PathLike[str] | None = None, *,
               name: str | None = None, mem_size_mib: int | None = None, track_dirty_pages: bool = False,
               timeout: float = 60.0, huge_pages: str | None = None) -> MicroVM:
    """Boot the probe and wait for ``PROBE READY``; the VM is killed if anything fails.

    Timings land in ``vm.timings_ms``: ``spawn``, ``configure``, ``start`` and ``ready`` (ms from
    InstanceStart to the ready line).
    """
    import time

    vm = MicroVM(firecracker, name=name)
    try:
        config = probe_config(elf, mem_size_mib=mem_size_mib, track_dirty_pages=track_dirty_pages,
                              huge_pages=huge_pages)
        vm.boot(config, start=False)
        t0 = time.perf_counter()
        vm.start()
        m, _ = vm.wait_serial(_READY_RX, timeout)
        vm.timings_ms["ready"] = (time.perf_counter() - t0) * 1000
        if not isinstance(parse_line(m.group(0)), ProbeReady):
            raise FirecrackerError(f"{vm.name}: malformed ready line {m.group(0)!r}")
    except BaseException:
        vm.kill()
        raise
    return vm


def trigger(vm: MicroVM, what: bytes = b"t", timeout: float = 60.0) -> ProbeResult:
    """Send one trigger byte (``b"t"`` walk the trace, ``b"a"`` verify all) and return its result.

    ``vm.timings_ms["result"]`` is set to the ms from sending the byte to the complete line.
    """
    import time

    if what in (b"q", b"") or len(what) != 1:
        raise ValueError("trigger takes one byte other than b'q' (use vm.send_serial(b'q') to reset)")
    since = vm.console.size()
    t0 = time.perf_counter()
    vm.send_serial(what)
    m, _ = vm.wait_serial(_RESULT_RX, timeout, since=since)
    vm.timings_ms["result"] = (time.perf_counter() - t0) * 1000
    res = parse_line(m.group(0))
    if not isinstance(res, ProbeResult):
        raise FirecrackerError(f"{vm.name}: malformed result line {m.group(0)!r}")
    return res
