"""What the user asks for: frozen, validated specifications.

These are turned into libvirt XML by pure functions in :mod:`kvmlab.libvirt.build`.
Sizes are parsed here so every layer below works in bytes or KiB.

The specs are small frozen classes, not ``@dataclass(frozen=True)``: importing
:mod:`dataclasses` (it imports :mod:`inspect`) and generating the methods of three classes
took ~10 ms, and ``kvmlab net create`` must stay within 1.2x of virsh (issue 3).
:class:`_Spec` gives them what the dataclasses gave: read-only fields, equality, hash, repr.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Any, Literal

from kvmlab.errors import InvalidInput
from kvmlab.names import validate_name

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class Accel(StrEnum):
    """How QEMU runs guest code: hardware virtualization or software emulation."""

    KVM = "kvm"
    TCG = "tcg"

    @property
    def domain_type(self) -> str:
        """libvirt's ``<domain type=...>`` for this accelerator."""
        return "kvm" if self is Accel.KVM else "qemu"


def parse_size(text: str, what: str = "size", default_unit: str = "M") -> int:
    """Parse ``256M``, ``2G``, ``1.5GiB`` or a bare number (in ``default_unit``) into bytes."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise InvalidInput(
            f"{what} {text!r} is not a size", hint="write it like 256M, 2G or 1.5GiB"
        )
    number, unit, suffix = m.group(1), m.group(2).upper(), m.group(3) or ""
    if not unit and not suffix:
        unit = default_unit
    value = int(float(number) * _UNITS[unit])
    if value <= 0:
        raise InvalidInput(f"{what} must be larger than zero, not {text!r}")
    return value


def format_size(n: int) -> str:
    """Format a byte count the way people write it (``256M``, ``2G``, ``1.5G``)."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit]
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


class _Spec:
    """Base of the specs: fields set once by ``__init__`` (with :meth:`_set`, in order),
    read-only after, equal and hashed by their values, shown as ``NicSpec(network='lab',
    mac=None)``. Copies and pickles restore the fields without ``__init__``."""

    def _set(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot assign {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Spec) or type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


class NicSpec(_Spec):
    """One network interface: which network, optionally a fixed MAC."""

    network: str
    mac: str | None

    def __init__(self, network: str, mac: str | None = None) -> None:
        validate_name(network, "network")
        if mac is not None:
            mac = mac.lower()
        if mac is not None and not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac):
            raise InvalidInput(
                f"MAC address {mac!r} is not valid", hint="write it like 52:54:00:12:34:56"
            )
        self._set(network=network, mac=mac)


class MachineSpec(_Spec):
    """A machine the user asks for."""

    name: str
    image: str
    cpus: int
    memory: int
    disk_size: int | None
    nics: tuple[NicSpec, ...]
    full_copy: bool
    hostname: str | None
    # issue 6: install media. ``cdrom``: an ISO image booted before an empty disk of
    # ``disk_size``; ``kernel``/``initrd``: image-pool volumes for direct kernel boot.
    cdrom: str | None
    kernel: str | None
    initrd: str | None
    cmdline: str | None

    def __init__(
        self,
        name: str,
        image: str,
        cpus: int = 1,
        memory: int = 256 * 1024**2,
        disk_size: int | None = None,
        nics: tuple[NicSpec, ...] = (),
        full_copy: bool = False,
        hostname: str | None = None,
        cdrom: str | None = None,
        kernel: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
    ) -> None:
        self._set(name=name, image=image, cpus=cpus, memory=memory, disk_size=disk_size,
                  nics=nics, full_copy=full_copy, hostname=hostname, cdrom=cdrom,
                  kernel=kernel, initrd=initrd, cmdline=cmdline)  # fmt: skip
        validate_name(self.name, "machine")
        validate_name(self.image, "image")
        self._check_install_media()
        if not 1 <= self.cpus <= 256:
            raise InvalidInput(f"--cpus must be between 1 and 256, not {self.cpus}")
        if self.memory < 32 * 1024**2:
            raise InvalidInput(
                f"--memory {format_size(self.memory)} is too small", hint="give at least 32M"
            )
        if self.disk_size is not None and self.disk_size < 1024**2:
            raise InvalidInput("--disk must be at least 1M")

    @property
    def effective_hostname(self) -> str:
        """The guest hostname: given one or the machine name."""
        return self.hostname or self.name

    def _check_install_media(self) -> None:  # issue 6
        for what, value in (("--cdrom", self.cdrom), ("--kernel", self.kernel),
                            ("--initrd", self.initrd)):  # fmt: skip
            if value is not None:
                validate_name(value, f"{what} image")
        if self.cdrom and self.disk_size is None:
            raise InvalidInput(
                "--cdrom needs --disk: the size of the empty disk to install onto",
                hint="e.g. --disk 10G",
            )
        if (self.initrd or self.cmdline) and not self.kernel:
            raise InvalidInput("--initrd and --cmdline need --kernel")


NetworkMode = Literal["nat", "isolated", "bridge"]


class NetworkSpec(_Spec):
    """A libvirt network the user asks for."""

    name: str
    mode: NetworkMode
    subnet: str
    dhcp: bool
    bridge: str | None
    domain: str | None
    dhcp_range: tuple[str, str] | None
    reservations: tuple[tuple[str, str, str], ...]

    def __init__(
        self,
        name: str,
        mode: NetworkMode = "nat",
        subnet: str = "10.70.0.0/24",
        dhcp: bool = True,
        bridge: str | None = None,
        domain: str | None = None,
        dhcp_range: tuple[str, str] | None = None,
        reservations: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self._set(name=name, mode=mode, subnet=subnet, dhcp=dhcp, bridge=bridge,
                  domain=domain, dhcp_range=dhcp_range, reservations=reservations)  # fmt: skip
        validate_name(self.name, "network")
        if self.mode not in ("nat", "isolated", "bridge"):
            raise InvalidInput(f"network mode {self.mode!r} is not nat, isolated or bridge")
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as e:
            raise InvalidInput(
                f"subnet {self.subnet!r} is not a valid IPv4 network: {e}",
                hint="write it like 10.70.0.0/24",
            ) from e
        if net.prefixlen > 29:
            raise InvalidInput(f"subnet {self.subnet} is too small for a router and guests")

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The subnet as an ``ipaddress`` object."""
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The virtual router's address: the first host of the subnet."""
        return next(self.network.hosts())

    @property
    def effective_dhcp_range(self) -> tuple[str, str]:
        """The DHCP range: given, or from the 2nd host to the last host of the subnet."""
        if self.dhcp_range:
            return self.dhcp_range
        hosts = list(self.network.hosts()) if self.network.num_addresses <= 4096 else None
        if hosts is not None:
            return str(hosts[1]), str(hosts[-1])
        return str(self.network.network_address + 2), str(self.network.broadcast_address - 1)
