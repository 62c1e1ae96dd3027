"""Pure functions turning what the user asks for (:mod:`kvmlab.specs`) into libvirt XML objects.

Nothing here talks to libvirt or reads the clock: names of volumes, MACs and times come in
as arguments, so the output is fully determined by the input (and golden-tested).

The domain and storage mappers are imported by the functions that build them: ``kvmlab net
create`` needs only the network mapper, and should start as fast as virsh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvmlab.errors import InvalidInput
from kvmlab.libvirt.network import NetworkMetadataXML, NetworkXML
from kvmlab.specs import Accel

if TYPE_CHECKING:
    import random

    from kvmlab.libvirt.domain import DiskXML, DomainXML, InterfaceXML, MachineMetadataXML
    from kvmlab.libvirt.storage import PoolXML, VolumeXML
    from kvmlab.specs import MachineSpec, NetworkSpec

MAC_PREFIX = "52:54:00"  # QEMU's locally administered OUI, what libvirt uses too
_MAX_BRIDGE_NAME = 15  # IFNAMSIZ - 1


def random_mac(rng: random.Random | None = None) -> str:
    """A random MAC address in QEMU's ``52:54:00`` range."""
    import random  # here, not above: only machines and clones need MACs

    r = rng or random.SystemRandom()
    return MAC_PREFIX + "".join(f":{r.randrange(256):02x}" for _ in range(3))


def _volume_disk(pool: str, volume: str, dev: str, fmt: str, readonly: bool) -> DiskXML:
    from kvmlab.libvirt.domain import DiskXML

    disk = DiskXML()
    disk.type, disk.device = "volume", "disk"
    disk.driver_name, disk.driver_type = "qemu", fmt
    disk.source_pool, disk.source_volume = pool, volume
    disk.target_dev, disk.target_bus = dev, "virtio"
    disk.readonly = readonly
    return disk


def _network_nic(network: str, mac: str) -> InterfaceXML:
    from kvmlab.libvirt.domain import InterfaceXML

    nic = InterfaceXML()
    nic.type = "network"
    nic.mac = mac
    nic.source_network = network
    nic.model = "virtio"
    return nic


def _add_console(dom: DomainXML, log_file: str | None) -> None:
    """A pty serial port (logged to ``log_file`` on the host) and the console on it."""
    from kvmlab.libvirt.domain import ConsoleXML, SerialXML

    serial = SerialXML()
    serial.type = "pty"
    if log_file:
        serial.log_file, serial.log_append = log_file, True
    serial.target_port = 0
    dom.serials.add(serial)
    console = ConsoleXML()
    console.type = "pty"
    console.target_type, console.target_port = "serial", 0
    dom.consoles.add(console)


def _add_guest_agent(dom: DomainXML) -> None:
    """The virtio-serial channel of the QEMU guest agent (libvirt picks the socket path)."""
    from kvmlab.libvirt.domain import GUEST_AGENT_CHANNEL, ChannelXML

    channel = ChannelXML()
    channel.type = "unix"
    channel.target_type, channel.target_name = "virtio", GUEST_AGENT_CHANNEL
    dom.channels.add(channel)


def _machine_metadata(
    spec: MachineSpec, pool: str, disk_volume: str, seed_volume: str | None, created: str
) -> MachineMetadataXML:
    from kvmlab.libvirt.domain import MachineMetadataXML

    meta = MachineMetadataXML()
    meta.image = spec.image
    meta.hostname = spec.effective_hostname
    meta.created = created
    meta.add_volume(pool, disk_volume, "disk")
    if seed_volume:
        meta.add_volume(pool, seed_volume, "seed")
    return meta


def domain_from_spec(
    spec: MachineSpec,
    *,
    accel: Accel,
    pool: str,
    disk_volume: str,
    seed_volume: str | None,
    macs: Sequence[str],
    console_log: str | None = None,
    emulator: str | None = None,
    created: str,
) -> DomainXML:
    """The headless x86_64 domain for ``spec``, booting from ``disk_volume`` in ``pool``.

    ``macs`` gives one MAC per ``spec.nics``; ``seed_volume`` (a cloud-init NoCloud image,
    also in ``pool``) is attached read-only as the second disk; ``console_log`` is a file
    on the host that receives the serial console; ``created`` is an ISO 8601 time.
    """
    from kvmlab.libvirt.domain import DomainXML, MemballoonXML, RngXML

    if len(macs) != len(spec.nics):
        raise ValueError(f"{len(spec.nics)} NICs but {len(macs)} MAC addresses")
    dom = DomainXML()
    dom.type = accel.domain_type
    dom.name = spec.name
    dom.kvmlab = _machine_metadata(spec, pool, disk_volume, seed_volume, created)
    dom.memory_bytes = spec.memory
    dom.vcpus = spec.cpus
    dom.os_type, dom.os_arch, dom.os_machine = "hvm", "x86_64", "pc"
    dom.boot_devices = ["hd"]
    dom.acpi = dom.apic = True
    if accel is Accel.KVM:
        # host-model, not host-passthrough: passthrough breaks on nested hosts and migration.
        dom.cpu_mode = "host-model"
    dom.clock_offset = "utc"
    dom.on_poweroff, dom.on_reboot = "destroy", "restart"
    dom.emulator = emulator
    dom.disks.add(_volume_disk(pool, disk_volume, "vda", "qcow2", readonly=False))
    if seed_volume:
        dom.disks.add(_volume_disk(pool, seed_volume, "vdb", "raw", readonly=True))
    for nic, mac in zip(spec.nics, macs, strict=True):
        dom.interfaces.add(_network_nic(nic.network, mac))
    _add_console(dom, console_log)
    _add_guest_agent(dom)
    rng = RngXML()
    rng.model, rng.backend_model, rng.backend = "virtio", "random", "/dev/urandom"
    dom.rngs.add(rng)
    balloon = MemballoonXML()
    balloon.model = "virtio"
    dom.memballoon = balloon
    # No <graphics>: kvmlab machines are headless (and <graphics type='none'/> is invalid).
    return dom


def network_from_spec(spec: NetworkSpec, *, bridge: str, created: str) -> NetworkXML:
    """The libvirt network for ``spec``.

    ``bridge`` is the Linux bridge: one libvirt creates for ``nat`` and ``isolated``
    (e.g. ``virbr3``), an existing host bridge for ``bridge`` mode. ``isolated`` has no
    ``<forward>``; ``bridge`` mode has no IP/DHCP (the LAN provides them).
    """
    if not bridge or len(bridge) > _MAX_BRIDGE_NAME or "/" in bridge or bridge.isspace():
        raise InvalidInput(
            f"bridge name {bridge!r} is not a valid interface name",
            hint=f"use 1 to {_MAX_BRIDGE_NAME} characters, no '/'",
        )
    net = NetworkXML()
    net.name = spec.name
    meta = NetworkMetadataXML()
    meta.mode, meta.created = spec.mode, created
    if spec.mode != "bridge":  # on a host bridge the LAN, not kvmlab, decides the subnet
        meta.subnet = spec.subnet
    net.kvmlab = meta
    if spec.mode == "bridge":
        net.forward_mode = "bridge"
        net.bridge_name = bridge
        return net
    if spec.mode == "nat":
        net.forward_mode = "nat"
    net.bridge_name, net.bridge_stp, net.bridge_delay = bridge, True, 0
    if spec.domain:
        net.domain_name, net.domain_local_only = spec.domain, True
    net.ip_address, net.ip_prefix = str(spec.gateway), spec.network.prefixlen
    if spec.dhcp:
        net.dhcp_start, net.dhcp_end = spec.effective_dhcp_range
    elif spec.reservations:
        raise InvalidInput("DHCP reservations need DHCP", hint="drop --no-dhcp")
    for mac, name, ip in spec.reservations:
        net.add_dhcp_host(mac, name or None, ip)
    return net


def dir_pool(name: str, path: str) -> PoolXML:
    """A directory storage pool ``name`` keeping its volumes in ``path`` (on the host)."""
    from kvmlab.libvirt.storage import PoolXML

    pool = PoolXML()
    pool.type = "dir"
    pool.name = name
    pool.target_path = path
    return pool


def qcow2_volume(
    name: str, capacity_bytes: int, backing: tuple[str, str] | None = None
) -> VolumeXML:
    """A sparse qcow2 v3 volume with lazy refcounts; with ``backing=(path, format)`` an overlay.

    libvirt 9.0 would make a qcow2 v2 (compat 0.10) file. Lazy refcounts let QEMU write the
    clusters' reference counts without flushing the disk before each L2 table update: after
    a revert, every cluster of the snapshot's saved RAM area is shared, so the next snapshot
    with RAM copies them one by one, and with eager refcounts that was two ``fdatasync`` per
    64 KiB cluster (~2300 for a 256 MiB guest; 0.9-1.1 s instead of 0.25 s). The price: after
    a host crash QEMU rebuilds the image's refcounts when it next opens it (automatically; no
    data is lost).
    """
    vol = _volume(name, capacity_bytes, "qcow2")
    vol.compat, vol.lazy_refcounts = "1.1", True
    if backing is not None:
        vol.backing_path, vol.backing_format = backing
    return vol


def raw_volume(name: str, capacity_bytes: int) -> VolumeXML:
    """A sparse raw volume (e.g. a cloud-init seed or an uploaded image)."""
    return _volume(name, capacity_bytes, "raw")


def _volume(name: str, capacity_bytes: int, fmt: str) -> VolumeXML:
    from kvmlab.libvirt.storage import VolumeXML

    if capacity_bytes <= 0:
        raise InvalidInput(f"volume {name!r} needs a size larger than zero")
    vol = VolumeXML()
    vol.name = name
    vol.capacity_bytes = capacity_bytes
    # allocation 0: libvirt would otherwise preallocate a raw volume to its full capacity.
    vol.allocation_bytes = 0
    vol.target_format = fmt
    return vol


# -- install media (issue 6) ----------------------------------------------------------------
def add_install_media(
    dom: DomainXML,
    *,
    cdrom: tuple[str, str] | None = None,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str | None = None,
) -> DomainXML:
    """Add a CD-ROM (``(pool, volume)``, booted before the disk) and/or direct kernel boot.

    The CD sits on IDE: SeaBIOS boots from it on the ``pc`` machine; a guest kernel without
    ATA drivers (the Debian cloud kernel) cannot read it, but an installer's initramfs that
    was loaded from it by the boot loader needs nothing more from it. ``kernel``/``initrd``
    are file paths on the daemon's host.
    """
    if cdrom is not None:
        from kvmlab.libvirt.domain import DiskXML

        cd = DiskXML()
        cd.type, cd.device = "volume", "cdrom"
        cd.driver_name, cd.driver_type = "qemu", "raw"
        cd.source_pool, cd.source_volume = cdrom
        cd.target_dev, cd.target_bus = "hdc", "ide"
        cd.readonly = True
        dom.disks.add(cd)
        dom.boot_devices = ["cdrom", "hd"]
    if (initrd or cmdline) and not kernel:
        raise InvalidInput("--initrd and --cmdline need --kernel")
    if kernel:
        dom.kernel, dom.initrd, dom.cmdline = kernel, initrd, cmdline
    return dom
