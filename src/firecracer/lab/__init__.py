"""The lab: an emulated KVM host, for machines whose /dev/kvm cannot boot Linux guests.

QEMU's TCG emulates AMD SVM with nested paging, so an L1 Linux VM under TCG gets a working
``/dev/kvm`` from ``kvm_amd``, and real Firecracker inside it boots ordinary guests — our image and
its JVM included. The L1 shares this host's root read-only (nothing to build or install) and the
caller's directory writable, so ``firecracer lab run -- COMMAND`` runs any firecracer command (or a
test suite) as if this host had KVM. Timings in the lab are TCG timings and not comparable to KVM;
counts (faults, pages, bytes, working sets) are real.

* :mod:`.assets`  — the L1 kernel (Debian's package, unpacked into the cache) and initramfs (busybox).
* :mod:`.machine` — one L1 per command: QEMU's lifecycle, output relay, signals, power-off.
* :mod:`.inside`  — the stdlib-only runner inside L1 and the frame protocol.
* :mod:`.check`   — ``lab check``: boot L1, load kvm_amd, report KVM capabilities and stage times.
"""

from firecracer.lab.assets import LabError
from firecracer.lab.machine import LAB_HOST, LabMachine, LabResult, LabSpec

__all__ = ["LAB_HOST", "LabError", "LabMachine", "LabResult", "LabSpec"]
