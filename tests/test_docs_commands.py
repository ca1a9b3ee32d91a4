"""Every ``firecracer …`` command line in README.md and docs/*.md names commands and options that exist.

The commands are judged against the click command tree of *this* checkout (imported in-process), so
commands added or removed on any branch are judged after a merge too. Extracted: every line of a fenced
code block (``\\`` continuations joined, ``# comments`` stripped but searched for commands themselves) and
every inline code span of the prose (there ``vm restore …`` counts too: the ``firecracer`` is implied). A
command starts at a ``firecracer`` word in command position (start of a line, after ``&&``/``;``/``|``
or a word ending in ``:``, after ``VAR=value``, ``sudo`` or ``python3 -m``, or at the start of a quoted
argument such as ``--wrap 'firecracer …'``). Checked: each subcommand exists,
each option exists for its command, and no command gets more positional arguments than it takes.
Not checked: missing arguments (docs abbreviate) and values. Placeholders (``NAME``, ``…``, ``...``),
optional ``[…]`` groups and ``a|b`` alternatives are understood.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from firecracer.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_SEPARATORS = {"&&", "||", ";", "|", "&"}
_REDIRECTS = re.compile(r"^(\d?>>?|<|&>|\d?>&\d)")
_PREFIXES = {"sudo", "env", "time", "exec", "nohup"}
_PLACEHOLDERS = {"…", "...", "[…]", "[...]"}
_TOP_LEVEL = set(cli.list_commands(click.Context(cli)))
_COMMAND_WORD = re.compile(r"^[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*$")


@dataclass(frozen=True)
class DocCommand:
    """One ``firecracer …`` invocation found in a document: where, and its words after ``firecracer``."""

    where: str
    text: str
    args: tuple[str, ...]


# -- extraction -------------------------------------------------------------------------------------------
def _split_comment(line: str) -> tuple[str, str]:
    """``code # comment`` → (code, comment); a ``#`` inside quotes or inside a word is not a comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:]
    return line, ""


def _words(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=False)
    lex.whitespace_split = True
    lex.commenters = ""
    try:
        return list(lex)
    except ValueError:  # an unbalanced quote (prose): plain whitespace split
        return text.split()


def _commands_in_line(text: str) -> list[tuple[str, ...]]:
    """Word lists following each ``firecracer`` in command position (see module doc)."""
    words = _words(text)
    found: list[tuple[str, ...]] = []
    start = True  # the next word is in command position
    i = 0
    while i < len(words):
        w = words[i]
        if w in _SEPARATORS or w.endswith(":"):  # "# or: firecracer …" in a comment
            start = True
        elif start and w == "firecracer":
            j = i + 1
            while j < len(words) and words[j] not in _SEPARATORS:
                j += 1
            found.append(tuple(words[i + 1:j]))
            i = j
            continue
        elif start and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", w) or w in _PREFIXES):
            pass  # VAR=value firecracer …, sudo firecracer …
        elif start and re.fullmatch(r"python3?(\.\d+)?", w) and i + 1 < len(words) and words[i + 1] == "-m":
            i += 2
            continue
        else:
            start = False
            if " " in w and "firecracer" in w:  # a quoted command: --wrap 'firecracer …'
                found.extend(_commands_in_line(w))
        i += 1
    return found


def _code_spans(text: str) -> list[str]:
    """Inline code spans of markdown prose (a span may wrap lines, never a blank line)."""
    spans: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        spans.extend(m.group(1).replace("\n", " ") for m in re.finditer(r"`([^`]+)`", para))
    return spans


def extract(path: Path) -> list[DocCommand]:
    """Every firecracer command of one markdown file (see module doc)."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    lines = path.read_text().splitlines()
    out: list[DocCommand] = []

    def add(lineno: int, text: str, prose: bool = False) -> None:
        cmds = _commands_in_line(text)
        words = _words(text)
        if prose and not cmds and len(words) > 1 and words[0] in _TOP_LEVEL \
                and (words[1].startswith("-") or _COMMAND_WORD.match(_strip_brackets(words[1]))):
            cmds = [tuple(words)]  # `vm restore --uffd …` in prose: the firecracer is implied
        for args in cmds:
            if args and not (args[0].startswith("-") or _COMMAND_WORD.match(args[0])):
                continue  # output quoted in prose ("firecracer uffd: listening on …"), not a command
            out.append(DocCommand(f"{rel}:{lineno}", text.strip(), args))

    prose: list[tuple[int, str]] = []
    fence: str | None = None
    pending = ""
    pending_line = 0
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence = stripped[:3]
                continue
            prose.append((n, line))
            continue
        if stripped.startswith(fence):
            fence = None
            continue
        code, comment = _split_comment(line)
        if comment:
            for span in _code_spans(comment):
                add(n, span)
            if "`" not in comment:
                add(n, comment)
        if not pending:
            pending_line = n
        if code.rstrip().endswith("\\"):
            pending += code.rstrip()[:-1] + " "
            continue
        add(pending_line, pending + code)
        pending = ""
    # prose: inline spans, located by the line their opening backtick is on
    text = "\n".join(line for _, line in prose)
    offsets = []
    pos = 0
    for n, line in prose:
        offsets.append((pos, n))
        pos += len(line) + 1
    for para_match in re.finditer(r"(?:[^\n]|\n(?!\s*\n))+", text):
        for m in re.finditer(r"`([^`]+)`", para_match.group(0)):
            at = para_match.start() + m.start()
            lineno = max(n for off, n in offsets if off <= at)
            add(lineno, m.group(1).replace("\n", " "), prose=True)
    return out


# -- checking against the click tree ----------------------------------------------------------------------
def _strip_brackets(word: str) -> str:
    return word.lstrip("[").rstrip("]")


def check(args: tuple[str, ...]) -> list[str]:
    """Problems of one command line (empty: every command and option it uses exists)."""
    ctx = click.Context(cli, info_name="firecracer")
    return _check(cli, ctx, [w for w in (_strip_brackets(a) for a in args) if w], "firecracer")


def _check(cmd: click.Command, ctx: click.Context, words: list[str], path: str) -> list[str]:
    params = cmd.get_params(ctx)
    options = {name: p for p in params if isinstance(p, click.Option)
               for name in (*p.opts, *p.secondary_opts)}
    max_args = 0.0
    for p in params:
        if isinstance(p, click.Argument):
            max_args += float("inf") if p.nargs < 0 else p.nargs
    problems: list[str] = []
    positionals: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w in _PLACEHOLDERS or (w.endswith(("…", "...")) and not w.startswith("-")):
            continue
        redirect = _REDIRECTS.match(w)
        if redirect:
            i += 1 if redirect.group(0) == w else 0  # "> FILE" takes the next word, ">FILE" does not
            continue
        if w == "--":
            break  # the rest belongs to a program the command runs
        if w == "|":
            if i < len(words) and words[i].startswith("-"):
                continue  # "c1 | --all": an alternative, not a pipe
            break
        if w.startswith("-") and len(w) > 1:
            takes_value = False
            for alt in w.split("|"):
                name, eq, _ = alt.partition("=")
                opt = options.get(name)
                if opt is None:
                    problems.append(f"'{path}' has no option {name}")
                    continue
                takes_value = takes_value or (not opt.is_flag and not opt.count and not eq)
                if eq and (opt.is_flag or opt.count):
                    problems.append(f"'{path}' option {name} is a flag and takes no value")
            if takes_value:
                i += 1
            continue
        if isinstance(cmd, click.Group) and not positionals:
            for name in w.split("|"):
                sub = cmd.get_command(ctx, name)
                if sub is None:
                    problems.append(f"'{path}' has no command {name!r} (has: "
                                    f"{', '.join(cmd.list_commands(ctx))})")
                    continue
                sub_ctx = click.Context(sub, info_name=name, parent=ctx)
                problems.extend(_check(sub, sub_ctx, words[i:], f"{path} {name}"))
            return problems
        positionals.append(w)
    if len(positionals) > max_args:
        want = "no" if max_args == 0 else f"at most {int(max_args)}"
        problems.append(f"'{path}' takes {want} positional argument(s), the line gives "
                        f"{len(positionals)}: {' '.join(positionals)}")
    return problems


ALL = {p.relative_to(ROOT).as_posix(): extract(p) for p in DOC_FILES}


@pytest.mark.parametrize("doc", sorted(ALL))
def test_doc_commands_exist(doc: str) -> None:
    """Each firecracer command line of this document uses only commands and options that exist."""
    problems = [f"{c.where}: `{c.text}`: {p}" for c in ALL[doc] for p in check(c.args)]
    assert not problems, "\n".join(problems)


def test_extraction_finds_the_documented_commands() -> None:
    """The extractor is not blind: README and the stage docs yield the commands a reader sees."""
    readme = {" ".join(c.args[:2]) for c in ALL["README.md"]}
    assert {"demo", "image kernel", "image rootfs", "image check", "selftest"} <= readme
    assert sum(len(v) for v in ALL.values()) >= 60
    docs_vmm = [c for c in ALL["docs/vmm.md"] if c.args[:2] == ("vm", "kill")]
    assert docs_vmm, "the vm command list in docs/vmm.md was not extracted"


@pytest.mark.parametrize(("line", "problem"), [
    ("firecracer vm boot NAME --kernel vmlinux --rootfs rootfs.ext4 …", "takes no positional"),
    ("firecracer vm restore SNAPDIR --backend uffd --strategy S", "no option --backend"),
    ("firecracer vm exec VM -- CMD", "no command 'exec'"),
    ("firecracer vm pause|frobnicate p1", "no command 'frobnicate'"),
    ("firecracer vm logs c1 [--stderr|--uffdd]", "no option --uffdd"),
    ("x && PYTHONPATH=src python3 -m firecracer nosuch …", "no command 'nosuch'"),
    ("sbatch --wrap 'firecracer experiment run s.toml --shard-count 4'", "no option --shard-count"),
    ("firecracer vm ls --all=1", "is a flag"),
])
def test_checker_catches_drift(line: str, problem: str) -> None:
    """The checker flags what it exists to flag (so a passing docs test means something)."""
    cmds = _commands_in_line(line)
    assert cmds, line
    assert any(problem in p for c in cmds for p in check(c)), (line, [check(c) for c in cmds])


@pytest.mark.parametrize("line", [
    "firecracer vm kill c1 | --all [--purge]",
    "firecracer analyze RECORDING [--compare RECORDING_B] [--json | --csv] [--table NAME …] [--top N]",
    "firecracer uffd serve SOCKET MEMFILE --strategy ondemand|fault-around:N|eager --trace OUT",
    "firecracer vm restore DIR --name c1 [--uffd [--strategy S] [--trace OUT]] [--paused]",
    "firecracer view x --select o:probe#0 --label 'a b'   # a comment with --no-such-option",
    "firecracer doctor --json | jq .kvm",
    "mkfs.ext4 -q -F -L firecracer -E root_owner=0:0 -d TREE rootfs.ext4",
])
def test_checker_accepts_valid_forms(line: str) -> None:
    code, _ = _split_comment(line)
    assert all(not check(c) for c in _commands_in_line(code)), [check(c) for c in _commands_in_line(code)]


def test_extract_reads_fences_continuations_comments_and_prose(tmp_path: Path) -> None:
    md = tmp_path / "doc.md"
    md.write_text(
        "Run `firecracer vm boot\n--probe --name p1` first; `vm restore --backend uffd` is old.\n"
        "Prints `firecracer uffd: listening on SOCKET` when ready.\n\n"
        "```sh\n"
        "firecracer collect --local \\\n"
        "    --pid 1 -o OUT   # see `firecracer analyze OUT`\n"
        "# or: firecracer view OUT --nope\n"
        "```\n")
    got = {c.where.rsplit(":", 1)[1]: c.args for c in extract(md)}
    found = sorted(extract(md), key=lambda c: c.where)
    assert [c.args for c in found] == [
        ("vm", "boot", "--probe", "--name", "p1"),
        ("vm", "restore", "--backend", "uffd"),
        ("collect", "--local", "--pid", "1", "-o", "OUT"),
        ("analyze", "OUT"),
        ("view", "OUT", "--nope"),
    ], got
    assert [p for c in found for p in check(c.args)] == [
        "'firecracer vm restore' has no option --backend", "'firecracer view' has no option --nope"]
