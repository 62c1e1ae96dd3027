"""kvmlab's storage pools: one for images, one for machine disks and seeds.

Pools are created on first use through libvirt, so a remote URI gets them on the remote host
and kvmlab never writes disk files itself.
"""

from __future__ import annotations

from pathlib import Path

from kvmlab.env import Env

IMAGE_POOL = "kvmlab-images"
MACHINE_POOL = "kvmlab"


def pool_dir(env: Env, pool: str) -> str:
    """Where a kvmlab pool lives on the daemon's host."""
    sub = "images" if pool == IMAGE_POOL else "machines"
    if "session" in env.uri.split("?")[0]:
        return str(Path.home() / ".local/share/libvirt/kvmlab" / sub)
    return f"/var/lib/libvirt/kvmlab/{sub}"


def ensure_pools(env: Env) -> None:
    """Create kvmlab's pools if missing and make sure they are active."""
    from kvmlab.libvirt.build import dir_pool  # not at import: keeps `kvmlab ls` light

    for pool in (IMAGE_POOL, MACHINE_POOL):
        env.hypervisor.ensure_pool(dir_pool(pool, pool_dir(env, pool)))
