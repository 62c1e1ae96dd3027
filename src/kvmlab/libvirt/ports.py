"""A machine's port forwards as typed XML, kept in the domain's ``<metadata>``.

They live in their own element (``<kvmlab-ports:ports>``, namespace :data:`PORTS_NS`) set with
``virDomainSetMetadata`` rather than inside ``<kvmlab:machine>``: writing them never rewrites
the machine's other kvmlab metadata, which other kvmlab commands (snapshots, clones) edit.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kvmlab.libvirt.xmlbase import (
    XMLChildren,
    XMLObject,
    XMLProperty,
    element_to_xml,
    with_namespace,
)

PORTS_NS = "https://kvmlab.dev/xmlns/ports/1"
PORTS_KEY = "kvmlab-ports"  # the namespace prefix libvirt writes

_NS = {"kvmlab-ports": PORTS_NS}


class PortXML(XMLObject):
    """``<port proto= host-ip= host-port= guest-ip= guest-port= network=/>``."""

    _TAG = "kvmlab-ports:port"
    _NS = _NS

    proto = XMLProperty("./@proto")  # tcp | udp
    host_ip = XMLProperty("./@host-ip")  # empty: every address of the host
    host_port = XMLProperty("./@host-port", int)
    guest_ip = XMLProperty("./@guest-ip")
    guest_port = XMLProperty("./@guest-port", int)
    network = XMLProperty("./@network")
    mac = XMLProperty("./@mac")


class PortsXML(XMLObject):
    """``<kvmlab-ports:ports>``: every port forward of one machine."""

    _TAG = "kvmlab-ports:ports"
    _NS = _NS

    ports = XMLChildren("./kvmlab-ports:port", PortXML)

    @classmethod
    def from_metadata_xml(cls, xml: str) -> PortsXML:
        """Parse what ``virDomainGetMetadata`` returns (the element without its namespace)."""
        return cls(with_namespace(ET.fromstring(xml), PORTS_NS))

    def to_metadata_xml(self) -> str:
        """The element without its namespace, as ``virDomainSetMetadata`` wants it."""
        return element_to_xml(with_namespace(self.element, None))
