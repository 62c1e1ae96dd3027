"""libvirt network XML as typed objects (https://libvirt.org/formatnetwork.html).

Only the first ``<ip>`` element (kvmlab makes IPv4 networks) is mapped; other ones, like
anything else kvmlab does not know, are kept untouched in a parsed document.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kvmlab.libvirt.xmlbase import (
    ON_OFF,
    XMLChild,
    XMLChildren,
    XMLObject,
    XMLProperty,
)

NETWORK_NS = "https://kvmlab.dev/xmlns/network/1"

_KVMLAB = {"kvmlab": NETWORK_NS}


class NetworkMetadataXML(XMLObject):
    """``<kvmlab:network>``: how kvmlab made the network."""

    _TAG = "kvmlab:network"
    _NS = _KVMLAB
    _ORDER = ("kvmlab:mode", "kvmlab:subnet", "kvmlab:created")

    mode = XMLProperty("./kvmlab:mode")  # nat | isolated | bridge
    subnet = XMLProperty("./kvmlab:subnet")  # e.g. 10.70.0.0/24
    created = XMLProperty("./kvmlab:created")  # ISO 8601 time


class DhcpHostXML(XMLObject):
    """``<host mac= name= ip=/>``: a DHCP reservation."""

    _TAG = "host"

    mac = XMLProperty("./@mac")
    name = XMLProperty("./@name")
    ip = XMLProperty("./@ip")


class NetworkXML(XMLObject):
    """``<network>``: a libvirt virtual network.

    ``forward_mode`` is ``nat``, ``route`` or ``bridge``; ``None`` (no ``<forward>``) is an
    isolated network.
    """

    _TAG = "network"
    _NS = _KVMLAB
    _ORDER = (
        "name", "uuid", "title", "description", "metadata", "metadata/kvmlab:network",
        "forward", "forward/nat", "forward/nat/address", "forward/nat/port",
        "bridge", "mtu", "mac", "domain", "dns", "bandwidth", "vlan", "portOptions",
        "ip", "ip/tftp", "ip/dhcp", "ip/dhcp/range", "ip/dhcp/host", "ip/dhcp/bootp", "route",
    )  # fmt: skip

    name = XMLProperty("./name")
    uuid = XMLProperty("./uuid")
    forward_mode = XMLProperty("./forward/@mode")
    nat_port_start = XMLProperty("./forward/nat/port/@start", int)
    nat_port_end = XMLProperty("./forward/nat/port/@end", int)
    bridge_name = XMLProperty("./bridge/@name")
    bridge_stp = XMLProperty("./bridge/@stp", ON_OFF)
    bridge_delay = XMLProperty("./bridge/@delay", int)
    mac = XMLProperty("./mac/@address")
    domain_name = XMLProperty("./domain/@name")
    domain_local_only = XMLProperty("./domain/@localOnly", bool)
    dns_enable = XMLProperty("./dns/@enable", bool)
    ip_address = XMLProperty("./ip/@address")
    ip_prefix = XMLProperty("./ip/@prefix", int)
    ip_netmask = XMLProperty("./ip/@netmask")
    dhcp_start = XMLProperty("./ip/dhcp/range/@start")
    dhcp_end = XMLProperty("./ip/dhcp/range/@end")
    dhcp_hosts = XMLChildren("./ip/dhcp/host", DhcpHostXML)

    kvmlab = XMLChild("./metadata/kvmlab:network", NetworkMetadataXML)

    def add_dhcp_host(self, mac: str, name: str | None, ip: str) -> DhcpHostXML:
        """Reserve ``ip`` (and a hostname) for ``mac`` in the network's DHCP server."""
        host = DhcpHostXML()
        host.mac, host.name, host.ip = mac, name, ip
        return self.dhcp_hosts.add(host)

    @property
    def is_kvmlab(self) -> bool:
        """Whether kvmlab made this network."""
        return self.kvmlab is not None


def network_metadata_from_string(xml: str) -> NetworkMetadataXML | None:
    """kvmlab's metadata from a network XML (or a bare ``<kvmlab:network>``), else ``None``."""
    if NETWORK_NS not in xml:
        return None
    root = ET.fromstring(xml)
    tag = f"{{{NETWORK_NS}}}network"
    if root.tag == tag:
        return NetworkMetadataXML(root)
    metadata = root.find("metadata")
    found = metadata.find(tag) if metadata is not None else None
    return NetworkMetadataXML(found) if found is not None else None
