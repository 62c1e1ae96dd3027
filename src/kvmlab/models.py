"""What libvirt has, as kvmlab's typed objects (the services and the CLI speak these).

They are immutable ``NamedTuple``s rather than dataclasses: ``dataclasses`` imports
``inspect`` (~12 ms), and ``kvmlab ls`` should start about as fast as ``virsh list``. For the
same reason this module has no ``from __future__ import annotations``: ``NamedTuple`` turns
every string annotation into a ``ForwardRef``, compiling it, which made importing this module
take twice as long (~2.5 ms more on every command).
"""

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


class NetworkPort(NamedTuple):
    """One machine NIC plugged into a network's virtual switch (``kvmlab net show``)."""

    machine: str
    state: MachineState
    mac: str
    port: str | None  # the host-side tap (vnetN) while the machine runs
    ip: str | None
    source: str | None  # where the IP came from: "lease", "agent", "arp"


class NetworkTopology(NamedTuple):
    """A network drawn as the user thinks of it: router, switch, and the machines' ports."""

    network: Network
    router: str | None  # the virtual router's address (the host's side of the switch)
    forwards: bool  # whether the router leads out (nat/bridge) or not (isolated)
    switch: str | None  # the Linux bridge, e.g. virbr1
    ports: tuple[NetworkPort, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class SnapshotKind(StrEnum):
    """What a snapshot holds: the disks and the guest's RAM, or the disks only."""

    MEMORY = "memory"
    DISK = "disk"


class Snapshot(NamedTuple):
    """A snapshot of a machine, as libvirt (plus kvmlab's snapshot journal) knows it."""

    machine: str
    name: str
    kind: SnapshotKind
    state: str  # the machine's state when taken, libvirt's word: running, shutoff, paused
    location: str  # internal | external
    created: int  # seconds since the epoch
    parent: str | None = None
    description: str | None = None
    current: bool = False
    children: tuple[str, ...] = ()
    vm_state_size: int | None = None  # bytes of saved RAM/device state; None: unknown
    quiesced: bool | None = None  # disk snapshots of running machines: filesystems frozen?

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class TryResult(NamedTuple):
    """What ``kvmlab try`` did: the command, its check, and the state it left the VM in."""

    machine: str
    command: tuple[str, ...]
    exit_code: int | None  # None: the command did not finish (agent lost, timeout)
    stdout: bytes
    stderr: bytes
    check: str | None  # the check command; None: the command's exit code decides
    check_exit_code: int | None
    succeeded: bool
    reverted: bool
    checkpoint: str
    checkpoint_kept: bool
    state: MachineState
    error: str | None = None  # why the command did not finish

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (output decoded as UTF-8 with replacement)."""
        d = dict(_plain(self))
        d["stdout"] = self.stdout.decode(errors="replace")
        d["stderr"] = self.stderr.decode(errors="replace")
        return d


class Template(NamedTuple):
    """A machine frozen as a template: clones are made from it, it never runs itself."""

    name: str
    image: str | None
    disks: tuple[str, ...]  # pool/volume of the read-only base volumes
    dependents: tuple[str, ...]  # machines whose disks are overlays on it (at any depth)
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))


class CloneProgress(NamedTuple):
    """Where ``kvmlab clone`` is: clone ``number`` (1-based) of ``total``, bytes copied."""

    machine: str
    number: int
    total: int
    copied: int  # bytes of this clone's full copy written so far (0 for linked clones)
    size: int  # bytes this clone's full copy is expected to take (0 for linked clones)
    done: bool = False  # this clone is whole (defined, and started if asked)


class PortForward(NamedTuple):
    """A host port forwarded to a machine on a NAT network (``kvmlab port``)."""

    machine: str
    proto: str  # tcp | udp
    host_ip: str | None  # None: every address of the daemon's host
    host_port: int
    guest_ip: str
    guest_port: int
    network: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(_plain(self))
