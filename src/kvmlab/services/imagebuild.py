"""Built images beyond the tiny one (issue 6): ``kvmlab image build debian``."""

from __future__ import annotations

from kvmlab.env import Env
from kvmlab.models import Volume

DEBIAN = "debian"


def build_debian(env: Env, force: bool = False) -> Volume:
    """Build the Debian image with mmdebstrap (reused once built) and store it as ``debian``.

    An existing ``debian`` image is kept unless ``force``; replacing it is refused while
    machines use it.
    """
    from kvmlab.image.debian import build_debian_image
    from kvmlab.services.images import remove_image
    from kvmlab.services.imagestore import import_image
    from kvmlab.services.storage import IMAGE_POOL, ensure_pools

    ensure_pools(env)
    hv = env.hypervisor
    if hv.has_volume(IMAGE_POOL, DEBIAN) and not force:
        return hv.volume(IMAGE_POOL, DEBIAN)
    path = build_debian_image(env.cache_dir / "build", progress=env.progress)
    if hv.has_volume(IMAGE_POOL, DEBIAN):
        remove_image(env, DEBIAN)
    return import_image(env, path, DEBIAN)
