"""What libvirt has, as kvmlab's typed objects (the services and the CLI speak these).

They are immutable ``NamedTuple``s rather than dataclasses: ``dataclasses`` imports
``inspect`` (~12 ms), and ``kvmlab ls`` should start about as fast as ``virsh list``.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any, NamedTuple


def _plain(value: Any) -> Any:
    """Nested NamedTuples and enums as JSON-ready dicts, lists and strings."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class MachineState(StrEnum):
    """A machine's run state, in the user's words."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    CRASHED = "crashed"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


class CheckStatus(StrEnum):
    """Outcome of one host-readiness check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class Address(NamedTuple):
    """An IP address of a machine and where kvmlab learnt it."""

    ip: str
    prefix: int | None
    mac: str | None
    source: str  # "lease", "agent", "arp"
    interface: str | None = None


class Nic(NamedTuple):
    """A network interface of a machine."""

    mac: str
    network: str | None
    bridge: str | None
    port: str | None  # the host-side tap (vnetN) while running
    model: str | None = None


class Machine(NamedTuple):
    """A libvirt domain, seen as a kvmlab machine."""

    name: str
    uuid: str
    state: MachineState
    cpus: int
    memory: int  # bytes
    kvmlab: bool  # carries kvmlab metadata
    image: str | None = None
    hostname: str | None = None
    accel: str | None = None
    nics: tuple[Nic, ...] = ()
    disks: tuple[str, ...] = ()
    owned_volumes: tuple[tuple[str, str], ...] = ()
    addresses: tuple[Address, ...] = ()
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``--json`` output and the REST API)."""
        return dict(_plain(self))


class Network(NamedTuple):
    """A libvirt network."""

    name: str
    active: bool
    autostart: bool
    mode: str  # nat, isolated, bridge, route, open
    bridge: str | None
    subnet: str | None
    gateway: str | None
    dhcp_range: tuple[str, str] | None
    kvmlab: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class Volume(NamedTuple):
    """A storage volume in a libvirt pool."""

    pool: str
    name: str
    path: str
    format: str | None
    capacity: int
    allocation: int
    backing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class Lease(NamedTuple):
    """A DHCP lease handed out by a libvirt network."""

    network: str
    mac: str
    ip: str
    prefix: int
    hostname: str | None
    expires: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class HostCheck(NamedTuple):
    """One line of ``kvmlab host check``."""

    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class ExecResult(NamedTuple):
    """The result of a command run in a guest."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (output decoded as UTF-8 with replacement)."""
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout.decode(errors="replace"),
            "stderr": self.stderr.decode(errors="replace"),
        }
