"""libvirt storage pool and volume XML as typed objects.

See https://libvirt.org/formatstorage.html. Sizes are stored with their ``unit`` attribute;
the ``*_bytes`` properties convert, whatever unit libvirt wrote.
"""

from __future__ import annotations

from kvmlab.libvirt.xmlbase import XMLFlag, XMLObject, XMLProperty, scale_to_bytes


class PoolXML(XMLObject):
    """``<pool type='dir'>``: a storage pool. Sizes are filled in by libvirt (read only)."""

    _TAG = "pool"
    _ORDER = ("name", "uuid", "capacity", "allocation", "available", "source",
              "target", "target/path", "target/permissions")  # fmt: skip

    type = XMLProperty("./@type")
    name = XMLProperty("./name")
    uuid = XMLProperty("./uuid")
    capacity = XMLProperty("./capacity", int)
    capacity_unit = XMLProperty("./capacity/@unit")
    allocation = XMLProperty("./allocation", int)
    allocation_unit = XMLProperty("./allocation/@unit")
    available = XMLProperty("./available", int)
    available_unit = XMLProperty("./available/@unit")
    target_path = XMLProperty("./target/path")

    @property
    def capacity_bytes(self) -> int | None:
        """Size of the pool's filesystem."""
        return scale_to_bytes(self.capacity, self.capacity_unit)

    @property
    def allocation_bytes(self) -> int | None:
        """Bytes used."""
        return scale_to_bytes(self.allocation, self.allocation_unit)

    @property
    def available_bytes(self) -> int | None:
        """Bytes free."""
        return scale_to_bytes(self.available, self.available_unit)


class VolumeXML(XMLObject):
    """``<volume>``: a storage volume, optionally a copy-on-write overlay of a backing file.

    ``key`` and ``target_path`` are set by libvirt; ``target_format`` is ``qcow2`` or ``raw``.
    """

    _TAG = "volume"
    _ORDER = ("name", "key", "source", "capacity", "allocation", "physical",
              "target", "target/path", "target/format", "target/permissions", "target/compat",
              "target/features", "target/features/lazy_refcounts",
              "backingStore", "backingStore/path", "backingStore/format")  # fmt: skip

    type = XMLProperty("./@type")
    name = XMLProperty("./name")
    key = XMLProperty("./key")
    capacity = XMLProperty("./capacity", int)
    capacity_unit = XMLProperty("./capacity/@unit")
    allocation = XMLProperty("./allocation", int)
    allocation_unit = XMLProperty("./allocation/@unit")
    target_path = XMLProperty("./target/path")
    target_format = XMLProperty("./target/format/@type")
    compat = XMLProperty("./target/compat")  # qcow2 version: 1.1 (v3) or 0.10 (v2)
    lazy_refcounts = XMLFlag("./target/features/lazy_refcounts")
    backing_path = XMLProperty("./backingStore/path")
    backing_format = XMLProperty("./backingStore/format/@type")

    @property
    def capacity_bytes(self) -> int | None:
        """The virtual size the guest sees."""
        return scale_to_bytes(self.capacity, self.capacity_unit)

    @capacity_bytes.setter
    def capacity_bytes(self, value: int) -> None:
        self.capacity, self.capacity_unit = value, "bytes"

    @property
    def allocation_bytes(self) -> int | None:
        """The bytes actually used on the host (0 when creating: sparse, not preallocated)."""
        return scale_to_bytes(self.allocation, self.allocation_unit)

    @allocation_bytes.setter
    def allocation_bytes(self, value: int) -> None:
        self.allocation, self.allocation_unit = value, "bytes"
