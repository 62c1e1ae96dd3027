"""Images: the volumes in kvmlab's image pool that machines are created from."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.build import raw_volume
from kvmlab.models import Volume
from kvmlab.names import validate_name
from kvmlab.services.storage import IMAGE_POOL, ensure_pools

BUILDABLE = ("tiny",)


def list_images(env: Env) -> list[Volume]:
    """Every image in kvmlab's image pool."""
    ensure_pools(env)
    return env.hypervisor.list_volumes(IMAGE_POOL)


def get_image(env: Env, name: str) -> Volume:
    """One image by name, or :class:`ImageNotFound` with what to do."""
    validate_name(name, "image")
    ensure_pools(env)
    if not env.hypervisor.has_volume(IMAGE_POOL, name):
        hint = "`kvmlab image list` shows the images"
        if name in BUILDABLE:
            hint = f"build it with `kvmlab image build {name}`"
        raise errors.ImageNotFound(f"no image named {name!r} on {env.uri}", hint=hint)
    return env.hypervisor.volume(IMAGE_POOL, name)


def tiny_paths(env: Env) -> tuple[Path, Path]:
    """Where the tiny image is built locally, and where its packages are cached."""
    return env.cache_dir / "build", env.cache_dir / "debs"


def build_tiny_local(env: Env):  # type: ignore[no-untyped-def]
    """Build (or reuse) the tiny image on this host; returns :class:`TinyImage`."""
    from kvmlab.image.tiny import build_tiny_image

    out_dir, debs = tiny_paths(env)
    return build_tiny_image(out_dir, debs, progress=env.progress)


def build_tiny(env: Env, force: bool = False) -> Volume:
    """Build the built-in tiny image and store it as volume ``tiny`` in the image pool.

    Re-running is cheap: the local build is reused, and the upload is skipped when this host
    uploaded the same bytes (by SHA-256) to the same URI before.
    """
    tiny = build_tiny_local(env)
    ensure_pools(env)
    digest = _sha256(tiny.path)
    stamp = env.state_dir / "images" / "tiny.sha256"
    hv = env.hypervisor
    if hv.has_volume(IMAGE_POOL, "tiny"):
        if not force and _read(stamp) == f"{digest} {env.uri}":
            return hv.volume(IMAGE_POOL, "tiny")
        _refuse_if_used(env, "tiny")  # stale or unknown bytes: replace them
        hv.delete_volume(IMAGE_POOL, "tiny")
    size = tiny.path.stat().st_size
    env.progress(f"uploading tiny image ({size // 1024} KiB) into pool {IMAGE_POOL}")
    hv.create_volume(IMAGE_POOL, raw_volume("tiny", size))
    try:
        hv.upload_volume(IMAGE_POOL, "tiny", tiny.path)
    except BaseException:
        hv.delete_volume(IMAGE_POOL, "tiny")
        raise
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{digest} {env.uri}")
    return hv.volume(IMAGE_POOL, "tiny")


def _refuse_if_used(env: Env, image: str) -> None:
    users = [m.name for m in env.hypervisor.list_machines() if m.image == image]
    if users:
        raise errors.Conflict(
            f"image {image!r} is used by {', '.join(users)}; it cannot be replaced",
            hint="delete those machines first, or keep the image as it is",
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# -- pull, import, remove (issue 6) ----------------------------------------------------------
def image_dependents(env: Env) -> dict[str, list[str]]:
    """Image name -> the machines created from it (their metadata names the image)."""
    out: dict[str, list[str]] = {}
    for m in env.hypervisor.list_machines():
        if m.image:
            out.setdefault(m.image, []).append(m.name)
    return out


def remove_image(env: Env, name: str) -> None:
    """Delete an image; refused while machines were created from it (they need it)."""
    get_image(env, name)
    users = image_dependents(env).get(name, [])
    if users:
        raise errors.HasDependents(
            f"image {name!r} is used by {len(users)} machine(s): {', '.join(users)}",
            users,
            hint="delete those machines first (`kvmlab vm delete NAME`)",
        )
    env.hypervisor.delete_volume(IMAGE_POOL, name)
