"""Spring PetClinic on this host, with Debian's jars: compiled as the image build compiles it, started with
the JVM options of every variant of the bundled JVM-settings study, answering its pages, its JSON and its
write path. No VM: this is what CI runs without QEMU (scripts/setup-host.sh installs the jars).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firecracer.experiment.spec import jvm_example_text, load_spec, parse_spec
from firecracer.guest import agent
from firecracer.image import crac
from firecracer.image.apps import PETCLINIC, TINY, BundledApp, compile_on_host, missing_host_jars
from firecracer.image.check import http_fetch, page_checks

from .petclinic_endpoints import Client, check_errors, check_reads, check_writes

IMAGE_APPCDS = "/opt/app/app-cds.jsa"
OWNERS = 300  # small: quick to seed, still pages of owners


def _java() -> str:
    java = shutil.which("java")
    if java is None or shutil.which("javac") is None:
        pytest.skip("no JDK (apt-get install openjdk-17-jdk-headless; scripts/setup-host.sh)")
    return java


@dataclass
class Built:
    app: BundledApp
    jar: Path
    appcds: Path
    java: str

    def classpath(self) -> str:
        return ":".join(self.app.classpath(str(self.jar)))


def _build(app: BundledApp, workdir: Path) -> Built:
    java = _java()
    missing = missing_host_jars(app)
    if missing:
        pytest.skip(f"Debian jars missing: {', '.join(missing)} (apt-get install {' '.join(app.packages)}; "
                    "scripts/setup-host.sh)")
    jar = compile_on_host(app, workdir)
    appcds = workdir / "app-cds.jsa"
    # the image build's training run: the app walks its own pages (any unexpected status: exit 1)
    res = subprocess.run([java, f"-XX:ArchiveClassesAtExit={appcds}", "-Xlog:cds=off", "-cp",
                          ":".join(app.classpath(str(jar))), app.main, "--owners", str(OWNERS),
                          *app.train_args], capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "petclinic: training done" in res.stdout
    assert appcds.is_file()
    return Built(app, jar, appcds, java)


@pytest.fixture(scope="module")
def petclinic(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(PETCLINIC, tmp_path_factory.mktemp("petclinic"))


class App:
    """A started app JVM (own process group), stopped with SIGTERM then SIGKILL, always."""

    def __init__(self, built: Built, options: list[str], log: Path) -> None:
        self.log = log
        self.out = log.open("wb")
        self.proc = subprocess.Popen([built.java, *options, "-cp", built.classpath(), built.app.main,
                                      "--port", "0", "--host", "127.0.0.1", "--owners", str(OWNERS)],
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.port = self._wait_ready(120)

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"petclinic: ready port=(\d+) owners=(\d+) startup_ms=(\d+)", self.text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"not ready (exit {self.proc.returncode}): {self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str, bytes]:
        return http_fetch(self.port, path, timeout=60)

    def post(self, path: str, body: str, ctype: str = "application/json") -> tuple[int, str, bytes]:
        return http_fetch(self.port, path, timeout=60, method="POST", body=body.encode(), content_type=ctype)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.out.close()


Start = Callable[[Built, list[str]], App]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    apps: list[App] = []

    def _start(built: Built, options: list[str]) -> App:
        app = App(built, options, tmp_path / f"app{len(apps)}.log")
        apps.append(app)
        return app

    yield _start
    for a in apps:
        a.stop()


def _variants() -> list[tuple[str, list[str]]]:
    spec = parse_spec(jvm_example_text(Path("/vmlinux"), Path("/rootfs.ext4")))
    return [(v.name, list(v.jvm_options)) for v in spec.variants]


def test_the_study_has_the_five_variants_of_the_issue() -> None:
    assert _variants() == [
        ("default", []),
        ("thp-appcds", ["-XX:+UseTransparentHugePages", f"-XX:SharedArchiveFile={IMAGE_APPCDS}"]),
        ("serialgc", ["-XX:+UseSerialGC"]),
        ("c1-only", ["-XX:TieredStopAtLevel=1"]),
        ("no-cds", ["-Xshare:off"]),
    ]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("variant", [name for name, _ in _variants()])
def test_spring_context_starts_with_every_variant(variant: str, petclinic: Built, start: Start) -> None:
    """The study's JVM options (the image's AppCDS path mapped to the host's archive) start the context;
    class loading proves the archive is used (or, for -Xshare:off, that nothing is shared)."""
    options = [o.replace(IMAGE_APPCDS, str(petclinic.appcds)) for o in dict(_variants())[variant]]
    app = start(petclinic, [*options, "-Xlog:class+load=info"])
    checks = page_checks(app.port)
    assert all(c.ok for c in checks), [c.detail for c in checks]
    status, _, body = app.get("/vets")
    assert status == 200 and b"Helen Leary" in body and b"radiology" in body
    log = app.text()
    assert "petclinic: first response status=200" in log
    controller = re.search(r"io\.firecracer\.petclinic\.web\.OwnerController source: (.*)", log)
    assert controller is not None, log[-2000:]
    if "SharedArchiveFile" in " ".join(options):
        assert controller.group(1).startswith("shared objects file (top)"), controller.group(0)
    else:
        assert controller.group(1).startswith("file:"), controller.group(0)
    if "-Xshare:off" in options:
        assert "shared objects file" not in log
    else:
        assert "java.lang.Object source: shared objects file" in log  # the JDK's default CDS archive


@pytest.mark.timeout(300)
def test_endpoints_html_json_and_the_write_path(petclinic: Built, start: Start) -> None:
    app = start(petclinic, [])
    c = Client(app.port)
    check_reads(c, OWNERS)
    assert c.json("/api/stats")["owners"] == OWNERS
    check_writes(c)
    check_errors(c, OWNERS)
    assert json.loads(app.post("/api/owners", '{"firstName":"B","lastName":"C","address":"1 St",'
                               '"city":"X","telephone":"1"}')[2])["id"] == OWNERS + 2  # ids continue


@pytest.mark.timeout(300)
def test_owners_knob_and_seeded_data_are_deterministic(petclinic: Built, start: Start) -> None:
    """Same --owners, same database: two boots serve identical owner pages (same heap shape)."""
    a = start(petclinic, ["-XX:+UseSerialGC"])
    b = start(petclinic, [])
    for path in ("/api/owners/250", "/api/stats", "/owners?lastName=Ortega&page=1"):
        sa, sb = a.get(path), b.get(path)
        assert sa[0] == sb[0] == 200 and sa[2] == sb[2], path
    assert json.loads(a.get("/api/owners/250")[2])["pets"], "generated owners have pets"
    assert a.get(f"/api/owners/{OWNERS + 1}")[0] == 404


@pytest.mark.timeout(300)
def test_datasource_is_a_crac_resource_with_the_agent_and_appcds(petclinic: Built, start: Start,
                                                                 tmp_path: Path) -> None:
    """PetClinic ships the org.crac library; with the CRaC agent its pool is closed by the guest agent's
    before-snapshot and reopened by after-restore, and it answers before and after. The image's AppCDS
    archive (trained without the agent) still maps with the agent (-Xshare:on fails otherwise)."""
    assert crac.LIBRARY_JAR in petclinic.classpath()
    jars = crac.compile_on_host(tmp_path / "crac")
    notify = tmp_path / "notify"
    app = start(petclinic, ["-Xshare:on", f"-XX:SharedArchiveFile={petclinic.appcds}",
                            f"-javaagent:{jars.agent}", f"-D{crac.DIR_PROPERTY}={notify}"])
    assert app.get("/owners/1")[0] == 200
    cfg = agent.AgentConfig(hooks_dir=str(tmp_path / "hooks"), notify_dir=str(notify))
    r = agent.cmd_prepare(cfg, {"steps": ["hooks"]})
    assert r["ok"], r
    assert re.search(r"^crac: beforeCheckpoint datasource: closed the H2 pool", app.text(), re.M)
    r = agent.cmd_after_restore(cfg, {"steps": ["hooks"], "generation": 1})
    assert r["ok"], r
    lines = re.findall(r"^crac: (\w+) datasource", app.text(), re.M)
    assert lines == ["beforeCheckpoint", "afterRestore"]
    status, _, body = app.get("/owners/1")
    assert status == 200 and b"Franklin" in body  # the in-memory database outlived its pool


@pytest.mark.timeout(300)
def test_tiny_app_still_builds_and_answers(tmp_path: Path, start: Start) -> None:
    built = _build(TINY, tmp_path)
    app = start(built, [f"-XX:SharedArchiveFile={built.appcds}"])
    assert all(c.ok for c in page_checks(app.port))


def test_bundled_study_spec_validates_as_shipped() -> None:
    from firecracer.experiment.spec import jvm_example_spec_path

    spec = load_spec(jvm_example_spec_path())
    assert spec.backend == "jvm" and [s.name for s in spec.strategies] == ["ondemand", "prefetch"]
    # >= 1792 MiB and 2 vCPUs: a "server-class machine", so the default is G1 and 'serialgc' differs
    assert spec.workload.path == "/owners/1" and spec.guest.mem_size_mib >= 1792 and spec.guest.vcpus >= 2


def test_setup_host_installs_the_jars() -> None:
    """CI runs scripts/setup-host.sh: it must install every package PetClinic compiles against."""
    script = (Path(__file__).parents[2] / "scripts" / "setup-host.sh").read_text()
    assert all(re.search(rf"\b{re.escape(p)}\b", script) for p in PETCLINIC.packages), PETCLINIC.packages
