"""``firecracer collect``: guest (or local) memory owners, NMT and smaps into a recording directory."""

from __future__ import annotations

import click

from firecracer.agentclient.client import AgentClient, AgentError
from firecracer.agentclient.collect import collect_agent
from firecracer.cli._render import console, err_console, print_json
from firecracer.errors import FirecracerError
from firecracer.guest import memmap, recording
from firecracer.guest.agent import DEFAULT_PORT as AGENT_PORT


@click.command()
@click.argument("vm_name", metavar="[VM]", required=False)
@click.option("--port", type=int, default=AGENT_PORT, show_default=True,
              help="Guest vsock port of the agent (with VM).")
@click.option("--local", "local", is_flag=True, help="Collect this host (needs root).")
@click.option("--agent", "agent", metavar="ADDR",
              help="Collect a guest through its agent: vsock:UDS_PATH:PORT, tcp:HOST:PORT or unix:PATH.")
@click.option("--pid", "pids", type=int, multiple=True,
              help="Only walk these processes (repeatable). None of them existing is an error; some "
                   "missing among several (or exiting meanwhile) is a note.")
@click.option("--jvm", "jvm_pid", type=int, help="The JVM for nmt.txt/smaps (default: the only java).")
@click.option("--sections", default=",".join(memmap.SECTIONS), show_default=True,
              help="Comma-separated memmap sections to collect.")
@click.option("--format", "fmt", type=click.Choice(["native", "seed"]), default="native", show_default=True,
              help="'seed' also writes memmap.txt in the seed's = / v / p text format.")
@click.option("--source", help="recording.json 'source' if not already set (agent mode).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Agent connect timeout, s.")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Recording directory (created; existing recording.json is merged).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def collect(vm_name: str | None, port: int, local: bool, agent: str | None, pids: tuple[int, ...],
            jvm_pid: int | None, sections: str, fmt: str, source: str | None, timeout: float, out: str,
            as_json: bool) -> None:
    """Collect memmap + NMT + smaps from microVM VM (its agent over vsock), a guest agent at --agent ADDR,
    or this host (--local)."""
    if sum((local, bool(agent), bool(vm_name))) != 1:
        raise click.UsageError("pass exactly one of VM, --agent ADDR or --local")
    if vm_name:
        from firecracer.vmm.machine import MicroVM

        vm = MicroVM.attach(vm_name)
        vm.require_running()
        agent = f"vsock:{vm.vsock_path}:{port}"
        source = source or "firecracker"
    secs = tuple(s.strip() for s in sections.split(",") if s.strip())
    try:
        if local:
            summary = recording.collect_local(out, pids=list(pids) or None, jvm_pid=jvm_pid, sections=secs,
                                              seed=fmt == "seed")
        else:
            assert agent is not None
            with AgentClient.connect(agent, timeout=timeout, retries=3) as client:
                summary = collect_agent(client, out, pids=list(pids) or None, jvm_pid=jvm_pid,
                                                  seed=fmt == "seed", source=source, sections=list(secs))
    except memmap.NoSuchProcess as exc:  # the user named it: one line, nothing written
        raise FirecracerError(str(exc)) from None
    except AgentError as exc:
        if exc.code != "no-such-process":
            raise
        said = str(exc).removeprefix("agent 'collect-memmap' failed: ")
        raise FirecracerError(f"{said} in the guest" + (f" of VM {vm_name}" if vm_name else "")) from None
    except memmap.CollectError as exc:
        raise FirecracerError(f"collect: {exc}") from None
    except OSError as exc:
        raise FirecracerError(f"collect: {exc.filename or out}: {exc.strerror or exc}") from None
    if as_json:
        print_json({"out": str(summary.out), "pages": summary.pages, "owners": summary.owners,
                    "jvm_pid": summary.jvm_pid, "files": summary.files, "problems": summary.problems,
                    "seconds": summary.seconds})
        return
    console.print(f"collected {summary.pages:,} pages of {summary.owners} owners in {summary.seconds:.1f} s "
                  f"→ {summary.out}/ ({', '.join(summary.files)})", highlight=False)
    for p in summary.problems:  # diagnostics: stderr
        err_console.print(f"[yellow]note:[/] {p}", highlight=False)


COMMANDS = [collect]
