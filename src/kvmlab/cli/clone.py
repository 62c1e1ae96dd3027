"""``kvmlab clone`` and ``kvmlab template ...``: clones and templates (docs/clones.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from kvmlab.cli.main import State, json_option, pass_state
from kvmlab.models import CloneProgress


@click.command("clone")
@click.argument("source")
@click.argument("new")
@click.option("--count", "-n", type=int, default=None, help="Make NEW-1 .. NEW-N.")
@click.option(
    "--linked/--full",
    default=None,
    help="qcow2 overlays on SOURCE's disk, or full copies "
    "[default: --linked from a template, --full otherwise].",
)
@click.option("--start", is_flag=True, help="Boot each clone once it is made.")
@json_option
@pass_state
def clone_command(
    state: State, source: str, new: str, count: int | None, linked: bool | None, start: bool
) -> None:
    """Clone stopped machine or template SOURCE into NEW (or NEW-1..NEW-N with --count).

    Each clone gets its own name, UUID, MACs, hostname (= its name) and a new cloud-init
    seed. SOURCE must be stopped.
    """
    from kvmlab.cli.output import emit_json, machines_table
    from kvmlab.services.clones import clone

    with _progress_bar(enabled=not state.json) as progress:
        made = clone(
            state.env, source, new, count=count, linked=linked, start=start, progress=progress
        )
    if state.json:
        emit_json([m.to_dict() for m in made])
    else:
        machines_table(made)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[CloneProgress], None] | None]:
    """A rich progress bar on stderr: clones made, and bytes of the full copy under way."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}", style="progress.download"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    copy_bars = Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=bars.console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(p: CloneProgress) -> None:
        if "clones" not in tasks:
            tasks["clones"] = bars.add_task("clones", total=p.total)
        if p.done:
            bars.update(tasks["clones"], completed=p.number, description=f"made {p.machine}")
            copying = tasks.pop(f"copy:{p.machine}", None)
            if copying is not None:
                copy_bars.remove_task(copying)
            return
        if p.size:
            key = f"copy:{p.machine}"
            if key not in tasks:
                tasks[key] = copy_bars.add_task(f"copying {p.machine}", total=p.size)
            copy_bars.update(tasks[key], completed=p.copied)

    from rich.console import Group
    from rich.live import Live

    with Live(Group(bars, copy_bars), console=bars.console, refresh_per_second=8):
        yield update


@click.group("template")
def template() -> None:
    """Freeze machines as templates, list them."""


@template.command("make")
@click.argument("name")
@json_option
@pass_state
def make(state: State, name: str) -> None:
    """Freeze stopped machine NAME as a template (read-only base; it will not start)."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services.templates import make_template

    t = make_template(state.env, name)
    if state.json:
        emit_json(t.to_dict())
    else:
        click.echo(f"{t.name} is a template; clone it with `kvmlab clone {t.name} NEW`")


@template.command("list")
@json_option
@pass_state
def list_(state: State) -> None:
    """List templates and how many machines depend on each."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services.templates import list_templates

    found = list_templates(state.env)
    if state.json:
        emit_json([t.to_dict() for t in found])
        return
    table(
        None,
        ["NAME", "IMAGE", "DISK", "DEPENDENTS", "MACHINES"],
        [
            (
                t.name,
                t.image or "-",
                ", ".join(t.disks),
                len(t.dependents),
                _names(t.dependents),
            )
            for t in found
        ],
    )


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names) or "-"
