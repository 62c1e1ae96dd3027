"""The environment a kvmlab call runs in: URI, directories, overrides.

Injected into every service (httpie's ``Environment`` idea) so tests give their own URI and
state directory instead of monkeypatching modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmlab.libvirt.hypervisor import Hypervisor
    from kvmlab.specs import Accel

DEFAULT_URI = "qemu:///system"


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/kvmlab")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kvmlab"


def _default_cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/kvmlab")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvmlab"


Progress = Callable[[str], None]


def _no_progress(_msg: str) -> None:
    """Default progress sink: the library stays silent."""


@dataclass
class Env:
    """Where and how kvmlab works: which libvirt URI, where it keeps its files."""

    uri: str = field(default_factory=lambda: os.environ.get("KVMLAB_CONNECT", DEFAULT_URI))
    state_dir: Path = field(default_factory=_default_state_dir)
    cache_dir: Path = field(default_factory=_default_cache_dir)
    accel: Accel | None = None  # an explicit --accel; None means "use the probe's advice"
    progress: Progress = _no_progress
    _hypervisor: Hypervisor | None = field(default=None, repr=False)

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
