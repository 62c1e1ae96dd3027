"""``kvmlab image ...``: the images machines are created from."""

from __future__ import annotations

import click

from kvmlab.cli.main import State, json_option, pass_state


@click.group("image")
def image() -> None:
    """Build, pull, import, list and remove images."""


@image.command("build")
@click.argument("name", type=click.Choice(["tiny", "debian"]))  # debian: issue 6
@click.option("--force", is_flag=True, help="Upload again even if the pool has it.")
@json_option
@pass_state
def build(state: State, name: str, force: bool) -> None:
    """Build a built-in image (tiny: Debian kernel + busybox + guest agent; debian:
    debootstrap'ed Debian 12 with systemd, cloud-init, sshd and the guest agent)."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services import images
    from kvmlab.specs import format_size

    if name == "debian":  # issue 6
        from kvmlab.services.imagebuild import build_debian

        vol = build_debian(state.env, force=force)
    else:
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
    users = images.image_dependents(state.env)  # issue 6: machines created from each image
    if state.json:
        emit_json([{**v.to_dict(), "dependents": len(users.get(v.name, []))} for v in vols])
        return
    table(
        None,
        ["NAME", "FORMAT", "SIZE", "ON DISK", "USED BY", "PATH"],
        [(v.name, v.format or "-", format_size(v.capacity), format_size(v.allocation),
          len(users.get(v.name, [])), v.path)
         for v in vols],
    )


# -- issue 6: pull, import, rm, catalog ------------------------------------------------------
@image.command("pull")
@click.argument("source", metavar="URL|NAME")
@click.option("--name", default=None, help="Image name (default: from the URL or catalogue).")
@click.option("--sha256", default=None, help="Expected SHA-256 of the downloaded file.")
@click.option("--checksums", "checksums_url", default=None,
              help="URL of a SHA256SUMS/SHA512SUMS file listing the file.")  # fmt: skip
@json_option
@pass_state
def pull_command(
    state: State, source: str, name: str | None, sha256: str | None, checksums_url: str | None
) -> None:
    """Download an image (URL or catalogue name), verify it, and add it to the image pool.

    An interrupted download resumes when the same command runs again.
    """
    from kvmlab.cli.pullcmd import pull_and_show

    pull_and_show(state.env, source, name, sha256, checksums_url, state.json)


@image.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=__import__("pathlib").Path))
@click.option("--name", default=None, help="Image name (default: from the file name).")
@click.option("--as-is", is_flag=True,
              help="Store the file unchanged (a kernel or initrd for vm create --kernel).")
@json_option
@pass_state
def import_command(state: State, file: object, name: str | None, as_is: bool) -> None:
    """Add a local image file (qcow2, raw, ISO; .xz/.gz too) to the image pool."""
    from pathlib import Path

    from kvmlab.cli.pullcmd import byte_progress, show_image
    from kvmlab.services.imagestore import default_name, import_image

    assert isinstance(file, Path)
    up, stop_up = byte_progress(state.json, "upload")
    try:
        vol = import_image(
            state.env, file, name or default_name(str(file)), progress=up, as_is=as_is
        )
    finally:
        stop_up()
    show_image(vol, "imported", state.json)


@image.command("rm")
@click.argument("name")
@pass_state
def rm(state: State, name: str) -> None:
    """Delete image NAME (refused while machines use it)."""
    from kvmlab.services import images

    images.remove_image(state.env, name)
    click.echo(f"removed image {name}")


@image.command("catalog")
@json_option
@pass_state
def catalog_command(state: State) -> None:
    """List the names `kvmlab image pull` knows."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services.catalog import list_catalog

    entries = list_catalog()
    if state.json:
        emit_json([e._asdict() for e in entries])
        return
    table(None, ["NAME", "DESCRIPTION", "URL"], [(e.name, e.description, e.url) for e in entries])
