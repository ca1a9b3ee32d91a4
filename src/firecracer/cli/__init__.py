"""The ``firecracer`` command: one module per command group, each thin over the library.

Every ``FirecracerError`` becomes one line on stderr and exit status 1; Ctrl-C exits 130 (SIGTERM 143)
after the library's own cleanup (context managers) has run, with what that cleanup noted on the
interrupt (e.g. the state a VM was left in) on the same line.
"""

from __future__ import annotations

import sys

import click

from firecracer import __version__
from firecracer.cli import (
    analyze,
    collect,
    crac,
    demo,
    doctor,
    experiment,
    image,
    install,
    lab,
    samples,
    selftest,
    uffd,
    view,
    vm,
    worker,
)
from firecracer.cli._render import err_console
from firecracer.errors import FirecracerError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="firecracer")
def cli() -> None:
    """Study what a JVM does across a Firecracker snapshot and restore.

    Pipeline: image → vm (boot, snapshot, restore) → uffd (page server, traces) → collect
    (guest memory owners, NMT) → analyze (tables) → view (HTML) → experiment (whole studies).
    """


for _module in (demo, doctor, install, image, vm, selftest, uffd, collect, crac, analyze, view,
                experiment, lab, samples, worker):
    for _cmd in _module.COMMANDS:
        cli.add_command(_cmd)


def _notes(exc: BaseException) -> str:
    """What the library added to an interrupt on its way out (e.g. the state a VM was left in)."""
    return "".join(f"; {n}" for n in getattr(exc, "__notes__", ()) if isinstance(n, str))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="firecracer", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click's wrapping of KeyboardInterrupt
        err_console.print("firecracer: interrupted" + _notes(exc.__cause__ or exc), markup=False,
                          highlight=False, soft_wrap=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        err_console.print("firecracer: interrupted" + _notes(exc), markup=False, highlight=False,
                          soft_wrap=True)
        sys.exit(130)
    except SystemExit as exc:  # SIGTERM unwinds as SystemExit(143) (term_runs_cleanup)
        if getattr(exc, "__notes__", None):
            err_console.print("firecracer: terminated" + _notes(exc), markup=False, highlight=False,
                              soft_wrap=True)
        raise
    except FirecracerError as exc:
        err_console.print(f"firecracer: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)
