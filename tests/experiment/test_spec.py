"""Spec parsing: the bundled example, and every class of mistake as one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from firecracer.errors import FormatError
from firecracer.experiment.plan import plan_runs
from firecracer.experiment.spec import (
    example_spec_path,
    example_spec_text,
    load_spec,
    parse_spec,
    parse_strategy,
)

GOOD = """
[study]
name = "s"
backend = "probe"
strategies = ["file", "ondemand"]

[[variant]]
name = "a"
working_set_pages = 100
"""


def test_bundled_example_is_probe_two_variants_four_strategies_three_reps() -> None:
    spec = load_spec(example_spec_path())
    assert spec.backend == "probe"
    assert len(spec.variants) == 2
    assert [s.name for s in spec.strategies] == ["file", "ondemand", "fault-around:16", "prefetch"]
    assert spec.repetitions == 3
    assert all(v.working_set_pages for v in spec.variants)


@pytest.mark.parametrize("repetitions", [None, 1, 2, 12])
def test_example_text_says_what_it_sets(repetitions: int | None) -> None:
    """The header's "x N repetitions = M runs" agrees with the value and the plan (the demo runs a 1-rep
    copy whose comment still said "three repetitions = 24 runs")."""
    import re

    text = example_spec_text(repetitions)
    spec = parse_spec(text)
    m = re.search(r"x (\w+) repetitions? = (\d+) runs", text)
    assert m, text[:300]
    words = {"one": 1, "two": 2, "three": 3}
    assert words.get(m.group(1), int(m.group(1)) if m.group(1).isdigit() else -1) == spec.repetitions
    assert int(m.group(2)) == len(plan_runs(spec))
    assert spec.repetitions == (repetitions or 3)


def test_defaults_and_paths_relative_to_the_spec(tmp_path: Path) -> None:
    from firecracer.uffd.trace import FLAG_FAULTING, make_trace, save_trace

    p = tmp_path / "sub" / "s.toml"
    (p.parent / "t").mkdir(parents=True)
    save_trace(make_trace({"t_ns": [0], "hva": [0], "file_off": [1 << 24], "gpa": [1 << 24],
                           "flags": [FLAG_FAULTING], "action": [0], "fault": [0], "service_ns": [0]}, {}),
               p.parent / "t" / "trace.npz")
    p.write_text(GOOD.replace('working_set_pages = 100', 'trace = "t/trace.npz"'))
    spec = load_spec(p)
    assert spec.repetitions == 3 and spec.guest.mem_size_mib == 128
    assert spec.variants[0].trace == p.parent / "t" / "trace.npz"


def test_digest_ignores_comments_and_binary_location_but_not_content() -> None:
    a = parse_spec(GOOD)
    b = parse_spec("# a comment\n" + GOOD)
    c = parse_spec(GOOD.replace("100", "101"))
    d = parse_spec(GOOD.replace("[study]", '[study]\nfirecracker = "/opt/fc"'))
    assert a.digest == b.digest == d.digest != c.digest


@pytest.mark.parametrize(("text", "key", "line"), [
    (GOOD.replace('name = "s"', 'name = "s'), "not valid TOML", 3),
    (GOOD.replace('backend = "probe"', 'backend = "qemu"'), "study.backend", 4),
    (GOOD.replace('"ondemand"]', '"ondemand", "lazy"]'), "study.strategies[2]", 5),
    (GOOD.replace('"ondemand"]', '"fault-around:3"]'), "study.strategies[1]", 5),
    (GOOD.replace('"ondemand"]', '"file"]'), "listed twice", 5),
    (GOOD.replace('strategies = ["file", "ondemand"]', 'strategies = []'), "study.strategies", 5),
    (GOOD + "repetitons = 3\n", "variant[0].repetitons: unknown key", 10),
    (GOOD.replace("working_set_pages = 100", ""), "variant[0].working_set_pages", 7),
    (GOOD.replace("[study]", "[study]\nrepetitions = 0"), "study.repetitions: must be between", 3),
    (GOOD.replace("[study]", "[study]\nrepetitions = 'x'"), "study.repetitions: must be an integer", 3),
    (GOOD.replace("working_set_pages = 100", "working_set_pages = 100000"),
     "variant[0].working_set_pages", 9),
    (GOOD + '\n[[variant]]\nname = "a"\nworking_set_pages = 5\n', "defined twice", 12),
    (GOOD.replace('name = "a"', 'name = "a b"'), "not a valid name", 0),
    (GOOD + "\n[guestt]\n", "guestt: unknown table", 0),
    (GOOD.replace('backend = "probe"', 'backend = "jvm"'), "variant[0].working_set_pages", 9),
    (GOOD + 'huge_pages = "1G"\n', "variant[0].huge_pages: '1G' is not one of None, 2M", 10),
    (GOOD.replace('"file", "ondemand"', '"file"') + 'huge_pages = "2M"\n', "restore only through Uffd", 10),
    (GOOD.replace('backend = "probe"', 'backend = "host-replay"') + 'huge_pages = "2M"\n',
     "need a Firecracker backend", 10),
    (GOOD + 'huge_pages = "2M"\n[guest]\nmem_size_mib = 127\n', "not a multiple of 2 MiB", 10),
])
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, key: str, line: int) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(FormatError) as exc:
        load_spec(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)), msg
    assert key in msg, msg
    assert "\n" not in msg
    if line:
        assert exc.value.line == line, msg


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_jvm_backend_needs_the_image() -> None:
    text = GOOD.replace('backend = "probe"', 'backend = "jvm"').replace(
        "working_set_pages = 100", 'jvm_options = ["-XX:+UseTransparentHugePages"]')
    with pytest.raises(FormatError, match=r"guest\.kernel"):
        parse_spec(text)
    spec = parse_spec(text + '[guest]\nkernel = "/k"\nrootfs = "/r"\n')
    assert spec.variants[0].jvm_options == ("-XX:+UseTransparentHugePages",)


def test_huge_pages_per_variant_and_file_not_planned_for_them() -> None:
    from firecracer.experiment.plan import plan_runs

    text = GOOD + '\n[[variant]]\nname = "a2m"\nworking_set_pages = 100\nhuge_pages = "2M"\n'
    spec = parse_spec(text)
    assert [v.huge_pages for v in spec.variants] == [None, "2M"]
    assert spec.variant("a2m").as_dict()["huge_pages"] == "2M"
    assert "huge_pages" not in spec.variants[0].as_dict()
    assert parse_spec(GOOD + 'huge_pages = "None"\n').digest == parse_spec(GOOD).digest  # the default
    runs = plan_runs(spec)
    assert [r.run_id for r in runs if r.repetition == 1] == ["a.file.r1", "a.ondemand.r1", "a2m.ondemand.r1"]


def test_strategy_grammar() -> None:
    assert parse_strategy("fault-around:16").around_pages == 16
    assert parse_strategy("fault-around:16").slug == "fault-around16"
    assert not parse_strategy("file").uses_uffd
    for bad in ("fault-around:1", "fault-around:1024", "prefetch:x", "FILE"):
        with pytest.raises(ValueError):
            parse_strategy(bad)


def test_trace_kinds_and_orders() -> None:
    bg = parse_strategy("prefetch-background@touch")
    assert bg.uses_uffd and bg.needs_trace and bg.kind == "prefetch-background"
    assert bg.slug == "prefetch-background-touch"
    assert bg.with_trace(Path("/t.npz")) == "prefetch-background@touch:/t.npz"
    ra = parse_strategy("readahead-background")
    assert ra.is_readahead and ra.needs_trace and not ra.uses_uffd
    od = parse_strategy("ondemand")
    assert not od.needs_trace and od.with_trace(Path("/t")) == "ondemand"
    z = parse_strategy("prefetch-background@file-zstd")
    assert z.compressed and z.uses_uffd and z.kind == "prefetch-background" and z.slug == \
        "prefetch-background-file-zstd"
    assert z.with_trace(Path("/t.npz")) == "prefetch-background@file:/t.npz"
    assert parse_strategy("fault-around:16-zstd").around_pages == 16
    assert parse_strategy("ondemand-zstd").with_trace(Path("/t")) == "ondemand"
    for bad in ("prefetch@random", "readahead@touch", "prefetch-background@", "eager@file", "file-zstd",
                "readahead-zstd", "criu-zstd"):
        with pytest.raises(ValueError, match="ORDER: runs, touch, file"):
            parse_strategy(bad)


JVM = GOOD.replace('backend = "probe"', 'backend = "jvm"').replace(
    "working_set_pages = 100", "") + '[guest]\nkernel = "/k"\nrootfs = "/r"\n'


def test_several_first_requests_are_a_dimension_of_the_matrix() -> None:
    text = JVM + ('[workload]\npaths = ["/owners/1", "GET /vets.json", '
                  '"POST /owners/new firstName=A&lastName=B"]\n')
    spec = parse_spec(text)
    assert [str(q) for q in spec.workload.requests] == ["GET /owners/1", "GET /vets.json",
                                                        "POST /owners/new firstName=A&lastName=B"]
    assert spec.workload.path == "/owners/1"
    runs = plan_runs(spec)
    assert len(runs) == 3 * 2 * 3  # requests x strategies x repetitions
    assert [r.run_id for r in runs[:3]] == ["a.file.get-owners-1.r1", "a.file.get-vets.json.r1",
                                            "a.file.post-owners-new.r1"]
    assert spec.as_dict()["workload"]["paths"][2] == "POST /owners/new firstName=A&lastName=B"
    # one path, as before: run ids and the digest of an existing study stay what they were
    one = parse_spec(JVM + '[workload]\npath = "/owners"\n')
    assert [r.run_id for r in plan_runs(one)][:1] == ["a.file.r1"]
    assert "paths" not in one.as_dict()["workload"]
    assert parse_spec(JVM + '[workload]\npaths = ["/owners"]\n').digest == one.digest


@pytest.mark.parametrize(("extra", "key"), [
    ('[workload]\npath = "/"\npaths = ["/a"]\n', "workload.paths: give path or paths, not both"),
    ('[workload]\npaths = []\n', "workload.paths: must list at least one request"),
    ('[workload]\npaths = ["owners"]\n', "workload.paths[0]: 'owners': expected [METHOD] /PATH [BODY]"),
    ('[workload]\npaths = ["GET /a x=1"]\n', "workload.paths[0]: 'GET /a x=1': a GET request has no body"),
    ('[workload]\npaths = ["/a", "GET /a"]\n', "workload.paths[1]: 'GET /a' is listed twice"),
    ('[workload]\npaths = ["/a/b", "/a-b"]\n', "workload.paths[1]: '/a-b' would share its run ids"),
])
def test_request_mistakes_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(JVM + extra)
    with pytest.raises(FormatError) as exc:
        load_spec(p)
    assert str(exc.value).startswith(str(p)) and key in str(exc.value), str(exc.value)


def test_several_requests_need_the_jvm_backend_and_criu_only_gets() -> None:
    with pytest.raises(FormatError, match="several first requests need the jvm backend"):
        parse_spec(GOOD + '[workload]\npaths = ["/a", "/b"]\n')
    crac = JVM.replace('"file", "ondemand"', '"ondemand", "criu"')
    parse_spec(crac + '[workload]\npaths = ["/a", "/b"]\n')
    with pytest.raises(FormatError, match=r"POST /new: process restores \(criu\) answer GET requests only"):
        parse_spec(crac + '[workload]\npaths = ["/a", "POST /new"]\n')
    with pytest.raises(FormatError, match="readahead: host-replay has no Firecracker"):
        parse_spec(GOOD.replace('backend = "probe"', 'backend = "host-replay"')
                   .replace('"file", "ondemand"', '"file", "readahead"'))


def test_warmup_requests_per_variant_sweep() -> None:
    text = JVM.replace('name = "a"\n', 'name = "k0"\nwarmup_requests = 0\n') + \
        '\n[[variant]]\nname = "k1000"\nwarmup_requests = 1000\n'
    spec = parse_spec(text)
    assert [v.warmup_requests for v in spec.variants] == [0, 1000]
    assert spec.variant("k0").as_dict()["warmup_requests"] == 0
    assert "warmup_requests" not in parse_spec(JVM).variants[0].as_dict()  # the digest of old studies stays
    with pytest.raises(FormatError, match="warm-up requests need the jvm backend"):
        parse_spec(GOOD + "warmup_requests = 3\n")
    with pytest.raises(FormatError, match=r"variant\[0\].warmup_requests: must be between"):
        parse_spec(JVM.replace('name = "a"\n', 'name = "a"\nwarmup_requests = -1\n'))
