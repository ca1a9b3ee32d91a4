"""The guest's CRIU helpers that do not need CRIU: its logs read, its failures quoted, names checked; the
init's CRIU-ready JVM. (CRIU itself runs only in our guest: tests/guestvm/test_crac.py, in the lab.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firecracer.guest import crac
from firecracer.guest.agent import AgentConfig, handle_request
from firecracer.image.guest_init import init

# what `criu lazy-pages -v4` writes (criu/uffd.c: lp_debug prefixes "uffd: PID-FD: ")
LAZY_LOG = """\
(00.000012) Version: 3.17.1 (gitid 0)
(00.001200) uffd: Waiting for incoming connections on lazy-pages.socket
(00.210000) uffd: 20001-5: Found 41234 pages to be handled by UFFD
(00.300100) uffd: 20001-5: #PF at 0x7f1200001000
(00.300150) uffd: 20001-5: uffd_copy: 0x7f1200001000/4096
(00.300200) uffd: 20001-5: #PF at 0x7f1200001000
(00.310000) uffd: 20001-5: #PF at 0x7f1300000000
(00.310050) uffd: 20001-5: zero page at 0x7f1300000000
(00.900000) uffd: 20001-5: #PF at 0x7f1200005000
(01.950000) uffd: Start handling remaining pages
(01.960000) uffd: 20001-5: uffd_copy: 0x7f1200010000/65536
(02.500000) uffd: 20001-5: #PF at 0x7f1200009000
(09.000000) uffd: 20001-5: UFFD transferred pages: (41234/41234)
"""


def test_lazy_log_faults_in_order_without_repeats_with_zero_fills_and_the_background_push() -> None:
    f = crac.parse_lazy_log(LAZY_LOG)
    assert f.addr == [0x7F1200001000, 0x7F1300000000, 0x7F1200005000, 0x7F1200009000]
    assert f.t_s == [0.3001, 0.31, 0.9, 2.5]
    assert f.zero == [False, True, False, False]
    assert f.pid == [20001] * 4
    assert f.background_start_s == 1.95
    assert f.transferred == (41234, 41234)
    cut = f.until(1.0)
    assert cut.addr == f.addr[:3] and cut.background_start_s == 1.95
    assert json.loads(json.dumps(cut.to_json()))["zero"] == [False, True, False]


def test_criu_reason_quotes_the_first_error_not_its_consequences(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("(00.100000) Dumping pstree (pid: 20001)\n"
                   "(00.200000) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using "
                   "--tcp-established option.\n"
                   "(00.200100) Error (criu/cr-dump.c:1641): Dump files (pid: 20001) failed with -1\n"
                   "(00.300000) Error (criu/cr-dump.c:2059): Dumping FAILED.\n")
    why = crac.criu_reason(log)
    assert why.startswith("inet: Connected TCP socket, consider using --tcp-established option. "
                          "(criu/sk-inet.c:199)")
    assert "Dumping FAILED" not in why and "\n" not in why
    assert "no log" in crac.criu_reason(tmp_path / "missing.log")
    (tmp_path / "quiet.log").write_text("(00.1) something\n(00.2) the last words\n")
    assert crac.criu_reason(tmp_path / "quiet.log") == "(00.2) the last words"


@pytest.mark.parametrize("name", ["", "../etc", "a b", "x" * 65, "-x"])
def test_checkpoint_names_cannot_leave_the_images_directory(name: str) -> None:
    with pytest.raises(crac.CracError, match="checkpoint name"):
        crac.check_name(name)


def _call(cmd: str, args: dict[str, object]) -> dict[str, object]:
    reply: dict[str, object] = json.loads(handle_request(AgentConfig(), json.dumps(
        {"cmd": cmd, "args": args}).encode() + b"\n"))
    return reply


def test_agent_refuses_bad_crac_requests_in_one_line() -> None:
    r = _call("restore", {"name": "../../x"})
    assert r["ok"] is False and "checkpoint name" in r["error"]["message"]  # type: ignore[index]
    r = _call("checkpoint", {"pid": 1 << 30})
    assert r["ok"] is False and r["error"]["code"] == "bad-request"  # type: ignore[index]
    r = _call("checkpoint", {"pid": 4_000_000})
    assert r["ok"] is False and "no such process" in r["error"]["message"]  # type: ignore[index]


@pytest.mark.skipif(shutil.which("criu") is not None, reason="criu is installed on this host")
def test_agent_says_criu_is_missing() -> None:
    r = _call("criu-check", {})
    assert r["ok"] is False
    err = r["error"]
    assert isinstance(err, dict) and err["code"] == "criu-missing" and "rootfs" in err["message"]


def test_init_starts_a_criu_ready_jvm_only_when_asked() -> None:
    app = {"classpath": ["/opt/app/app.jar"], "main": "Main"}
    plain = init.InitConfig.from_env({"FC_NMT": "detail"})
    ready = init.InitConfig.from_env({"FC_NMT": "detail", "FC_CRAC": "on"})
    assert not plain.crac and ready.crac
    assert "-XX:-UsePerfData" not in init.java_argv(plain, app)
    argv = init.java_argv(ready, app)
    assert argv[1] == "-XX:-UsePerfData"  # first, so a user's option can be seen overriding it
    assert init.JVM_LOG == crac.JVM_LOG and init.CHECKPOINTED == crac.CHECKPOINTED


def test_log_tail_copies_what_is_appended_and_skips_a_restored_copy(
        tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    log = tmp_path / "jvm.log"
    fresh = init.LogTail(log)
    fresh.copy()  # no file yet: nothing, no error
    log.write_bytes(b"started\n")
    fresh.copy()
    with log.open("ab") as fh:
        fh.write(b"ready\n")
    fresh.copy()
    restored = init.LogTail(log, skip_existing=True)
    restored.copy()  # the checkpoint's old lines were shown in their own boot
    with log.open("ab") as fh:
        fh.write(b"after restore\n")
    restored.copy()
    assert capfdbinary.readouterr().out == b"started\nready\nafter restore\n"
