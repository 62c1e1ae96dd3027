"""What libvirt has, as kvmlab's typed objects (the services and the CLI speak these)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


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


@dataclass(frozen=True)
class Address:
    """An IP address of a machine and where kvmlab learnt it."""

    ip: str
    prefix: int | None
    mac: str | None
    source: str  # "lease", "agent", "arp"
    interface: str | None = None


@dataclass(frozen=True)
class Nic:
    """A network interface of a machine."""

    mac: str
    network: str | None
    bridge: str | None
    port: str | None  # the host-side tap (vnetN) while running
    model: str | None = None


@dataclass(frozen=True)
class Machine:
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
    addresses: tuple[Address, ...] = field(default=())
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``--json`` output and the REST API)."""
        d = asdict(self)
        d["state"] = self.state.value
        return d


@dataclass(frozen=True)
class Network:
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
        return asdict(self)


@dataclass(frozen=True)
class Volume:
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
        return asdict(self)


@dataclass(frozen=True)
class Lease:
    """A DHCP lease handed out by a libvirt network."""

    network: str
    mac: str
    ip: str
    prefix: int
    hostname: str | None
    expires: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class HostCheck:
    """One line of ``kvmlab host check``."""

    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass(frozen=True)
class ExecResult:
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
