"""A real two-node Ray cluster on this machine for the cluster tests: started with ``ray start``, each
node with its own resources, found and stopped through a mark in its processes' environment (never
``ray stop``, which would stop every Ray on the machine)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

MARK = "FCR_RAY_TEST"  # the cluster's processes, and whatever they start (Firecrackers too)
NODE = "FCR_RAY_NODE"  # one node's
IP = "127.0.0.2"  # loopback; Ray turns 127.0.0.1 into this host's outside address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((IP, 0))
        return int(s.getsockname()[1])


def _env_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class LocalRayCluster:
    """``ray start --head`` plus ``ray start --address`` on 127.0.0.2, small (1 CPU, 200 MB stores)."""

    def __init__(self, head_resources: dict[str, float], worker_resources: dict[str, float]) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.port = _free_port()
        self.address = f"{IP}:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="fcr-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.head_resources = head_resources
        self.worker_resources = worker_resources

    def _start(self, node: str, args: list[str], resources: dict[str, float]) -> None:
        env = {**os.environ, MARK: self.id, NODE: f"{self.id}-{node}", "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = ["ray", "start", f"--node-ip-address={IP}", "--num-cpus=1", "--object-store-memory=200000000",
               f"--temp-dir={self.temp}", f"--resources={json.dumps(resources)}", "--disable-usage-stats",
               *args]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if res.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr[-2000:]}")

    def start(self) -> LocalRayCluster:
        self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false"],
                    self.head_resources)
        self._start("w1", [f"--address={self.address}"], self.worker_resources)
        return self

    def pids(self, node: str | None = None, vm: bool | None = None) -> list[int]:
        """Live processes of the cluster (or of one node); ``vm``: only (or no) Firecrackers/page servers
        (the processes of a VM run directory)."""
        out = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            env = _env_of(int(entry.name))
            if env.get(MARK) != self.id or (node and env.get(NODE) != f"{self.id}-{node}"):
                continue
            if vm is not None and ("FIRECRACER_RUN_DIR" in env) != vm:
                continue
            if not _is_zombie(int(entry.name)):
                out.append(int(entry.name))
        return out

    def kill(self, node: str | None = None, vm: bool | None = None) -> None:
        """SIGKILL the cluster's (or one node's) processes until none is left (new workers may appear)."""
        for _ in range(20):
            pids = self.pids(node, vm)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.temp, ignore_errors=True)
