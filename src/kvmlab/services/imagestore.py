"""Images into kvmlab's image pool: names, free-name checks, import and store.

:func:`import_image` puts a local file (or a verified download, see
:mod:`kvmlab.services.pull`) into a volume libvirt creates in the image pool. A remote daemon
(or one in another mount namespace) gets the bytes over a libvirt stream; a local one has the
file renamed over its new, still empty volume file (or copied into it), which is what makes a
pull as fast as curl writing the file (docs/images.md, step 5).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from kvmlab import errors
from kvmlab.services.imageformat import detect_format, prepare
from kvmlab.services.pull import ByteProgress, url_filename

if TYPE_CHECKING:
    from kvmlab.env import Env
    from kvmlab.models import Volume


def default_name(source: str) -> str:
    """An image name from a URL or file name: ``debian-12-genericcloud-amd64.qcow2.xz`` ->
    ``debian-12-genericcloud-amd64``."""
    name = url_filename(source) if "://" in source else Path(source).name
    name = re.sub(r"(\.(xz|gz|qcow2|img|raw|iso))+$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("-._")
    return name[:64] or "image"


def check_free(env: Env, name: str) -> None:
    """Refuse an image name that is invalid or taken (``pull_image`` runs this beside its
    download and cancels the download when it fails)."""
    from kvmlab.names import validate_name
    from kvmlab.services.storage import IMAGE_POOL, ensure_pools

    validate_name(name, "image")
    ensure_pools(env)
    if env.hypervisor.has_volume(IMAGE_POOL, name):
        raise errors.AlreadyExists(
            f"an image named {name!r} exists already on {env.uri}",
            hint=f"pick another --name, or remove it with `kvmlab image rm {name}`",
        )


def import_image(
    env: Env,
    path: Path,
    name: str,
    progress: ByteProgress | None = None,
    *,
    as_is: bool = False,
    owned: bool = False,
    checked: bool = False,
) -> Volume:
    """Import a local image file (qcow2, raw, ISO, optionally .xz/.gz) as image ``name``.

    ``as_is`` stores the bytes unchanged, without format checks: a kernel or initrd for
    ``vm create --kernel/--initrd``. ``owned``: the file is kvmlab's own (a finished
    download) and may be moved into the pool instead of copied. ``checked``: the caller ran
    :func:`check_free` already.
    """
    if not path.is_file():
        raise errors.NotFound(f"no file {str(path)!r}")
    if not checked:
        check_free(env, name)
    if as_is:
        return _store(env, path, name, "boot file", progress, movable=owned)
    fmt = detect_format(path)
    if fmt in ("qcow2", "iso"):  # stored as it is: no work directory
        return _store(env, path, name, fmt, progress, movable=owned)
    import tempfile

    workroot = env.cache_dir / "downloads"
    workroot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workroot, prefix="import-") as tmp:
        ready, fmt = prepare(path, Path(tmp))
        return _store(env, ready, name, fmt, progress, movable=owned or ready != path)


def _store(
    env: Env, ready: Path, name: str, fmt: str, progress: ByteProgress | None, movable: bool
) -> Volume:
    """Put a prepared file into the image pool as a new volume ``name``.

    libvirt creates the volume. When this process sees the daemon's own file for it (a local
    daemon in the same mount namespace), the file is moved (``movable``, same file system) or
    copied there and the pool re-read; otherwise the bytes go over a libvirt stream.
    """
    from kvmlab.libvirt.build import raw_volume
    from kvmlab.services.storage import IMAGE_POOL

    hv = env.hypervisor
    size = ready.stat().st_size
    # A raw volume of the file's size; libvirt re-detects qcow2 from the stored header.
    hv.create_volume(IMAGE_POOL, raw_volume(name, size))
    try:
        target = hv.local_volume_path(IMAGE_POOL, name)
        if target is not None and _writable(target):
            env.progress(
                f"storing {fmt} image {name} ({size // 1024} KiB) in pool {IMAGE_POOL} "
                "(local daemon: no upload)"
            )
            place_file(ready, target, move=movable and _same_fs(ready, target))
            hv.refresh_pool(IMAGE_POOL)
            if progress:
                progress(size, size)
        else:
            env.progress(
                f"uploading {fmt} image {name} ({size // 1024} KiB) into pool {IMAGE_POOL}"
            )
            hv.upload_volume(IMAGE_POOL, name, ready, progress=progress)
    except BaseException:
        hv.delete_volume(IMAGE_POOL, name)
        raise
    return hv.volume(IMAGE_POOL, name)


def _writable(target: Path) -> bool:
    """Whether this process may replace ``target`` (a user of the daemon's socket, in the
    libvirt group, usually may not write root's pool directory: it uploads instead)."""
    return os.access(target, os.W_OK) and os.access(target.parent, os.W_OK | os.X_OK)


def _same_fs(a: Path, b: Path) -> bool:
    """Whether a rename from ``a`` to ``b`` can work (it may still fail across bind mounts)."""
    return a.stat().st_dev == b.stat().st_dev


def place_file(src: Path, target: Path, *, move: bool) -> None:
    """Make ``target`` (an existing volume file) hold ``src``'s bytes, with its mode and owner.

    ``move`` renames ``src`` to ``target`` (no bytes copied; one file system). Otherwise, or
    when the rename crosses mounts (a bind mount) or ``src`` cannot be given the target's
    owner, the bytes are copied in the kernel into the target file, which keeps its own.
    """
    import errno
    import shutil

    st = target.stat()
    if move and _take_mode_and_owner(src, st):
        # Unlink first, not a rename over the target: ext4 would write the whole new file out
        # before such a rename (auto_da_alloc), ~0.15 s per 256 MiB. A pool refresh in
        # between only misses the volume until the caller's own refresh.
        target.unlink()
        try:
            os.rename(src, target)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        shutil.copyfile(src, target)  # a new file: give it the old one's mode and owner
        _take_mode_and_owner(target, st)
        return
    shutil.copyfile(src, target)  # into the existing file: its mode and owner stay


def _take_mode_and_owner(path: Path, st: os.stat_result) -> bool:
    """Give ``path`` the mode and owner in ``st``; False if the owner cannot be changed."""
    import stat

    os.chmod(path, stat.S_IMODE(st.st_mode))
    if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.chown(path, st.st_uid, st.st_gid)
        except PermissionError:
            return False
    return True
