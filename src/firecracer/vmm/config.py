"""Typed request bodies for Firecracker's API, rendered for one running version.

Firecracker rejects unknown fields (``deny_unknown_fields``), and fields came and went between
releases. Each builder's ``body(version)`` therefore emits only fields that version accepts:
renamed fields are translated (``track_dirty_pages`` on load is ``enable_diff_snapshots`` before
v1.13), optional fields are sent only when set, and a feature a version cannot express raises
:class:`~firecracer.vmm.api.Unsupported` instead of being silently dropped.

Field availability (read from each release's ``swagger/firecracker.yaml``):

============================  =====  =====  =====  =====  ======
field                         1.4    1.7    1.12   1.13   1.14
============================  =====  =====  =====  =====  ======
machine-config huge_pages     -      yes    yes    yes    yes
drive is_read_only optional   no     yes    yes    yes    yes
logger level Trace/Off        -      yes    yes    yes    yes
logger log_path optional      no     yes    yes    yes    yes
load network_overrides        -      -      yes    yes    yes
load track_dirty_pages        -      -      -      yes    yes
load enable_diff_snapshots    yes    yes    yes    depr.  depr.
balloon free_page_hinting     -      -      -      -      yes
============================  =====  =====  =====  =====  ======
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError
from firecracer.fcversion import Version
from firecracer.vmm.api import Unsupported
from firecracer.vmm.network import GUEST_MAC, kernel_ip_arg


class SnapshotType(enum.Enum):
    """Full: every guest page; Diff: only pages dirtied since the last snapshot (needs dirty tracking)."""

    FULL = "Full"
    DIFF = "Diff"


class MemBackend(enum.Enum):
    """File: Firecracker maps the memory file privately; Uffd: a page server fills faults."""

    FILE = "File"
    UFFD = "Uffd"


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class BootSource:
    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None

    def body(self, version: Version) -> dict[str, Any]:
        return _drop_none({"kernel_image_path": self.kernel_image_path, "boot_args": self.boot_args,
                           "initrd_path": self.initrd_path})


@dataclass(frozen=True)
class Drive:
    drive_id: str
    path_on_host: str
    is_root_device: bool = False
    is_read_only: bool = False
    partuuid: str | None = None
    cache_type: str | None = None  # "Unsafe" | "Writeback"
    io_engine: str | None = None  # "Sync" | "Async"

    def body(self, version: Version) -> dict[str, Any]:
        return _drop_none({"drive_id": self.drive_id, "path_on_host": self.path_on_host,
                           "is_root_device": self.is_root_device, "is_read_only": self.is_read_only,
                           "partuuid": self.partuuid, "cache_type": self.cache_type,
                           "io_engine": self.io_engine})


@dataclass(frozen=True)
class MachineConfig:
    vcpu_count: int = 1
    mem_size_mib: int = 128
    smt: bool | None = None
    track_dirty_pages: bool = False
    huge_pages: str | None = None  # "None" | "2M"
    cpu_template: str | None = None

    def body(self, version: Version) -> dict[str, Any]:
        huge = self.huge_pages
        if huge not in (None, "None") and not version.at_least(1, 7):
            raise Unsupported(f"huge_pages={huge} needs Firecracker >= 1.7 (this is {version})")
        if huge == "None" and not version.at_least(1, 7):
            huge = None
        return _drop_none({"vcpu_count": self.vcpu_count, "mem_size_mib": self.mem_size_mib, "smt": self.smt,
                           "track_dirty_pages": self.track_dirty_pages, "huge_pages": huge,
                           "cpu_template": self.cpu_template})


@dataclass(frozen=True)
class Vsock:
    guest_cid: int
    uds_path: str

    def body(self, version: Version) -> dict[str, Any]:
        # vsock_id is deprecated and optional in every version we support; never send it.
        return {"guest_cid": self.guest_cid, "uds_path": self.uds_path}


@dataclass(frozen=True)
class NetworkInterface:
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None

    def body(self, version: Version) -> dict[str, Any]:
        return _drop_none({"iface_id": self.iface_id, "host_dev_name": self.host_dev_name,
                           "guest_mac": self.guest_mac})


@dataclass(frozen=True)
class Balloon:
    amount_mib: int
    deflate_on_oom: bool = True
    stats_polling_interval_s: int | None = None
    free_page_hinting: bool | None = None
    free_page_reporting: bool | None = None

    def body(self, version: Version) -> dict[str, Any]:
        if (self.free_page_hinting or self.free_page_reporting) and not version.at_least(1, 14):
            raise Unsupported(f"balloon free page hinting/reporting needs Firecracker >= 1.14 "
                              f"(this is {version})")
        newer = version.at_least(1, 14)
        return _drop_none({"amount_mib": self.amount_mib, "deflate_on_oom": self.deflate_on_oom,
                           "stats_polling_interval_s": self.stats_polling_interval_s,
                           "free_page_hinting": self.free_page_hinting if newer else None,
                           "free_page_reporting": self.free_page_reporting if newer else None})


@dataclass(frozen=True)
class Logger:
    log_path: str
    level: str = "Warning"  # Error | Warning | Info | Debug | Trace | Off
    show_level: bool | None = None
    show_log_origin: bool | None = None

    def body(self, version: Version) -> dict[str, Any]:
        level = self.level
        if not version.at_least(1, 7) and level in ("Trace", "Off"):
            level = {"Trace": "Debug", "Off": "Error"}[level]
        return _drop_none({"log_path": self.log_path, "level": level, "show_level": self.show_level,
                           "show_log_origin": self.show_log_origin})


@dataclass(frozen=True)
class MmdsConfig:
    network_interfaces: tuple[str, ...]
    version: str = "V2"
    ipv4_address: str | None = None

    def body(self, version: Version) -> dict[str, Any]:
        return _drop_none({"network_interfaces": list(self.network_interfaces), "version": self.version,
                           "ipv4_address": self.ipv4_address})


@dataclass(frozen=True)
class SnapshotCreate:
    snapshot_path: str
    mem_file_path: str
    snapshot_type: SnapshotType = SnapshotType.FULL

    def body(self, version: Version) -> dict[str, Any]:
        # v1.4/1.5 also accept "version" (an older target format); we always write the native one.
        return {"snapshot_path": self.snapshot_path, "mem_file_path": self.mem_file_path,
                "snapshot_type": self.snapshot_type.value}


@dataclass(frozen=True)
class SnapshotLoad:
    snapshot_path: str
    backend_path: str
    backend_type: MemBackend = MemBackend.FILE
    track_dirty_pages: bool = False
    resume_vm: bool = False
    network_overrides: tuple[tuple[str, str], ...] = field(default=())  # (iface_id, host_dev_name)

    def body(self, version: Version) -> dict[str, Any]:
        out: dict[str, Any] = {"snapshot_path": self.snapshot_path,
                               "mem_backend": {"backend_type": self.backend_type.value,
                                               "backend_path": self.backend_path}}
        if self.track_dirty_pages:
            out["track_dirty_pages" if version.at_least(1, 13) else "enable_diff_snapshots"] = True
        if self.resume_vm:
            out["resume_vm"] = True
        if self.network_overrides:
            if not version.at_least(1, 12):
                raise Unsupported(f"network_overrides on snapshot load need Firecracker >= 1.12 "
                                  f"(this is {version})")
            out["network_overrides"] = [{"iface_id": i, "host_dev_name": h}
                                        for i, h in self.network_overrides]
        return out


#: the kernel command line of a boot unless the caller gives one
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"


@dataclass(frozen=True)
class VMConfig:
    """What to boot. Paths are stored as given; ``labels`` travel into ``snapshot.json``."""

    kernel: str
    boot_args: str = DEFAULT_BOOT_ARGS
    rootfs: str | None = None
    rootfs_read_only: bool = True
    #: more block devices after the root (vdb, vdc, … in this order): ``{"path": P, "read_only": bool}``;
    #: e.g. the scratch drive a CRIU checkpoint is written to and restored from in a later boot
    drives: list[dict[str, Any]] = field(default_factory=list)
    initrd: str | None = None
    vcpu_count: int = 1
    mem_size_mib: int = 128
    track_dirty_pages: bool = False
    huge_pages: str | None = None
    smt: bool | None = None
    vsock_cid: int | None = 3
    network: bool = False
    balloon_mib: int | None = None
    mmds: dict[str, Any] | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def requests(self, version: Version, *, tap: str | None, vsock_uds: str) -> list[tuple[str, object]]:
        """The API requests (``PUT path body``, in order) that configure this VM before it starts.

        ``tap``: the host device of ``eth0`` (with ``network``); ``vsock_uds``: the vsock socket, relative
        to the run directory (Firecracker's cwd), so it resolves there after a restore too.
        :raises FirecracerError: a drive that is not a file, MMDS without a network.
        """
        boot_args = self.boot_args
        if self.network and "ip=" not in boot_args:
            boot_args = f"{boot_args} {kernel_ip_arg()}"
        out: list[tuple[str, object]] = [
            ("/boot-source", BootSource(_abs(self.kernel), boot_args,
                                        _abs(self.initrd) if self.initrd else None).body(version)),
            ("/machine-config", MachineConfig(vcpu_count=self.vcpu_count, mem_size_mib=self.mem_size_mib,
                                              smt=self.smt, track_dirty_pages=self.track_dirty_pages,
                                              huge_pages=self.huge_pages).body(version))]
        if self.rootfs:
            out.append(("/drives/rootfs", Drive("rootfs", _abs(self.rootfs), is_root_device=True,
                                                is_read_only=self.rootfs_read_only).body(version)))
        for i, d in enumerate(self.drives):
            path = d.get("path")
            if not isinstance(path, str) or not Path(path).is_file():
                raise FirecracerError(f"drive {i + 1}: {path!r} is not a file")
            drive = Drive(f"drive{i + 1}", _abs(path), is_root_device=False,
                          is_read_only=bool(d.get("read_only", False)))
            out.append((f"/drives/drive{i + 1}", drive.body(version)))
        if self.vsock_cid is not None:
            out.append(("/vsock", Vsock(self.vsock_cid, vsock_uds).body(version)))
        if self.network:
            assert tap is not None, "a network VM's tap device"
            out.append(("/network-interfaces/eth0", NetworkInterface("eth0", tap, GUEST_MAC).body(version)))
        if self.mmds is not None:
            if not self.network:
                raise FirecracerError("MMDS needs a network interface: set network=True")
            out += [("/mmds/config", MmdsConfig(("eth0",)).body(version)), ("/mmds", self.mmds)]
        if self.balloon_mib is not None:
            out.append(("/balloon", Balloon(self.balloon_mib).body(version)))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _abs(p: str | os.PathLike[str]) -> str:
    return str(Path(p).resolve())
