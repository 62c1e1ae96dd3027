"""Networks: NAT (a virtual router with DHCP/DNS behind a virtual switch) and isolated."""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.build import network_from_spec
from kvmlab.models import Lease, Network
from kvmlab.names import validate_name
from kvmlab.specs import NetworkSpec


def list_networks(env: Env) -> list[Network]:
    """Every libvirt network on the connection."""
    return env.hypervisor.list_networks()


def get_network(env: Env, name: str) -> Network:
    """One network by name."""
    validate_name(name, "network")
    return env.hypervisor.network(name)


def _local_interfaces() -> set[str]:
    try:
        return set(os.listdir("/sys/class/net"))
    except OSError:
        return set()


def free_bridge_name(env: Env) -> str:
    """The first ``virbrN`` used neither by a libvirt network nor by a host interface."""
    used = {n.bridge for n in env.hypervisor.list_networks() if n.bridge}
    used |= _local_interfaces()
    n = 0
    while f"virbr{n}" in used:
        n += 1
    return f"virbr{n}"


def subnet_conflicts(env: Env, subnet: str) -> list[str]:
    """Networks (libvirt's, and the host's own routes when local) overlapping ``subnet``."""
    net = ipaddress.IPv4Network(subnet)
    found = []
    for other in env.hypervisor.list_networks():
        if other.subnet and ipaddress.IPv4Network(other.subnet, strict=False).overlaps(net):
            found.append(f"network {other.name} ({other.subnet})")
    return found


def create_network(env: Env, spec: NetworkSpec, start: bool = True) -> Network:
    """Define a NAT or isolated network, and start it (with autostart on)."""
    hv = env.hypervisor
    if spec.mode == "bridge":
        raise errors.InvalidInput(
            "bridged networks are not built yet in this version", hint="use --nat or --isolated"
        )
    if hv.has_network(spec.name):
        raise errors.AlreadyExists(
            f"a network named {spec.name!r} exists already on {env.uri}",
            hint="`kvmlab net list` shows the networks",
        )
    conflicts = subnet_conflicts(env, spec.subnet)
    if conflicts:
        raise errors.Conflict(
            f"subnet {spec.subnet} overlaps {', '.join(conflicts)}",
            hint="pick another --subnet",
        )
    xml = network_from_spec(
        spec,
        bridge=spec.bridge or free_bridge_name(env),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    hv.define_network(xml)
    if start:
        try:
            hv.start_network(spec.name)
        except errors.KvmlabError:
            hv.undefine_network(spec.name)
            raise
    return hv.network(spec.name)


def start_network(env: Env, name: str) -> Network:
    """Start a stopped network."""
    validate_name(name, "network")
    env.hypervisor.start_network(name)
    return env.hypervisor.network(name)


def stop_network(env: Env, name: str) -> None:
    """Stop a network (its machines lose their link)."""
    validate_name(name, "network")
    env.hypervisor.stop_network(name)


def delete_network(env: Env, name: str, force: bool = False) -> list[str]:
    """Delete a network; refused while machines are attached unless ``force``.

    Returns the machines that were attached (they keep a NIC pointing at a missing network).
    """
    validate_name(name, "network")
    hv = env.hypervisor
    hv.network(name)
    attached = sorted(
        m.name for m in hv.list_machines() if any(nic.network == name for nic in m.nics)
    )
    if attached and not force:
        raise errors.Conflict(
            f"network {name!r} has machines attached: {', '.join(attached)}",
            hint="delete or move them first, or pass --force to detach them",
        )
    hv.undefine_network(name)
    return attached


def leases(env: Env, name: str) -> list[Lease]:
    """The DHCP leases the network's virtual router handed out."""
    validate_name(name, "network")
    return env.hypervisor.leases(name)
