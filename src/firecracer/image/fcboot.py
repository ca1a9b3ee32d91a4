"""Boot the built kernel (and rootfs) in Firecracker and capture its first console lines.

On a KVM host this is a normal boot. On PVM-nested hosts like ours, Firecracker starts the kernel,
which prints its first boot messages and is then stopped by ``KVM_EXIT_INTERNAL_ERROR`` (PVM runs only
kernels built for it, see ENVIRONMENT.md); that ending is recognised and reported as such. Uses
Firecracker's ``--no-api --config-file`` mode, so it needs nothing from the VMM layer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from firecracer.image.rootfs import INIT_PATH

#: Firecracker <= 1.4 needs a frequency in the host CPU's brand string; this host's has none
OLD_FC_BRAND = re.compile(r"MissingFrequency|GetBrandString")
PVM_STOP_MARKERS = ("KVM_EXIT_INTERNAL_ERROR", "InternalError", "emulation failure", "Unexpected exit reason")


@dataclass(frozen=True)
class FcBoot:
    """What a Firecracker boot of the kernel printed, and how it ended."""

    console: list[str]
    exit_code: int | None  # None: still running when the time was up (then killed)
    seconds: float
    kernel_started: bool  # "Linux version" appeared on the serial console
    stopped_by_pvm: bool

    @property
    def unsupported(self) -> str | None:
        """Why this Firecracker cannot start any guest on this host, or None."""
        if self.exit_code not in (None, 0) and OLD_FC_BRAND.search("\n".join(self.console)):
            return ("Firecracker <= 1.4 cannot start a guest on this host: the CPU brand string has no "
                    "frequency (fixed in 1.5)")
        return None

    @property
    def ending(self) -> str:
        if self.unsupported:
            return self.unsupported
        if self.exit_code is None:
            return "still running when the time was up (killed)"
        if self.stopped_by_pvm:
            return f"Firecracker exited {self.exit_code}: the vCPU hit an exit PVM cannot emulate"
        return f"Firecracker exited {self.exit_code}"


def boot_in_firecracker(firecracker: Path, kernel: Path, rootfs: Path | None = None, *,
                        seconds: float = 15.0, mem_mib: int = 512, extra_args: str = "") -> FcBoot:
    """Run Firecracker for at most ``seconds``; always kills it and removes its config file.

    ``earlyprintk=ttyS0`` makes the kernel print from its first instruction on: on PVM hosts it is
    stopped before the normal console would have flushed a single line.
    """
    # Firecracker itself appends "root=/dev/vda ro" for a read-only root drive
    boot_args = (f"console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1 pci=off "
                 f"{f'init={INIT_PATH}' if rootfs else ''} {extra_args}").strip()
    config: dict[str, object] = {
        "boot-source": {"kernel_image_path": str(kernel), "boot_args": " ".join(boot_args.split())},
        "drives": ([{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True,
                     "is_read_only": True}] if rootfs else []),
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mem_mib},
    }
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fcr-fcboot-") as tmp:
        cfg = Path(tmp) / "vm.json"
        cfg.write_text(json.dumps(config))
        t0 = time.monotonic()
        proc = subprocess.Popen([str(firecracker), "--no-api", "--config-file", str(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=tmp, start_new_session=True)

        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        try:
            code: int | None = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            th.join(timeout=5)
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()
        elapsed = time.monotonic() - t0
    text = "\n".join(lines)
    return FcBoot(lines, code, elapsed, "Linux version" in text,
                  code not in (None, 0) and any(m in text for m in PVM_STOP_MARKERS))
