"""A tiny Java program and a helper to run it with NMT — the JVM that tests, benchmark and fixture collect.

Kept here (not in tests/) so ``scripts/make_local_fixture.py``, the benchmark and the tests start the
same JVM. Needs ``javac`` and ``java`` on PATH; the caller owns the returned process and must stop it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

JAVA_SOURCE = r"""
import java.util.*;
import java.util.concurrent.*;

public class FcrIdle {
    static volatile Object sink;
    public static void main(String[] args) throws Exception {
        int mib = args.length > 0 ? Integer.parseInt(args[0]) : 32;
        List<byte[]> keep = new ArrayList<>();
        for (int i = 0; i < mib; i++) { byte[] b = new byte[1 << 20]; Arrays.fill(b, (byte) i); keep.add(b); }
        Map<String, Integer> m = new HashMap<>();
        for (int i = 0; i < 20000; i++) m.put("k" + i, i);
        ExecutorService pool = Executors.newFixedThreadPool(3);
        List<Future<Long>> fs = new ArrayList<>();
        for (int t = 0; t < 3; t++) {
            final int s = t;
            fs.add(pool.submit(() -> {
                long x = s;
                for (int i = 0; i < 2_000_000; i++) x = x * 31 + i;
                return x;
            }));
        }
        long sum = 0; for (Future<Long> f : fs) sum += f.get();
        pool.shutdown();
        sink = new Object[] { keep, m, sum };
        System.out.println("ready " + ProcessHandle.current().pid());
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
"""


@dataclass
class RunningJvm:
    """A started JVM: its process (owned by the caller) and its pid."""

    proc: subprocess.Popen[bytes]
    pid: int
    argv: list[str]

    def stop(self) -> None:
        """Kill the JVM and reap it (bounded)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def java_available() -> str | None:
    """``None`` if java and javac are on PATH, else a reason naming what is missing."""
    missing = [t for t in ("java", "javac") if shutil.which(t) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else None


def compile_workload(workdir: Path) -> Path:
    """Write and compile ``FcrIdle.java`` in ``workdir``; returns the class directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "FcrIdle.java"
    src.write_text(JAVA_SOURCE)
    subprocess.run(["javac", "-d", str(workdir), str(src)], check=True, capture_output=True, timeout=180)
    return workdir


def start_jvm(workdir: Path, *, heap_mib: int = 32, extra: tuple[str, ...] = (),
              ready_timeout: float = 120.0) -> RunningJvm:
    """Start ``FcrIdle`` with ``-XX:NativeMemoryTracking=detail`` and wait (bounded) for its ready line."""
    classes = compile_workload(workdir) if not (workdir / "FcrIdle.class").exists() else workdir
    argv = ["java", "-XX:NativeMemoryTracking=detail", "-Xms64m", "-Xmx128m", "-XX:+UseSerialGC",
            *extra, "-cp", str(classes), "FcrIdle", str(heap_mib)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir)
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + ready_timeout
    out = b""
    try:
        while b"ready" not in out:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"JVM did not become ready: {out.decode(errors='replace')[-500:]}")
            if sel.select(min(left, 1.0)):
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    proc.wait(timeout=10)
                    raise RuntimeError(f"JVM exited: {out.decode(errors='replace')[-500:]}")
                out += chunk
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
    finally:
        sel.close()
    return RunningJvm(proc, proc.pid, argv)
