"""``kvmlab image pull`` (and the progress bar ``image import`` shares), without click.

The click commands (:mod:`kvmlab.cli.image`) and the console script's fast path
(:mod:`kvmlab.cli.fast`) both run these functions, so they print the same bytes and raise the
same errors. A pull is measured against curl fetching the same file: the ~35 ms of click's
import are a tenth of a 256 MiB pull from a local server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the fast path imports no more than it runs
    from kvmlab.env import Env
    from kvmlab.models import Volume
    from kvmlab.services.pull import ByteProgress


def byte_progress(as_json: bool, what: str) -> tuple[ByteProgress | None, Callable[[], None]]:
    """A rich progress bar on stderr; returns (callback, stop).

    None with --json or when stderr is not a terminal (a transient bar would print nothing
    there, and loading rich costs ~40 ms).
    """
    import sys

    if as_json or not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )  # fmt: skip

    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr),
        transient=True,
    )  # fmt: skip
    task = bar.add_task(what, total=None)
    bar.start()

    def update(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop


def show_image(vol: Volume, verb: str, as_json: bool) -> None:
    """``pulled image NAME: qcow2 2G`` (or the volume as JSON)."""
    from kvmlab.cli.output import echo, emit_json
    from kvmlab.specs import format_size

    if as_json:
        emit_json(vol.to_dict())
    else:
        echo(f"{verb} image {vol.name}: {vol.format} {format_size(vol.capacity)}")


def pull_and_show(
    env: Env,
    source: str,
    name: str | None,
    sha256: str | None,
    checksums_url: str | None,
    as_json: bool,
) -> None:
    """Download, verify and store an image (URL or catalogue name), with a progress bar."""
    from kvmlab.services.pull import pull_image

    down, stop_down = byte_progress(as_json, "download")
    try:
        vol = pull_image(
            env, source, name=name, sha256=sha256, checksums_url=checksums_url, progress=down
        )
    finally:
        stop_down()
    show_image(vol, "pulled", as_json)
