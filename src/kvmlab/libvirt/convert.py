"""Turn parsed libvirt XML into kvmlab's typed objects (:mod:`kvmlab.models`)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from kvmlab.models import Machine, MachineState, Network, Nic, Volume

if TYPE_CHECKING:  # the mappers' modules are imported by whoever parsed the XML
    from kvmlab.libvirt.domain import DomainXML
    from kvmlab.libvirt.network import NetworkXML
    from kvmlab.libvirt.storage import VolumeXML


def machine(xml: DomainXML, state: MachineState | None) -> Machine:
    """A :class:`Machine` from a domain's XML and run state."""
    meta = xml.kvmlab
    disks = []
    for d in xml.disks:
        if d.source_volume:
            disks.append(f"{d.source_pool}/{d.source_volume}")
        elif d.source_file:
            disks.append(d.source_file)
    nics = tuple(
        Nic(
            mac=(i.mac or "").lower(),
            network=i.source_network,
            bridge=i.source_bridge,
            port=i.target_dev,
            model=i.model,
        )
        for i in xml.interfaces
    )
    owned: tuple[tuple[str, str], ...] = ()
    if meta is not None:
        owned = tuple((v.pool or "", v.name or "") for v in meta.volumes if v.name)
    return Machine(
        name=xml.name or "",
        uuid=xml.uuid or "",
        state=state or MachineState.UNKNOWN,
        cpus=xml.vcpus or 1,
        memory=xml.memory_bytes or 0,
        kvmlab=meta is not None,
        image=meta.image if meta is not None else None,
        hostname=meta.hostname if meta is not None else None,
        accel={"kvm": "kvm", "qemu": "tcg"}.get(xml.type or "", xml.type),
        nics=nics,
        disks=tuple(disks),
        owned_volumes=owned,
        created=meta.created if meta is not None else None,
    )


def network(xml: NetworkXML, active: bool, autostart: bool) -> Network:
    """A :class:`Network` from a network's XML."""
    meta = xml.kvmlab
    fwd = xml.forward_mode
    mode = (meta.mode if meta is not None and meta.mode else None) or (
        "isolated" if fwd is None else fwd
    )
    subnet = None
    if xml.ip_address:
        prefix = xml.ip_prefix
        if prefix is None and xml.ip_netmask:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{xml.ip_netmask}").prefixlen
        subnet = str(ipaddress.IPv4Interface(f"{xml.ip_address}/{prefix or 24}").network)
    rng = (xml.dhcp_start, xml.dhcp_end) if xml.dhcp_start and xml.dhcp_end else None
    return Network(
        name=xml.name or "",
        active=active,
        autostart=autostart,
        mode=mode,
        bridge=xml.bridge_name,
        subnet=subnet,
        gateway=xml.ip_address,
        dhcp_range=rng,
        kvmlab=meta is not None,
    )


def volume(pool: str, xml: VolumeXML) -> Volume:
    """A :class:`Volume` from a volume's XML."""
    return Volume(
        pool=pool,
        name=xml.name or "",
        path=xml.target_path or xml.key or "",
        format=xml.target_format,
        capacity=xml.capacity_bytes or 0,
        allocation=xml.allocation_bytes or 0,
        backing=xml.backing_path,
    )
