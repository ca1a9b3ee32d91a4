"""The workloads bundled with the image: Spring PetClinic (the default) and the tiny JDK-only service.

Both are Java sources under ``workload/<name>/`` (``src/`` and ``resources/``), compiled with ``javac``
when the root file system is built, against jars that Debian packages (``/usr/share/java``). The same
description compiles and runs them on a host with those packages (tests do, to start the Spring context
with every bundled JVM option set without booting a VM).

PetClinic uses CRaC's ``org.crac`` API (it closes and reopens its database pool around a checkpoint): it
compiles against firecracer's ``org.crac``-compatible library (:mod:`firecracer.image.crac`) and ships that
jar beside its own, as an application ships the real ``org.crac`` jar.

Both print the lines the tools wait for: ``petclinic: ready port=N … uptime_ms=N`` when the HTTP port
accepts connections, and ``petclinic: first response status=N uptime_ms=N`` after the first response.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from firecracer.image import crac
from firecracer.image._build import ImageError, missing_packages

JAVA_LIB = "/usr/share/java"


@dataclass(frozen=True)
class BundledApp:
    """One bundled workload: where its sources are, what it needs, how it is run and trained."""

    name: str
    main: str
    args: tuple[str, ...]
    #: Debian packages with the jars it compiles and runs against (installed into the image)
    packages: tuple[str, ...]
    #: jar names in /usr/share/java, in classpath order (Debian's unversioned symlinks)
    jars: tuple[str, ...]
    javac_options: tuple[str, ...]
    #: arguments of the AppCDS training run (the app walks its own pages and exits)
    train_args: tuple[str, ...]
    summary: str
    #: compiles against and ships the org.crac library (``org.crac.jar`` beside the app's jar)
    uses_crac: bool = False

    def sources(self) -> Traversable:
        return resources.files("firecracer.image").joinpath("workload", self.name)

    def jar_name(self) -> str:
        return f"{self.name}.jar"

    def library_jars(self, root: str = JAVA_LIB) -> list[str]:
        """Absolute paths of the Debian jars on its classpath (``root`` = /usr/share/java)."""
        return [f"{root}/{j}" for j in self.jars]

    def crac_jar(self, app_jar: str) -> str | None:
        """The org.crac library jar it ships (beside ``app_jar``), or None."""
        return str(Path(app_jar).parent / crac.LIBRARY_JAR) if self.uses_crac else None

    def classpath(self, app_jar: str) -> list[str]:
        """The runtime classpath: the app's jar first, then its org.crac jar, then the Debian jars."""
        lib = self.crac_jar(app_jar)
        return [app_jar, *([lib] if lib else []), *self.library_jars()]


PETCLINIC = BundledApp(
    name="petclinic",
    main="io.firecracer.petclinic.PetClinicApplication",
    args=("--port", "8080"),
    packages=("libspring-web-servlet-java", "libspring-jdbc-java", "libspring-transaction-java",
              "libspring-context-java", "libjetty9-java", "libservlet-api-java", "libh2-java",
              "libjackson2-databind-java"),
    jars=("spring3-core.jar", "spring3-beans.jar", "spring3-context.jar", "spring3-aop.jar",
          "spring3-expression.jar", "spring3-web.jar", "spring3-web.servlet.jar", "spring3-jdbc.jar",
          "spring3-transaction.jar", "commons-logging.jar", "servlet-api.jar", "jetty9-server.jar",
          "jetty9-servlet.jar", "jetty9-http.jar", "jetty9-io.jar", "jetty9-util.jar", "jetty9-security.jar",
          "h2.jar", "jackson-databind.jar", "jackson-core.jar", "jackson-annotations.jar"),
    # -parameters: Spring names @PathVariable/@RequestParam/constructor arguments from the class files
    javac_options=("-parameters", "-encoding", "UTF-8"),
    train_args=("--train", "5"),
    summary="Spring PetClinic on Debian's Spring 4.3 MVC + JDBC, Jetty 9.4, H2 and Jackson",
    uses_crac=True,
)

TINY = BundledApp(
    name="tiny",
    main="io.firecracer.tiny.PetClinic",
    args=("--port", "8080"),
    packages=(),
    jars=(),
    javac_options=("-encoding", "UTF-8"),
    train_args=("--train", "20"),
    summary="a small PetClinic-like service on the JDK's own HttpServer (no libraries; quick tests)",
)

BUNDLED: dict[str, BundledApp] = {a.name: a for a in (PETCLINIC, TINY)}
DEFAULT_APP = PETCLINIC.name


def source_files(app: BundledApp) -> list[tuple[str, bytes]]:
    """(path relative to the app's directory, bytes) of every source and resource file, sorted."""
    out: list[tuple[str, bytes]] = []

    def walk(node: Traversable, prefix: str) -> None:
        for entry in sorted(node.iterdir(), key=lambda e: e.name):
            if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
                continue
            rel = f"{prefix}{entry.name}"
            if entry.is_dir():
                walk(entry, rel + "/")
            else:
                out.append((rel, entry.read_bytes()))

    walk(app.sources(), "")
    return out


def build_script(app: BundledApp, source_dir: str, out_dir: str, jdk_bin: str = "/opt/jdk/bin",
                 lib_root: str = JAVA_LIB, crac_source_dir: str | None = None) -> str:
    """A ``sh -c`` script compiling the app's sources into ``out_dir/<name>.jar`` (run in the image).

    An app that uses CRaC first gets ``out_dir/org.crac.jar`` built from ``crac_source_dir`` (the layout
    of :func:`firecracer.image.crac.write_sources`) and compiles against it.
    """
    sources = " ".join(sorted(f"{source_dir}/{rel}" for rel, _ in source_files(app) if rel.endswith(".java")))
    first = ""
    jars = app.library_jars(lib_root)
    if app.uses_crac:
        if crac_source_dir is None:
            raise ImageError(f"{app.name} uses org.crac: its build needs the CRaC sources (crac_source_dir)")
        lib = f"{out_dir}/{crac.LIBRARY_JAR}"
        first = crac.library_build_script(crac_source_dir, lib, jdk_bin) + "; "
        jars = [lib, *jars]
    cp = ":".join(jars)
    opts = " ".join(app.javac_options)
    return (first + f"set -e; cd {out_dir}; rm -rf classes; {jdk_bin}/javac {opts}"
            + (f" -cp {cp}" if cp else "") + f" -d classes {sources}; "
            f"{jdk_bin}/jar --create --file {app.jar_name()} --main-class {app.main} -C classes . "
            f"-C {source_dir}/resources .; rm -rf classes")


def missing_host_jars(app: BundledApp, lib_root: str = JAVA_LIB) -> list[str]:
    """The app's library jars absent on this host (empty: it can be compiled and run here)."""
    return [j for j in app.library_jars(lib_root) if not Path(j).exists()]


def compile_on_host(app: BundledApp, workdir: Path, jdk_bin: str | None = None) -> Path:
    """Compile the app with the host's JDK and Debian jars into ``workdir/<name>.jar``; returns the jar.

    An app that uses CRaC also gets ``workdir/org.crac.jar`` (on :meth:`BundledApp.classpath`).

    ``ImageError`` names the missing Debian packages or the javac error.
    """
    missing = missing_host_jars(app)
    if missing:
        need = " ".join(missing_packages(app.packages)) or " ".join(app.packages)
        raise ImageError(f"{app.name} needs the Debian jars {', '.join(missing)} (apt-get install {need})")
    javac = shutil.which("javac") if jdk_bin is None else str(Path(jdk_bin) / "javac")
    if javac is None:
        raise ImageError(f"compiling {app.name} needs javac (apt-get install openjdk-17-jdk-headless)")
    src = workdir / "source"
    for rel, data in source_files(app):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    crac_src = workdir / "crac-source"
    if app.uses_crac:
        crac.write_sources(crac_src)
    script = build_script(app, str(src), str(workdir), str(Path(javac).parent),
                          crac_source_dir=str(crac_src) if app.uses_crac else None)
    res = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise ImageError(f"compiling {app.name} failed: {(res.stderr or res.stdout).strip()[-2000:]}")
    return workdir / app.jar_name()
