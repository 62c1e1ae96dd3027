"""libvirt domain snapshot XML as typed objects.

See https://libvirt.org/formatsnapshot.html. The ``<domain>`` copy libvirt stores inside a
snapshot is not mapped: it stays as it is in a parsed document.
"""

from __future__ import annotations

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
