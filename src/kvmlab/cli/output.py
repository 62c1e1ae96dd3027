"""How the CLI shows things: JSON for programs, rich tables for people."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kvmlab.errors import ExitStatus, KvmlabError

if TYPE_CHECKING:  # annotations only: every fast command imports this module for its errors
    from kvmlab.models import Machine


def emit_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout."""
    import json  # here, not above: most commands print text

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def report_error(e: KvmlabError, debug: bool = False) -> int:
    """Print a kvmlab error for a person (traceback only with --debug); return the exit code."""
    if debug:
        import traceback

        traceback.print_exc()
    sys.stderr.write(f"error: {e}\n")
    return int(e.exit_status)


def report_unexpected(e: Exception, debug: bool = False) -> int:
    """Print an error kvmlab did not expect (a bug): one line, the traceback only with --debug."""
    if debug:
        import traceback

        traceback.print_exc()
    else:
        sys.stderr.write(f"error: unexpected {type(e).__name__}: {e}\n")
        sys.stderr.write("  hint: run again with --debug to see where it happened\n")
    return int(ExitStatus.ERROR)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table for people (rich is imported only here: keeps --json fast)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    Console(file=sys.stdout, soft_wrap=True).print(t)


def machine_ips(m: Machine) -> str:
    """A machine's addresses, comma separated."""
    return ", ".join(dict.fromkeys(a.ip for a in m.addresses)) or "-"


def machines_table(machines: Sequence[Machine]) -> None:
    """The ``kvmlab ls`` table."""
    from kvmlab.specs import format_size

    table(
        None,
        ["NAME", "STATE", "IP", "CPUS", "MEMORY", "IMAGE", "ACCEL"],
        [
            (
                m.name,
                m.state.value,
                machine_ips(m),
                m.cpus,
                format_size(m.memory),
                m.image or ("-" if m.kvmlab else "(not kvmlab's)"),
                m.accel or "-",
            )
            for m in machines
        ],
    )


def echo(line: str) -> None:
    """A line of a command's result, on stdout (what ``click.echo`` prints)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A progress or status line for people, on stderr."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
