"""``kvmlab snap ...``, ``kvmlab try`` and ``kvmlab cp``: snapshots, safe installs, files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvmlab.cli.main import State, json_option, pass_state


@click.group("snap")
def snap() -> None:
    """Take, list, revert and delete snapshots of a machine (internal qcow2 snapshots)."""


@snap.command("create")
@click.argument("machine")
@click.argument("name", required=False)
@click.option("--memory", "kind", flag_value="memory", help="With the guest's RAM (running VMs).")
@click.option("--disk-only", "kind", flag_value="disk", help="Disks only (quiesced if it can).")
@click.option("-m", "--description", default=None, help="A note kept with the snapshot.")
@json_option
@pass_state
def create(
    state: State, machine: str, name: str | None, kind: str | None, description: str | None
) -> None:
    """Snapshot MACHINE (default NAME: snap-DATE-TIME; default kind: memory if it runs)."""
    from kvmlab.cli.snapcmd import create_and_show

    create_and_show(state.env, machine, name, kind, description, state.json)


@snap.command("list")
@click.argument("machine")
@json_option
@pass_state
def list_(state: State, machine: str) -> None:
    """Show MACHINE's snapshots as a tree; * marks the current one."""
    from datetime import datetime

    from kvmlab.cli.output import emit_json, table
    from kvmlab.services.snapshots import list_snapshots, tree_rows
    from kvmlab.specs import format_size

    snaps = list_snapshots(state.env, machine)
    if state.json:
        emit_json([s.to_dict() for s in snaps])
        return
    if not snaps:
        click.echo(f"{machine} has no snapshots (`kvmlab snap create {machine}` takes one)")
        return
    table(
        None,
        ["NAME", "KIND", "TAKEN WHILE", "STATE SIZE", "CREATED", "DESCRIPTION"],
        [
            (
                label,
                s.kind.value,
                s.state,
                "-" if s.vm_state_size is None else format_size(s.vm_state_size),
                datetime.fromtimestamp(s.created).astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                s.description or "",
            )
            for label, s in tree_rows(snaps)
        ],
    )


@snap.command("revert")
@click.argument("machine")
@click.argument("name")
@click.option("--start", is_flag=True, help="Boot it after reverting to a disk snapshot.")
@json_option
@pass_state
def revert(state: State, machine: str, name: str, start: bool) -> None:
    """Take MACHINE back to snapshot NAME (a memory snapshot comes back running)."""
    from kvmlab.cli.snapcmd import revert_and_show

    revert_and_show(state.env, machine, name, start, state.json)


@snap.command("delete")
@click.argument("machine")
@click.argument("name")
@pass_state
def delete(state: State, machine: str, name: str) -> None:
    """Delete snapshot NAME of MACHINE (its children stay valid)."""
    from kvmlab.services.snapshots import delete_snapshot

    delete_snapshot(state.env, machine, name)
    click.echo(f"deleted snapshot {name} of {machine}")


@click.command("try", context_settings={"ignore_unknown_options": True})
@click.argument("machine")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--check", default=None, help="Shell command in the guest that must exit 0.")
@click.option("--keep", is_flag=True, help="Keep the checkpoint snapshot afterwards.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds for the command.")
@json_option
@pass_state
def try_command(
    state: State,
    machine: str,
    argv: tuple[str, ...],
    check: str | None,
    keep: bool,
    timeout: float,
) -> None:
    """Run a command in MACHINE with a way back: kvmlab try MACHINE -- CMD ARGS...

    A memory snapshot is taken first; if the command (or --check) fails, MACHINE goes back to
    it. Exit code 0 if it succeeded and was kept, 1 if it was reverted.
    """
    from kvmlab.cli.output import emit_json
    from kvmlab.services.snapshots import try_command as run_try

    r = run_try(state.env, machine, list(argv), check=check, keep=keep, timeout=timeout)
    if state.json:
        emit_json(r.to_dict())
    else:
        sys.stdout.buffer.write(r.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(r.stderr)
        ran = " ".join(argv)
        lines = [f"ran: {ran} (exit code {'-' if r.exit_code is None else r.exit_code})"]
        if r.error:
            lines.append(f"it did not finish: {r.error}")
        if r.check is not None:
            lines.append(f"check: {r.check} (exit code {r.check_exit_code})")
        if r.succeeded:
            lines.append(f"succeeded: {machine} keeps the new state")
        else:
            lines.append(f"failed: reverted {machine} to checkpoint {r.checkpoint}")
        kept = f"kept as {r.checkpoint}" if r.checkpoint_kept else "deleted"
        lines.append(f"checkpoint {kept}; {machine} is {r.state.value}")
        click.echo("\n".join(lines), err=True)
    click.get_current_context().exit(0 if r.succeeded else 1)


@click.command("cp")
@click.argument("source")
@click.argument("dest")
@pass_state
def cp_command(state: State, source: str, dest: str) -> None:
    """Copy a file into or out of a machine through its guest agent.

    One side is VM:/path: kvmlab cp ./app.tar web:/tmp/ or kvmlab cp web:/etc/hostname .
    """
    from kvmlab.errors import InvalidInput
    from kvmlab.services.guestfiles import copy_from_guest, copy_to_guest

    src_vm, src_path = _split(source)
    dst_vm, dst_path = _split(dest)
    if (src_vm is None) == (dst_vm is None):
        raise InvalidInput(
            "exactly one of SOURCE and DEST must be VM:/path",
            hint="kvmlab cp ./file web:/tmp/  or  kvmlab cp web:/etc/hostname ./",
        )
    if dst_vm is not None:
        n = copy_to_guest(state.env, dst_vm, Path(src_path), dst_path)
    else:
        assert src_vm is not None
        n = copy_from_guest(state.env, src_vm, src_path, Path(dst_path))
    click.echo(f"copied {n} bytes", err=True)


def _split(arg: str) -> tuple[str | None, str]:
    """``VM:/path`` -> (VM, /path); a local path (no colon before a /) -> (None, path)."""
    head, sep, tail = arg.partition(":")
    if sep and head and "/" not in head and tail.startswith("/"):
        return head, tail
    return None, arg
