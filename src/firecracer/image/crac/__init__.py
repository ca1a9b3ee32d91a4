"""CRaC's ``org.crac`` hooks on a stock JDK: firecracer's Java agent and its ``org.crac`` library.

Two Java source trees live here (standard Java, no dependencies):

* ``agent/``: the Java agent ``firecracer-crac-agent.jar`` (``-javaagent:``). Its ``jdk.crac`` package (Core,
  Context, Resource, CheckpointException, RestoreException) goes on the boot class path at ``premain``
  (``Instrumentation.appendToBootstrapClassLoaderSearch``; not the manifest's ``Boot-Class-Path``, which
  JDK 17's AppCDS archives made without the agent refuse), so CRaC's ``org.crac`` library, which looks
  for ``jdk.crac.Core`` by reflection, finds it with no ``-D`` option. At ``premain`` it listens on
  ``<notify dir>/crac.sock`` (:data:`SOCKET_NAME`), where the guest agent's ``before-snapshot N`` /
  ``after-restore N`` lines run the global context's hooks. On a JDK with CRaC built in (a ``jdk.crac``
  module) it provides nothing and drives the JDK's own global context.
* ``library/``: an ``org.crac``-compatible library written here, following the real one's lookup
  (``org.crac.Core.Compat`` property, ``javax.crac``, ``jdk.crac``, else registrations are dropped). The
  bundled PetClinic compiles against it and ships it on its classpath, as an application ships the real
  ``org.crac`` jar (which no registry reachable here has).

Both are compiled with the image's own ``javac`` inside the root file system (:func:`agent_build_script`,
:func:`library_build_script`), like the bundled apps: the class files then match the JDK that runs them
whatever JDK the image has, and the host needs no JDK. :func:`compile_on_host` does the same on this host
(tests).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from firecracer.image._build import ImageError

#: the agent jar's file name
AGENT_JAR = "firecracer-crac-agent.jar"
#: where the image keeps the agent jar and its sources (``source/``)
IMAGE_DIR = "/opt/firecracer/crac"
IMAGE_AGENT_JAR = f"{IMAGE_DIR}/{AGENT_JAR}"
#: the org.crac-compatible library's jar name (beside an app's jar)
LIBRARY_JAR = "org.crac.jar"
PREMAIN_CLASS = "io.firecracer.crac.Agent"
#: system properties the agent reads
DIR_PROPERTY = "firecracer.crac.notifyDir"
NAME_PROPERTY = "firecracer.crac.socketName"
SOCKET_NAME = "crac.sock"
PARTS = ("agent", "library")


def sources() -> Traversable:
    return resources.files("firecracer.image").joinpath("crac")


def source_files(part: str) -> list[tuple[str, bytes]]:
    """(path relative to ``part``/, bytes) of the ``.java`` files of ``agent`` or ``library``, sorted."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; known: {', '.join(PARTS)}")
    out: list[tuple[str, bytes]] = []

    def walk(node: Traversable, prefix: str) -> None:
        for entry in sorted(node.iterdir(), key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            if entry.is_dir():
                walk(entry, rel + "/")
            elif entry.name.endswith(".java"):
                out.append((rel, entry.read_bytes()))

    walk(sources().joinpath(part), "")
    return out


def write_sources(dest: Path) -> None:
    """Write ``dest/agent/…`` and ``dest/library/…`` (the layout the build scripts expect)."""
    for part in PARTS:
        for rel, data in source_files(part):
            target = dest / part / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def _javac_files(source_dir: str, part: str) -> str:
    return " ".join(f"{source_dir}/{part}/{rel}" for rel, _ in source_files(part))


def agent_build_script(source_dir: str, out_dir: str, jdk_bin: str = "/opt/jdk/bin") -> str:
    """``sh -c`` script: ``source_dir/agent`` → ``out_dir/firecracer-crac-agent.jar`` with its manifest."""
    classes = f"{out_dir}/agent-classes"
    manifest = f"{out_dir}/agent.mf"
    return (f"set -e; rm -rf {classes}; {jdk_bin}/javac -encoding UTF-8 -d {classes} "
            f"{_javac_files(source_dir, 'agent')}; "
            f"printf 'Premain-Class: {PREMAIN_CLASS}\\n"
            f"Can-Redefine-Classes: false\\nCan-Retransform-Classes: false\\n' > {manifest}; "
            f"{jdk_bin}/jar --create --file {out_dir}/{AGENT_JAR} --manifest {manifest} -C {classes} .; "
            f"rm -rf {classes} {manifest}")


def library_build_script(source_dir: str, out_jar: str, jdk_bin: str = "/opt/jdk/bin") -> str:
    """``sh -c`` script: ``source_dir/library`` → the ``org.crac`` library jar ``out_jar``."""
    classes = f"{out_jar}.classes"
    return (f"set -e; rm -rf {classes}; {jdk_bin}/javac -encoding UTF-8 -d {classes} "
            f"{_javac_files(source_dir, 'library')}; "
            f"{jdk_bin}/jar --create --file {out_jar} -C {classes} .; rm -rf {classes}")


@dataclass(frozen=True)
class CracJars:
    """The two jars compiled on this host."""

    agent: Path
    library: Path


def compile_on_host(workdir: Path, jdk_bin: str | None = None) -> CracJars:
    """Compile the agent and the library with this host's JDK into ``workdir``; ``ImageError`` on failure."""
    javac = shutil.which("javac") if jdk_bin is None else str(Path(jdk_bin) / "javac")
    if javac is None:
        raise ImageError("compiling the CRaC agent needs javac (apt-get install openjdk-17-jdk-headless)")
    bin_dir = str(Path(javac).parent)
    src = workdir / "crac-source"
    write_sources(src)
    script = (agent_build_script(str(src), str(workdir), bin_dir) + "; "
              + library_build_script(str(src), str(workdir / LIBRARY_JAR), bin_dir))
    res = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip()[-2000:]
        raise ImageError(f"compiling the CRaC agent/library failed: {why}")
    return CracJars(workdir / AGENT_JAR, workdir / LIBRARY_JAR)
