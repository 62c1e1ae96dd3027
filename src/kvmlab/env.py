"""The environment a kvmlab call runs in: URI, directories, overrides.

Injected into every service (httpie's ``Environment`` idea) so tests give their own URI and
state directory instead of monkeypatching modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from kvmlab.libvirt.hypervisor import Hypervisor
    from kvmlab.specs import Accel

DEFAULT_URI = "qemu:///system"


def _default_state_dir() -> Path:
    from pathlib import Path

    if os.environ.get("KVMLAB_STATE_DIR"):
        return Path(os.environ["KVMLAB_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/kvmlab")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kvmlab"


def _default_cache_dir() -> Path:
    from pathlib import Path

    if os.environ.get("KVMLAB_CACHE_DIR"):
        return Path(os.environ["KVMLAB_CACHE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/cache/kvmlab")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvmlab"


Progress = Callable[[str], None]


def _no_progress(_msg: str) -> None:
    """Default progress sink: the library stays silent."""


class Env:
    """Where and how kvmlab works: which libvirt URI, where it keeps its files.

    A plain class, not a dataclass: ``dataclasses`` costs ``kvmlab ls`` ~12 ms of imports.
    The default directories are worked out when first used: ``ls`` and ``net create`` need
    none, and :mod:`pathlib` costs them ~2 ms.
    """

    def __init__(
        self,
        uri: str | None = None,
        state_dir: Path | None = None,
        cache_dir: Path | None = None,
        accel: Accel | None = None,
        progress: Progress = _no_progress,
    ) -> None:
        self.uri = uri or os.environ.get("KVMLAB_CONNECT", DEFAULT_URI)
        self._state_dir = state_dir
        self._cache_dir = cache_dir
        self.accel = accel  # an explicit --accel; None means "use the probe's advice"
        self.progress = progress
        self._hypervisor: Hypervisor | None = None

    def __repr__(self) -> str:
        return f"Env(uri={self.uri!r}, state_dir={str(self.state_dir)!r}, accel={self.accel})"

    @property
    def state_dir(self) -> Path:
        """Where kvmlab keeps its state (journal, locks, snapshot notes, accelerator probe)."""
        if self._state_dir is None:
            self._state_dir = _default_state_dir()
        return self._state_dir

    @property
    def cache_dir(self) -> Path:
        """Where kvmlab keeps downloads and image builds."""
        if self._cache_dir is None:
            self._cache_dir = _default_cache_dir()
        return self._cache_dir

    @property
    def hypervisor(self) -> Hypervisor:
        """The (lazily opened) libvirt connection for :attr:`uri`."""
        if self._hypervisor is None:
            from kvmlab.libvirt.hypervisor import Hypervisor

            self._hypervisor = Hypervisor.open(self.uri)
        return self._hypervisor

    def close(self) -> None:
        """Close the connection if one was opened."""
        if self._hypervisor is not None:
            self._hypervisor.close()
            self._hypervisor = None
