"""``kvmlab image ...``: the images machines are created from."""

from __future__ import annotations

import click

from kvmlab.cli.main import State, json_option, pass_state


@click.group("image")
def image() -> None:
    """Build and list images."""


@image.command("build")
@click.argument("name", type=click.Choice(["tiny"]))
@click.option("--force", is_flag=True, help="Upload again even if the pool has it.")
@json_option
@pass_state
def build(state: State, name: str, force: bool) -> None:
    """Build a built-in image (tiny: Debian kernel + busybox + guest agent)."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services import images
    from kvmlab.specs import format_size

    vol = images.build_tiny(state.env, force=force)
    if state.json:
        emit_json(vol.to_dict())
    else:
        click.echo(f"image {vol.name}: {vol.format} {format_size(vol.capacity)} at {vol.path}")


@image.command("list")
@json_option
@pass_state
def list_(state: State) -> None:
    """List images."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services import images
    from kvmlab.specs import format_size

    vols = images.list_images(state.env)
    if state.json:
        emit_json([v.to_dict() for v in vols])
        return
    table(
        None,
        ["NAME", "FORMAT", "SIZE", "ON DISK", "PATH"],
        [(v.name, v.format or "-", format_size(v.capacity), format_size(v.allocation), v.path)
         for v in vols],
    )
