"""libvirt domain snapshot XML as typed objects.

See https://libvirt.org/formatsnapshot.html. The ``<domain>`` copy libvirt stores inside a
snapshot is not mapped: it stays as it is in a parsed document.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kvmlab.libvirt.xmlbase import XMLChildren, XMLObject, XMLProperty


class SnapshotDiskXML(XMLObject):
    """``<disks><disk name='vda' snapshot='internal|external|no'>``."""

    _TAG = "disk"
    _ORDER = ("driver", "source")

    name = XMLProperty("./@name")  # target dev (vda) or source path
    snapshot = XMLProperty("./@snapshot")  # internal | external | no
    type = XMLProperty("./@type")  # file, for an external snapshot
    driver_type = XMLProperty("./driver/@type")  # qcow2 for an external overlay
    source_file = XMLProperty("./source/@file")


class SnapshotXML(XMLObject):
    """``<domainsnapshot>``: one snapshot of a machine."""

    _TAG = "domainsnapshot"
    _ORDER = ("name", "description", "state", "parent", "parent/name", "creationTime",
              "memory", "disks", "disks/disk", "domain", "inactiveDomain", "active",
              "cookie")  # fmt: skip

    name = XMLProperty("./name")
    description = XMLProperty("./description")
    state = XMLProperty("./state")  # the machine's state when taken: running, shutoff...
    creation_time = XMLProperty("./creationTime", int)  # seconds since the epoch
    parent_name = XMLProperty("./parent/name")
    memory_snapshot = XMLProperty("./memory/@snapshot")  # no | internal | external
    memory_file = XMLProperty("./memory/@file")
    disks = XMLChildren("./disks/disk", SnapshotDiskXML)

    def add_disk(
        self,
        name: str,
        snapshot: str,
        *,
        driver_type: str | None = None,
        source_file: str | None = None,
    ) -> SnapshotDiskXML:
        """Say how disk ``name`` is snapshotted (``internal``, ``external`` or ``no``)."""
        disk = SnapshotDiskXML()
        disk.name, disk.snapshot = name, snapshot
        if source_file is not None:
            disk.type = "file"
        disk.driver_type, disk.source_file = driver_type, source_file
        return self.disks.add(disk)


# what is behind a device, for the ones whose source a guest's saved state depends on
_BEHIND: dict[str, tuple[tuple[str, str], ...]] = {
    "disk": (("source", "pool"), ("source", "volume"), ("source", "file"), ("source", "dev"),
             ("source", "name"), ("target", "dev")),
    # a NIC's tap name and a network's bridge are runtime details; its MAC and where it is
    # plugged are not
    "interface": (("mac", "address"), ("model", "type"), ("source", "network"), ("source", "dev")),
}  # fmt: skip


def _attr(el: ET.Element, path: str, name: str) -> str:
    found = el.find(path)
    return "" if found is None else found.get(name, "")


def guest_layout(domain: ET.Element) -> tuple[tuple[str, ...], ...]:
    """What must be equal for a saved RAM image to fit a running machine.

    ``domain`` is a ``<domain>`` element: the live definition, or the copy a snapshot keeps.
    Covers machine type, CPU model, memory, vCPUs, and every device with a guest-visible
    address (its bus position, and for disks and NICs what is behind them). Runtime-only details
    (aliases, pty paths, tap names, image-chain indexes) are left out, so a machine restarted
    since the snapshot still matches if it has the same hardware.
    """
    rows: list[tuple[str, ...]] = [
        ("machine", _attr(domain, "./os/type", "arch"), _attr(domain, "./os/type", "machine")),
        ("cpu", domain.findtext("./cpu/model") or ""),
        ("memory", domain.findtext("./memory") or "", _attr(domain, "./memory", "unit")),
        ("vcpu", domain.findtext("./vcpu") or "", _attr(domain, "./vcpu", "current")),
    ]
    devices = domain.find("./devices")
    for dev in [] if devices is None else list(devices):
        address = dev.find("./address")
        if address is None:
            continue
        row = [dev.tag, dev.get("type", ""), dev.get("device", ""), dev.get("model", "")]
        row += [f"{k}={v}" for k, v in sorted(address.attrib.items())]
        for child, key in _BEHIND.get(dev.tag, ()):
            el = dev.find(child)
            if el is not None and el.get(key):
                row.append(f"{child}.{key}={el.get(key)}")
        if dev.tag == "interface" and dev.get("type") == "bridge":
            row.append("source.bridge=" + _attr(dev, "./source", "bridge"))
        if dev.find("./readonly") is not None:
            row.append("readonly")
        rows.append(tuple(row))
    return tuple(sorted(rows))
