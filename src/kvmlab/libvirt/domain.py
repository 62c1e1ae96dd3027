"""libvirt domain XML (a kvmlab machine) as typed objects.

See https://libvirt.org/formatdomain.html. Only what kvmlab reads or writes is mapped;
everything else in a parsed document (``<seclabel>``, ``<address>``, controllers, another
tool's metadata) is kept as it is.

kvmlab marks its machines with ``<metadata><kvmlab:machine xmlns:kvmlab="MACHINE_NS">``:
the image the machine came from, its hostname, when it was made, whether it is a template,
and the storage volumes it owns (deleted with it).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kvmlab.libvirt.xmlbase import (
    ON_OFF,
    XMLChild,
    XMLChildren,
    XMLFlag,
    XMLObject,
    XMLProperty,
    element_to_xml,
    scale_to_bytes,
    with_namespace,
)

MACHINE_NS = "https://kvmlab.dev/xmlns/machine/1"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

_KVMLAB = {"kvmlab": MACHINE_NS}


class OwnedVolumeXML(XMLObject):
    """``<kvmlab:volume pool= name= role=/>``: a storage volume the machine owns."""

    _TAG = "kvmlab:volume"
    _NS = _KVMLAB

    pool = XMLProperty("./@pool")
    name = XMLProperty("./@name")
    role = XMLProperty("./@role")  # "disk" or "seed": why the machine has it


class MachineMetadataXML(XMLObject):
    """``<kvmlab:machine>``: what kvmlab knows about a machine beyond libvirt's own XML.

    Read and write it alone (without redefining the machine) with
    ``virDomainGetMetadata``/``virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT, ...,
    "kvmlab", MACHINE_NS)`` through :meth:`from_metadata_xml` and :meth:`to_metadata_xml`.
    """

    _TAG = "kvmlab:machine"
    _NS = _KVMLAB
    _ORDER = ("kvmlab:image", "kvmlab:hostname", "kvmlab:created", "kvmlab:template",
              "kvmlab:volume")  # fmt: skip

    image = XMLProperty("./kvmlab:image")
    hostname = XMLProperty("./kvmlab:hostname")
    created = XMLProperty("./kvmlab:created")  # ISO 8601 time
    template = XMLProperty("./kvmlab:template", bool, default=False)
    volumes = XMLChildren("./kvmlab:volume", OwnedVolumeXML)

    @classmethod
    def from_metadata_xml(cls, xml: str) -> MachineMetadataXML:
        """Parse what ``virDomainGetMetadata`` returns: ``<machine>`` without a namespace."""
        return cls(with_namespace(ET.fromstring(xml), MACHINE_NS))

    def to_metadata_xml(self) -> str:
        """The element without its namespace, as ``virDomainSetMetadata`` wants it."""
        return element_to_xml(with_namespace(self.element, None))

    def add_volume(self, pool: str, name: str, role: str | None = None) -> OwnedVolumeXML:
        """Record that the machine owns volume ``name`` in ``pool``."""
        vol = OwnedVolumeXML()
        vol.pool, vol.name, vol.role = pool, name, role
        return self.volumes.add(vol)


class BootXML(XMLObject):
    """``<os><boot dev=.../>``: one entry of the BIOS boot order."""

    _TAG = "boot"

    dev = XMLProperty("./@dev")


class DiskXML(XMLObject):
    """``<disk type='volume|file' device='disk|cdrom'>``."""

    _TAG = "disk"
    _ORDER = ("driver", "source", "backingStore", "target", "iotune", "readonly", "shareable",
              "transient", "serial", "wwn", "boot", "alias", "address")  # fmt: skip

    type = XMLProperty("./@type")
    device = XMLProperty("./@device")
    driver_name = XMLProperty("./driver/@name")
    driver_type = XMLProperty("./driver/@type")  # qcow2 | raw
    source_pool = XMLProperty("./source/@pool")
    source_volume = XMLProperty("./source/@volume")
    source_file = XMLProperty("./source/@file")
    target_dev = XMLProperty("./target/@dev")
    target_bus = XMLProperty("./target/@bus")
    readonly = XMLFlag("./readonly")
    serial = XMLProperty("./serial")
    alias = XMLProperty("./alias/@name")


class InterfaceXML(XMLObject):
    """``<interface type='network|bridge'>``; ``target_dev`` and ``alias`` exist when live."""

    _TAG = "interface"
    _ORDER = ("mac", "source", "virtualport", "ip", "route", "script", "target", "guest",
              "model", "driver", "backend", "filterref", "tune", "link", "mtu", "rom",
              "alias", "address")  # fmt: skip

    type = XMLProperty("./@type")
    mac = XMLProperty("./mac/@address")
    source_network = XMLProperty("./source/@network")
    source_bridge = XMLProperty("./source/@bridge")
    model = XMLProperty("./model/@type")
    target_dev = XMLProperty("./target/@dev")
    alias = XMLProperty("./alias/@name")


class _CharDeviceXML(XMLObject):
    """What ``<serial>``, ``<console>`` and ``<channel>`` share."""

    _ORDER = ("source", "protocol", "log", "target", "alias", "address")

    type = XMLProperty("./@type")  # pty | unix | file ...
    source_path = XMLProperty("./source/@path")  # the pty or socket, when live
    source_mode = XMLProperty("./source/@mode")
    log_file = XMLProperty("./log/@file")
    log_append = XMLProperty("./log/@append", ON_OFF)
    target_type = XMLProperty("./target/@type")
    target_port = XMLProperty("./target/@port", int)
    alias = XMLProperty("./alias/@name")


class SerialXML(_CharDeviceXML):
    """``<serial type='pty'>``: the guest's first serial port."""

    _TAG = "serial"


class ConsoleXML(_CharDeviceXML):
    """``<console type='pty'>``: what ``virsh console`` attaches to."""

    _TAG = "console"


class ChannelXML(_CharDeviceXML):
    """``<channel type='unix'>`` with a virtio target, e.g. the QEMU guest agent's."""

    _TAG = "channel"

    target_name = XMLProperty("./target/@name")
    state = XMLProperty("./target/@state")  # connected | disconnected, in live XML only


class RngXML(XMLObject):
    """``<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>``."""

    _TAG = "rng"
    _ORDER = ("rate", "backend", "alias", "address")

    model = XMLProperty("./@model")
    backend_model = XMLProperty("./backend/@model")
    backend = XMLProperty("./backend")


class MemballoonXML(XMLObject):
    """``<memballoon model='virtio'/>``."""

    _TAG = "memballoon"

    model = XMLProperty("./@model")


class DomainXML(XMLObject):
    """``<domain>``: a machine's libvirt definition (inactive or live)."""

    _TAG = "domain"
    _NS = _KVMLAB
    _ORDER = (
        "name", "uuid", "genid", "title", "description", "metadata", "metadata/kvmlab:machine",
        "maxMemory", "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking",
        "vcpu", "vcpus", "iothreads", "cputune", "numatune", "resource", "sysinfo",
        "bootloader", "bootloader_args",
        "os", "os/type", "os/firmware", "os/loader", "os/nvram", "os/kernel", "os/initrd",
        "os/cmdline", "os/dtb", "os/boot", "os/bootmenu", "os/smbios", "os/bios",
        "idmap", "features", "features/pae", "features/acpi", "features/apic", "cpu", "clock",
        "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf",
        "devices", "devices/emulator", "devices/disk", "devices/controller", "devices/lease",
        "devices/filesystem", "devices/interface", "devices/smartcard", "devices/serial",
        "devices/parallel", "devices/console", "devices/channel", "devices/input",
        "devices/tpm", "devices/graphics", "devices/sound", "devices/audio", "devices/video",
        "devices/hostdev", "devices/redirdev", "devices/redirfilter", "devices/hub",
        "devices/watchdog", "devices/memballoon", "devices/rng", "devices/panic",
        "devices/shmem", "devices/memory", "devices/iommu", "devices/vsock",
        "seclabel",
    )  # fmt: skip

    type = XMLProperty("./@type")  # kvm | qemu
    id = XMLProperty("./@id", int)  # only while running
    name = XMLProperty("./name")
    uuid = XMLProperty("./uuid")
    title = XMLProperty("./title")
    description = XMLProperty("./description")
    memory = XMLProperty("./memory", int)  # in memory_unit, which libvirt writes as KiB
    memory_unit = XMLProperty("./memory/@unit")
    current_memory = XMLProperty("./currentMemory", int)
    current_memory_unit = XMLProperty("./currentMemory/@unit")
    vcpus = XMLProperty("./vcpu", int)

    os_type = XMLProperty("./os/type")  # hvm
    os_arch = XMLProperty("./os/type/@arch")
    os_machine = XMLProperty("./os/type/@machine")
    boot = XMLChildren("./os/boot", BootXML)
    kernel = XMLProperty("./os/kernel")
    initrd = XMLProperty("./os/initrd")
    cmdline = XMLProperty("./os/cmdline")

    acpi = XMLFlag("./features/acpi")
    apic = XMLFlag("./features/apic")
    cpu_mode = XMLProperty("./cpu/@mode")
    clock_offset = XMLProperty("./clock/@offset")
    on_poweroff = XMLProperty("./on_poweroff")
    on_reboot = XMLProperty("./on_reboot")
    on_crash = XMLProperty("./on_crash")

    emulator = XMLProperty("./devices/emulator")
    disks = XMLChildren("./devices/disk", DiskXML)
    interfaces = XMLChildren("./devices/interface", InterfaceXML)
    serials = XMLChildren("./devices/serial", SerialXML)
    consoles = XMLChildren("./devices/console", ConsoleXML)
    channels = XMLChildren("./devices/channel", ChannelXML)
    rngs = XMLChildren("./devices/rng", RngXML)
    memballoon = XMLChild("./devices/memballoon", MemballoonXML)

    kvmlab = XMLChild("./metadata/kvmlab:machine", MachineMetadataXML)

    @property
    def memory_bytes(self) -> int | None:
        """``<memory>`` in bytes, whatever unit libvirt used."""
        return scale_to_bytes(self.memory, self.memory_unit, "KiB")

    @memory_bytes.setter
    def memory_bytes(self, value: int) -> None:
        self.memory, self.memory_unit = value // 1024, "KiB"

    @property
    def current_memory_bytes(self) -> int | None:
        """``<currentMemory>`` in bytes (the balloon target)."""
        return scale_to_bytes(self.current_memory, self.current_memory_unit, "KiB")

    @current_memory_bytes.setter
    def current_memory_bytes(self, value: int) -> None:
        self.current_memory, self.current_memory_unit = value // 1024, "KiB"

    @property
    def boot_devices(self) -> list[str]:
        """The ``<boot dev=...>`` entries in order, e.g. ``["hd"]``."""
        return [b.dev for b in self.boot if b.dev]

    @boot_devices.setter
    def boot_devices(self, devs: list[str]) -> None:
        entries = []
        for dev in devs:
            entry = BootXML()
            entry.dev = dev
            entries.append(entry)
        self.boot = entries

    @property
    def guest_agent_channel(self) -> ChannelXML | None:
        """The QEMU guest agent's channel, if the machine has one."""
        return next((c for c in self.channels if c.target_name == GUEST_AGENT_CHANNEL), None)

    @property
    def is_kvmlab(self) -> bool:
        """Whether kvmlab made (and owns) this machine."""
        return self.kvmlab is not None


def kvmlab_metadata_from_string(xml: str) -> MachineMetadataXML | None:
    """kvmlab's metadata from a domain XML (or a bare ``<kvmlab:machine>``), else ``None``.

    Fast enough to run on every domain for ``kvmlab ls``: a domain without kvmlab's
    namespace is rejected by a substring test before any parsing.
    """
    if MACHINE_NS not in xml:
        return None
    root = ET.fromstring(xml)
    tag = f"{{{MACHINE_NS}}}machine"
    if root.tag == tag:
        return MachineMetadataXML(root)
    metadata = root.find("metadata")
    found = metadata.find(tag) if metadata is not None else None
    return MachineMetadataXML(found) if found is not None else None


def is_kvmlab_domain(xml: str) -> bool:
    """Whether a domain XML carries kvmlab's metadata (i.e. kvmlab made the machine)."""
    return kvmlab_metadata_from_string(xml) is not None
