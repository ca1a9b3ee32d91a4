"""A study spec: one TOML file naming the backend, the variants, the restore strategies and repetitions.

Parsed with :mod:`tomllib` and validated up front, so a typo fails before any VM boots, as one line
naming the file and the key (``FormatError(path, line, why)``). The validated spec keeps its source text:
the results store records it with every run, so a result can always be traced back to what produced it.

Layout (see ``docs/experiment.md`` for every key)::

    [study]
    name = "probe-working-sets"
    backend = "probe"                 # probe | jvm | host-replay
    repetitions = 3
    strategies = ["file", "ondemand", "fault-around:16", "prefetch"]

    [guest]
    mem_size_mib = 128

    [[variant]]
    name = "ws-2k"
    working_set_pages = 2048          # probe / host-replay: a seeded scattered page set
    huge_pages = "2M"                 # probe / jvm: guest memory in 2 MiB hugetlbfs pages (default 4 KiB)
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firecracer.errors import FirecracerError, FormatError
from firecracer.experiment.workingset import from_trace, max_scattered, scatter_range
from firecracer.fsio import read_text
from firecracer.vmm.probe import min_mem_mib

BACKENDS = ("probe", "jvm", "host-replay")
"""``probe``: the probe guest under Firecracker (any KVM host, PVM included); ``jvm``: the JVM image
under Firecracker (bare-metal KVM hosts); ``host-replay``: no VM at all, the working set replayed
against a memory file on the host (tests and dry runs of the machinery; never a VM result)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_STRATEGY_RE = re.compile(r"^(?:(?:file|readahead|readahead-background|criu|criu-lazy)"
                          r"|(?:ondemand|eager|(?:prefetch|prefetch-background)(?:@(?:runs|touch|file))?"
                          r"|fault-around:(\d+))(?:-zstd)?)$")
#: a page-server strategy with this suffix serves the variant's compressed memory file (mem.fcz)
COMPRESSED_SUFFIX = "-zstd"
#: strategies that replay the working set recorded by a first (ondemand) restore of the variant
TRACE_KINDS = ("prefetch", "prefetch-background", "readahead", "readahead-background")
#: File-backend strategies that read the recorded working set into the host page cache first
READAHEAD_KINDS = ("readahead", "readahead-background")
#: restore kinds that bring back the JVM *process* with CRIU in a fresh boot (jvm backend; docs/crac.md)
PROCESS_KINDS = ("criu", "criu-lazy")

_STUDY_KEYS = {"name", "description", "backend", "repetitions", "strategies", "timeout_s", "firecracker",
               "keep_snapshots", "viewer", "cluster"}
_GUEST_KEYS = {"mem_size_mib", "vcpus", "kernel", "rootfs", "boot_args"}
_WORKLOAD_KEYS = {"port", "path", "paths", "warmup_requests", "prepare", "ready_timeout_s"}
_VARIANT_KEYS = {"name", "description", "working_set_pages", "mean_run_pages", "seed", "trace",
                 "jvm_options", "huge_pages", "rootfs", "warmup_requests"}
HUGE_PAGES = ("None", "2M")
"""``huge_pages`` values, as Firecracker's ``machine-config`` takes them: ``None`` (4 KiB pages, the default)
or ``2M`` (2 MiB hugetlbfs pages; such snapshots restore only through Uffd, so ``file`` is not run for
them: see :func:`firecracer.experiment.plan.plan_runs`)."""


@dataclass(frozen=True)
class Strategy:
    """A restore strategy: ``file`` (Firecracker's File backend), ``readahead[-background]`` (the File
    backend with the recorded working set read into the page cache first, or racing the vCPUs), a uffd
    page-server strategy, or a process restore of the JVM alone (``criu``, ``criu-lazy``: CRIU in a fresh
    boot, jvm backend only)."""

    name: str

    @property
    def uses_uffd(self) -> bool:
        return self.name != "file" and not self.is_process and not self.is_readahead

    @property
    def is_process(self) -> bool:
        """A CRIU restore of the JVM process (no VM snapshot involved)."""
        return self.name in PROCESS_KINDS

    @property
    def is_readahead(self) -> bool:
        """The File backend with the recorded working set read into the host page cache."""
        return self.name in READAHEAD_KINDS

    @property
    def compressed(self) -> bool:
        """Served from the variant's compressed snapshot (``ondemand-zstd``: ``vm compress``'s mem.fcz)."""
        return self.name.endswith(COMPRESSED_SUFFIX)

    @property
    def server_name(self) -> str:
        """The page server's strategy (no ``-zstd``: the memory file says it is compressed)."""
        return self.name.removesuffix(COMPRESSED_SUFFIX)

    @property
    def kind(self) -> str:
        """The name without ``@ORDER`` and ``-zstd`` (``prefetch-background@touch-zstd`` →
        ``prefetch-background``)."""
        return self.server_name.partition("@")[0]

    @property
    def needs_trace(self) -> bool:
        """It replays the trace a first ondemand restore of the variant records (REAP's record phase)."""
        return self.kind in TRACE_KINDS

    def with_trace(self, trace: Path) -> str:
        """The page-server (or readahead) strategy string for this study strategy and a recorded trace."""
        return f"{self.server_name}:{trace}" if self.needs_trace else self.server_name

    @property
    def slug(self) -> str:
        """The name as it appears in run ids and directory names (no ``:`` or ``@``)."""
        return self.name.replace(":", "").replace("@", "-")

    @property
    def around_pages(self) -> int | None:
        """N of ``fault-around:N``, else None."""
        return int(self.server_name.split(":", 1)[1]) if self.name.startswith("fault-around:") else None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Variant:
    """One configuration of the guest: a working set (probe) or a JVM option set (jvm)."""

    name: str
    description: str = ""
    working_set_pages: int | None = None
    mean_run_pages: float = 2.5
    seed: int = 0
    trace: Path | None = None
    jvm_options: tuple[str, ...] = ()
    huge_pages: str | None = None  # "2M": guest memory in 2 MiB hugetlbfs pages
    rootfs: Path | None = None  # jvm: this variant's own image (e.g. another JDK); else guest.rootfs
    warmup_requests: int | None = None  # jvm: requests before the snapshot (else workload.warmup_requests)

    @property
    def huge(self) -> bool:
        """Guest memory is backed by 2 MiB pages."""
        return self.huge_pages == "2M"

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        if self.working_set_pages is not None:
            d.update(working_set_pages=self.working_set_pages, mean_run_pages=self.mean_run_pages,
                     seed=self.seed)
        if self.trace is not None:
            d["trace"] = str(self.trace)
        if self.jvm_options:
            d["jvm_options"] = list(self.jvm_options)
        if self.huge:  # only when set, so the digest of every existing study stays what it was
            d["huge_pages"] = self.huge_pages
        if self.rootfs is not None:
            d["rootfs"] = str(self.rootfs)
        if self.warmup_requests is not None:
            d["warmup_requests"] = self.warmup_requests
        return d


@dataclass(frozen=True)
class Guest:
    """The microVM: memory size and vCPUs; kernel/rootfs/boot args only for the jvm backend."""

    mem_size_mib: int = 128
    vcpus: int = 1
    kernel: Path | None = None
    rootfs: Path | None = None
    boot_args: str = ""


_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")


@dataclass(frozen=True)
class Request:
    """One HTTP request of the workload: ``[METHOD] PATH [BODY]`` (a body is sent form-encoded)."""

    method: str = "GET"
    path: str = "/"
    body: str = ""

    @classmethod
    def parse(cls, text: str) -> Request:
        """``/owners/1``, ``GET /vets.json``, ``POST /owners/new firstName=Ada&lastName=L``; ValueError."""
        parts = text.strip().split(None, 2)
        if not parts:
            raise ValueError("an empty request")
        method = "GET"
        if parts[0].upper() in _METHODS:
            method = parts.pop(0).upper()
        if not parts or not parts[0].startswith("/"):
            raise ValueError(f"{text!r}: expected [METHOD] /PATH [BODY] (METHOD one of "
                             f"{', '.join(_METHODS)})")
        body = parts[1] if len(parts) > 1 else ""
        if body and method in ("GET", "HEAD"):
            raise ValueError(f"{text!r}: a {method} request has no body")
        return cls(method, parts[0], body)

    def __str__(self) -> str:
        return " ".join(x for x in (self.method, self.path, self.body) if x)

    @property
    def slug(self) -> str:
        """For run ids: ``get-vets.json``, ``post-owners-new``."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.method.lower()}{self.path}").strip("-")[:48]


@dataclass(frozen=True)
class Workload:
    """How to drive the guest (jvm backend): readiness, warm-up, prepare hooks, the first request(s).

    ``requests`` (``workload.paths``; else ``workload.path``): each restore answers one of them first, so a
    study can ask whether the trace recorded on one request serves another; warm-up cycles through them.
    """

    port: int = 8080
    path: str = "/"
    warmup_requests: int = 20
    prepare: tuple[str, ...] = ("gc", "drop-caches")
    ready_timeout_s: float = 60.0
    requests: tuple[Request, ...] = (Request(),)


@dataclass(frozen=True)
class Spec:
    """A validated study spec; ``text`` is the TOML it came from, ``digest`` its SHA-256 prefix."""

    path: Path
    text: str
    name: str
    backend: str
    repetitions: int
    strategies: tuple[Strategy, ...]
    variants: tuple[Variant, ...]
    guest: Guest = field(default_factory=Guest)
    workload: Workload = field(default_factory=Workload)
    description: str = ""
    timeout_s: float = 120.0
    firecracker: str | None = None
    keep_snapshots: bool = True
    viewer: bool = True
    cluster: str | None = None  # a Ray cluster's address (where, not what: not in as_dict or the digest)

    @property
    def digest(self) -> str:
        """Identity of the study: the parsed content (not formatting), so comments may change freely.

        Where the Firecracker binary lives is a detail of each host (``--firecracker``), not of the study:
        it is left out, while the version each run used is recorded in its row.
        """
        d = self.as_dict()
        d["study"].pop("firecracker", None)
        canon = json.dumps(d, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """Everything that decides what a run does (paths as given, not resolved)."""
        return {
            "study": {"name": self.name, "backend": self.backend, "repetitions": self.repetitions,
                      "strategies": [s.name for s in self.strategies], "timeout_s": self.timeout_s,
                      "firecracker": self.firecracker},
            "guest": {"mem_size_mib": self.guest.mem_size_mib, "vcpus": self.guest.vcpus,
                      "kernel": str(self.guest.kernel) if self.guest.kernel else None,
                      "rootfs": str(self.guest.rootfs) if self.guest.rootfs else None,
                      "boot_args": self.guest.boot_args},
            "workload": {"port": self.workload.port, "path": self.workload.path,
                         "warmup_requests": self.workload.warmup_requests,
                         "prepare": list(self.workload.prepare),
                         "ready_timeout_s": self.workload.ready_timeout_s,
                         # only when listed, so the digest of every existing study stays what it was
                         **({"paths": [str(q) for q in self.workload.requests]}
                            if self.workload.requests != (Request(path=self.workload.path),) else {})},
            "variants": [v.as_dict() for v in self.variants],
        }


class _Checker:
    """Typed getters that fail with ``FormatError(file, line, "key: why")``."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def fail(self, key: str, why: str) -> FormatError:
        return FormatError(self.path, self._line_of(key), f"{key}: {why}")

    def _line_of(self, key: str) -> int:
        """Best-effort line of ``key`` for the message (``table[i].leaf``: searched inside the i-th
        ``[[table]]``, ``table.leaf`` inside ``[table]``); 0 when not found."""
        head, _, leaf = key.partition(".")
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", head)
        if not m:
            return 0
        table, nth = m.group(1), int(m.group(2) or 0)
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        starts = [i for i, line in enumerate(self.lines) if header.match(line)]
        if nth >= len(starts):
            return 0
        if not leaf:
            return starts[nth] + 1
        pat = re.compile(rf"^\s*{re.escape(leaf.split('[', 1)[0])}\s*=")
        for i in range(starts[nth] + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if pat.match(self.lines[i]):
                return i + 1
        return starts[nth] + 1

    def table(self, data: Mapping[str, Any], key: str, allowed: set[str], where: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}",
                            f"unknown key (known: {', '.join(sorted(allowed))})")
        return value

    def string(self, t: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
        v = t.get(key, default)
        if not isinstance(v, str):
            raise self.fail(f"{where}.{key}", "missing" if v is None else f"must be a string, got {v!r}")
        return v

    def integer(self, t: Mapping[str, Any], key: str, where: str, default: int | None, lo: int,
                hi: int) -> int:
        v = t.get(key, default)
        if v is None:
            raise self.fail(f"{where}.{key}", "missing")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"{where}.{key}", f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(f"{where}.{key}", f"must be between {lo} and {hi}, got {v}")
        return v

    def number(self, t: Mapping[str, Any], key: str, where: str, default: float, lo: float,
               hi: float) -> float:
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(f"{where}.{key}", f"must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(f"{where}.{key}", f"must be between {lo} and {hi}, got {v}")
        return float(v)

    def boolean(self, t: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        v = t.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {v!r}")
        return v

    def strings(self, t: Mapping[str, Any], key: str, where: str,
                default: tuple[str, ...]) -> tuple[str, ...]:
        v = t.get(key, list(default))
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(f"{where}.{key}", f"must be a list of strings, got {v!r}")
        return tuple(v)

    def name(self, t: Mapping[str, Any], key: str, where: str) -> str:
        v = self.string(t, key, where)
        if not _NAME_RE.match(v):
            raise self.fail(f"{where}.{key}", f"{v!r} is not a valid name (letters, digits, _ . + -; "
                                              "at most 64 characters)")
        return v

    def filepath(self, t: Mapping[str, Any], key: str, where: str, base: Path) -> Path | None:
        if key not in t:
            return None
        p = Path(self.string(t, key, where)).expanduser()
        return p if p.is_absolute() else base / p


def parse_strategy(name: str) -> Strategy:
    """``file``, ``ondemand``, ``fault-around:N`` (N a power of two, 2–512), ``prefetch[@ORDER]``,
    ``prefetch-background[@ORDER]``, ``readahead``, ``readahead-background``, ``eager``, or the process
    restores ``criu`` and ``criu-lazy``.

    The prefetch and readahead kinds record their trace on a first restore of each variant, then replay it.
    Raises ValueError with the reason.
    """
    m = _STRATEGY_RE.match(name)
    if not m:
        raise ValueError(f"unknown strategy {name!r} (file, ondemand, fault-around:N, prefetch[@ORDER], "
                         "prefetch-background[@ORDER], readahead, readahead-background, eager, criu, "
                         "criu-lazy; ORDER: runs, touch, file; a page-server strategy ending in -zstd is "
                         "served from the compressed snapshot)")
    if m.group(1) is not None:
        n = int(m.group(1))
        if n < 2 or n > 512 or n & (n - 1):
            raise ValueError(f"{name!r}: N must be a power of two between 2 and 512")
    return Strategy(name)


def parse_spec(text: str, path: Path | str = "<spec>") -> Spec:
    """Validate spec text; relative paths in it are resolved against the spec file's directory."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = getattr(exc, "lineno", 0) or (int(m.group(1)) if m else 0)
        raise FormatError(path, line, f"not valid TOML: {exc}") from None
    c = _Checker(path, text)
    base = path.parent if path.name != "<spec>" else Path.cwd()

    unknown = sorted(set(data) - {"study", "guest", "workload", "variant"})
    if unknown:
        raise c.fail(unknown[0], "unknown table (known: study, guest, workload, variant)")
    if "study" not in data:
        raise c.fail("study", "missing table [study]")
    st = c.table(data, "study", _STUDY_KEYS, "study")
    backend = c.string(st, "backend", "study", "probe")
    if backend not in BACKENDS:
        raise c.fail("study.backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    raw_strats = c.strings(st, "strategies", "study", ())
    if not raw_strats:
        raise c.fail("study.strategies", "must list at least one strategy")
    strategies: list[Strategy] = []
    for i, s in enumerate(raw_strats):
        try:
            strat = parse_strategy(s)
        except ValueError as exc:
            raise c.fail(f"study.strategies[{i}]", str(exc)) from None
        if strat in strategies:
            raise c.fail(f"study.strategies[{i}]", f"{s!r} is listed twice")
        strategies.append(strat)

    gt = c.table(data, "guest", _GUEST_KEYS, "guest")
    guest = Guest(
        mem_size_mib=c.integer(gt, "mem_size_mib", "guest", 128, 16, 1 << 20),
        vcpus=c.integer(gt, "vcpus", "guest", 1, 1, 32),
        kernel=c.filepath(gt, "kernel", "guest", base),
        rootfs=c.filepath(gt, "rootfs", "guest", base),
        boot_args=c.string(gt, "boot_args", "guest", ""),
    )
    wt = c.table(data, "workload", _WORKLOAD_KEYS, "workload")
    first_path = c.string(wt, "path", "workload", "/")
    if "path" in wt and "paths" in wt:
        raise c.fail("workload.paths", "give path or paths, not both")
    requests: list[Request] = []
    for i, item in enumerate(c.strings(wt, "paths", "workload", (first_path,))):
        try:
            q = Request.parse(item)
        except ValueError as exc:
            raise c.fail(f"workload.paths[{i}]", str(exc)) from None
        if q in requests:
            raise c.fail(f"workload.paths[{i}]", f"{item!r} is listed twice")
        if any(o.slug == q.slug for o in requests):
            raise c.fail(f"workload.paths[{i}]", f"{item!r} would share its run ids ({q.slug}) with another "
                                                 "request: make the paths differ")
        requests.append(q)
    if not requests:
        raise c.fail("workload.paths", "must list at least one request")
    if len(requests) > 1 and backend != "jvm":
        raise c.fail("workload.paths", "several first requests need the jvm backend")
    workload = Workload(
        port=c.integer(wt, "port", "workload", 8080, 1, 65535),
        path=requests[0].path,
        requests=tuple(requests),
        warmup_requests=c.integer(wt, "warmup_requests", "workload", 20, 0, 1_000_000),
        prepare=c.strings(wt, "prepare", "workload", ("gc", "drop-caches")),
        ready_timeout_s=c.number(wt, "ready_timeout_s", "workload", 60.0, 0.1, 3600.0),
    )

    raw_variants = data.get("variant", [])
    if not isinstance(raw_variants, list) or not raw_variants:
        raise c.fail("variant", "at least one [[variant]] table is needed")
    variants: list[Variant] = []
    page_limit = guest.mem_size_mib * 256
    for i, vt in enumerate(raw_variants):
        where = f"variant[{i}]"
        if not isinstance(vt, dict):
            raise c.fail(where, "must be a table ([[variant]])")
        vt = c.table({"v": vt}, "v", _VARIANT_KEYS, where)
        name = c.name(vt, "name", where)
        if any(v.name == name for v in variants):
            raise c.fail(f"{where}.name", f"variant {name!r} is defined twice")
        ws: int | None = None
        if "working_set_pages" in vt:
            ws = c.integer(vt, "working_set_pages", where, None, 1, page_limit // 2)
            if backend in ("probe", "host-replay"):
                fits = max_scattered(backend, guest.mem_size_mib)
                if ws > fits:
                    lo, hi = scatter_range(backend, guest.mem_size_mib)
                    raise c.fail(f"{where}.working_set_pages",
                                 f"{ws} pages do not fit a {guest.mem_size_mib} MiB guest: the {backend} "
                                 f"backend scatters them over pages {lo}..{hi}, which holds at most {fits} "
                                 "(raise guest.mem_size_mib or lower working_set_pages)")
        trace = c.filepath(vt, "trace", where, base)
        if trace is not None and backend in ("probe", "host-replay"):
            _check_trace_fits(c, f"{where}.trace", trace, guest.mem_size_mib)
        if backend in ("probe", "host-replay") and ws is None and trace is None:
            raise c.fail(f"{where}.working_set_pages",
                         f"a {backend} variant needs working_set_pages (or trace = a recorded trace)")
        if ws is not None and trace is not None:
            raise c.fail(f"{where}.trace", "give working_set_pages or trace, not both")
        jvm_options = c.strings(vt, "jvm_options", where, ())
        huge_pages = c.string(vt, "huge_pages", where, "None")
        if huge_pages not in HUGE_PAGES:
            raise c.fail(f"{where}.huge_pages", f"{huge_pages!r} is not one of {', '.join(HUGE_PAGES)}")
        if huge_pages == "2M":
            if backend == "host-replay":
                raise c.fail(f"{where}.huge_pages", "2 MiB pages need a Firecracker backend (probe or jvm)")
            if guest.mem_size_mib % 2:
                raise c.fail(f"{where}.huge_pages", f"guest.mem_size_mib = {guest.mem_size_mib} is not a "
                                                    "multiple of 2 MiB")
            if not any(st.uses_uffd for st in strategies):
                raise c.fail(f"{where}.huge_pages", "2 MiB snapshots restore only through Uffd: list a uffd "
                                                    "strategy in study.strategies")
        if backend == "jvm" and (ws is not None or trace is not None):
            raise c.fail(f"{where}.working_set_pages", "jvm variants are JVM option sets (jvm_options)")
        v_rootfs = c.filepath(vt, "rootfs", where, base)
        if v_rootfs is not None and backend != "jvm":
            raise c.fail(f"{where}.rootfs", "a variant's own image needs the jvm backend")
        v_warmup = c.integer(vt, "warmup_requests", where, None, 0, 1_000_000) \
            if "warmup_requests" in vt else None
        if v_warmup is not None and backend != "jvm":
            raise c.fail(f"{where}.warmup_requests", "warm-up requests need the jvm backend")
        variants.append(Variant(
            name=name,
            description=c.string(vt, "description", where, ""),
            working_set_pages=ws,
            mean_run_pages=c.number(vt, "mean_run_pages", where, 2.5, 1.0, 512.0),
            seed=c.integer(vt, "seed", where, i, 0, 2**63 - 1),
            trace=trace,
            jvm_options=jvm_options,
            huge_pages="2M" if huge_pages == "2M" else None,
            rootfs=v_rootfs,
            warmup_requests=v_warmup,
        ))
    if backend == "host-replay":
        odd = [st.name for st in strategies if st.is_readahead or st.compressed
               or (st.needs_trace and st.name != "prefetch")]
        if odd:
            raise c.fail("study.strategies",
                         f"{', '.join(odd)}: host-replay has no Firecracker (use the probe or jvm backend)")
    process = [st.name for st in strategies if st.is_process]
    posts = [str(q) for q in workload.requests if q.method != "GET" or q.body]
    if process and posts:
        raise c.fail("workload.paths", f"{posts[0]}: process restores (criu) answer GET requests only (the "
                                       "guest agent sends the first request)")
    if process and backend != "jvm":
        raise c.fail("study.strategies",
                     f"{', '.join(process)}: process restores (CRIU) need the jvm backend")
    if backend == "jvm":
        for key in ("kernel", "rootfs"):
            if getattr(guest, key) is None:
                raise c.fail(f"guest.{key}", "the jvm backend needs the built image (firecracer image …)")

    return Spec(
        path=path, text=text,
        name=c.name(st, "name", "study"),
        description=c.string(st, "description", "study", ""),
        backend=backend,
        repetitions=c.integer(st, "repetitions", "study", 3, 1, 10_000),
        strategies=tuple(strategies),
        variants=tuple(variants),
        guest=guest,
        workload=workload,
        timeout_s=c.number(st, "timeout_s", "study", 120.0, 1.0, 86_400.0),
        firecracker=c.string(st, "firecracker", "study") if "firecracker" in st else None,
        keep_snapshots=c.boolean(st, "keep_snapshots", "study", True),
        viewer=c.boolean(st, "viewer", "study", True),
        cluster=c.string(st, "cluster", "study") if "cluster" in st else None,
    )


def _check_trace_fits(c: Any, where: str, trace: Path, mem_size_mib: int) -> None:
    """A trace variant's pages must exist in the spec's guest (else the study fails only at run time)."""
    try:
        pages = from_trace(trace)
    except FirecracerError as exc:
        raise c.fail(where, str(exc)) from None
    if len(pages) == 0:
        raise c.fail(where, f"{trace}: the trace has no faulting page to replay")
    need = min_mem_mib(int(pages.max()))
    if need > mem_size_mib:
        raise c.fail(where, f"{trace}: page {int(pages.max()):#x} needs a guest of at least {need} MiB "
                            f"(guest.mem_size_mib is {mem_size_mib})")


def load_spec(path: Path | str) -> Spec:
    """Read and validate a spec file (``FormatError`` naming the file and key on any problem)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FormatError(path, 0, "spec file not found")
    return parse_spec(read_text(path, limit=4 << 20, what="spec"), path)


def example_spec_path() -> Path:
    """The bundled example: probe guest, 2 working-set variants × 4 strategies × 3 repetitions."""
    return Path(__file__).with_name("examples") / "probe-working-sets.toml"


_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_RUNS_COMMENT = re.compile(r"x (\w+) repetitions? = \d+ runs")


def example_spec_text(repetitions: int | None = None) -> str:
    """The bundled example's text, optionally with another repetition count.

    The header comment spells out the run arithmetic ("… x three repetitions = 24 runs"); it is rewritten
    together with the ``repetitions`` value, so a shortened copy (the demo runs one repetition) does not
    contradict itself.
    """
    text = example_spec_path().read_text(encoding="utf-8")
    if repetitions is None:
        return text
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    text = re.sub(r"(?m)^repetitions = \d+", f"repetitions = {repetitions}", text, count=1)
    spec = parse_spec(text, example_spec_path())
    word = _COUNT_WORDS[repetitions] if repetitions < len(_COUNT_WORDS) else str(repetitions)
    runs = len(spec.variants) * len(spec.strategies) * repetitions
    return _RUNS_COMMENT.sub(f"x {word} repetition{'s' if repetitions != 1 else ''} = {runs} runs", text,
                             count=1)


def jvm_example_spec_path() -> Path:
    """The bundled JVM-settings study on Spring PetClinic: 5 JVM option sets × ondemand, prefetch × 3."""
    return Path(__file__).with_name("examples") / "petclinic-jvm-settings.toml"


def crac_example_spec_path() -> Path:
    """The bundled CRaC study: PetClinic restored as a VM (ondemand, prefetch) and as a process (criu,
    criu-lazy) × 3."""
    return Path(__file__).with_name("examples") / "petclinic-crac.toml"


def jdks_example_spec_path() -> Path:
    """The bundled JDK comparison: JDK 17 + AppCDS vs JDK 25 + AOT cache, ondemand and criu-lazy × 3."""
    return Path(__file__).with_name("examples") / "petclinic-jdks.toml"


def restores_example_spec_path() -> Path:
    """The bundled predictability / load-order study: PetClinic, 3 first requests × ondemand and the
    racing prefetch in 3 orders × 2."""
    return Path(__file__).with_name("examples") / "petclinic-restores.toml"


def warmup_example_spec_path() -> Path:
    """The bundled when-to-snapshot sweep: PetClinic snapshotted after k = 0, 1, 10, 100, 1000 requests."""
    return Path(__file__).with_name("examples") / "petclinic-warmup.toml"


def jvm_example_text(kernel: Path, rootfs: Path, spec_path: Path | None = None,
                     repetitions: int | None = None) -> str:
    """A bundled jvm study (default: the JVM-settings one) with ``guest.kernel``/``guest.rootfs`` set to
    these (e.g. the built image), and optionally another repetition count."""
    spec_path = spec_path or jvm_example_spec_path()
    text = spec_path.read_text(encoding="utf-8")
    for key, value in (("kernel", kernel), ("rootfs", rootfs)):
        text, n = re.subn(rf'(?m)^{key} = "[^"\n]*"', f"{key} = {json.dumps(str(value))}", text, count=1)
        if n != 1:
            raise FormatError(spec_path, 0, f"guest.{key}: no line to fill in")
    if repetitions is not None:
        if repetitions < 1:
            raise ValueError(f"repetitions must be >= 1, got {repetitions}")
        text = re.sub(r"(?m)^repetitions = \d+", f"repetitions = {repetitions}", text, count=1)
    return text
