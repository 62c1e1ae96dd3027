"""The XML kvmlab generates: golden files, libvirt's schemas, and libvirt's test driver.

Each case's ``to_xml()`` must equal ``tests/data/golden/<case>.xml`` (rewrite them with
``pytest tests/unit --regen-golden``), validate with ``virt-xml-validate``, and survive being
defined on the test driver and read back through the mapper.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from kvmlab.errors import InvalidInput
from kvmlab.libvirt.build import (
    dir_pool,
    domain_from_spec,
    network_from_spec,
    qcow2_volume,
    random_mac,
    raw_volume,
)
from kvmlab.libvirt.domain import (
    MACHINE_NS,
    DomainXML,
    MachineMetadataXML,
    kvmlab_metadata_from_string,
)
from kvmlab.libvirt.network import NetworkXML
from kvmlab.libvirt.snapshot import SnapshotXML
from kvmlab.libvirt.storage import PoolXML, VolumeXML
from kvmlab.libvirt.xmlbase import XMLObject
from kvmlab.specs import Accel, MachineSpec, NetworkSpec, NicSpec

from .conftest import GOLDEN_DIR

CREATED = "2024-05-01T10:00:00+00:00"
MAC1, MAC2 = "52:54:00:0a:00:01", "52:54:00:0a:00:02"


def minimal_machine() -> DomainXML:
    spec = MachineSpec(name="tiny", image="alpine-3.19")
    return domain_from_spec(
        spec,
        accel=Accel.TCG,
        pool="kvmlab",
        disk_volume="tiny.qcow2",
        seed_volume=None,
        macs=[],
        created=CREATED,
    )


def full_machine(accel: Accel) -> DomainXML:
    spec = MachineSpec(
        name="web-1",
        image="alpine-3.19",
        cpus=2,
        memory=1536 * 1024**2,
        nics=(NicSpec("default"), NicSpec("default", mac=MAC2)),
        hostname="web",
    )
    return domain_from_spec(
        spec,
        accel=accel,
        pool="kvmlab",
        disk_volume="web-1.qcow2",
        seed_volume="web-1-seed.img",
        macs=[MAC1, MAC2],
        console_log="/var/log/kvmlab/web-1.log",
        emulator="/usr/bin/qemu-system-x86_64",
        created=CREATED,
    )


RESERVATIONS = (
    ("52:54:00:0a:00:01", "web", "10.70.0.10"),
    ("52:54:00:0a:00:02", "db", "10.70.0.11"),
)


def nat_network() -> NetworkXML:
    spec = NetworkSpec(name="lab", mode="nat", subnet="10.70.0.0/24", domain="lab.test",
                       reservations=RESERVATIONS)  # fmt: skip
    return network_from_spec(spec, bridge="virbr7", created=CREATED)


def isolated_network() -> NetworkXML:
    spec = NetworkSpec(name="backend", mode="isolated", subnet="10.71.0.0/28",
                       dhcp_range=("10.71.0.5", "10.71.0.9"),
                       reservations=(("52:54:00:0b:00:01", "db", "10.71.0.4"),))  # fmt: skip
    return network_from_spec(spec, bridge="virbr8", created=CREATED)


def bridge_network() -> NetworkXML:
    spec = NetworkSpec(name="lan", mode="bridge", bridge="br0")
    return network_from_spec(spec, bridge="br0", created=CREATED)


def snapshot() -> SnapshotXML:
    snap = SnapshotXML()
    snap.name = "before-upgrade"
    snap.description = "known good state"
    snap.memory_snapshot = "no"
    snap.add_disk("vda", "internal")
    snap.add_disk("vdb", "no")
    return snap


CASES: dict[str, Callable[[], XMLObject]] = {
    "domain-minimal": minimal_machine,
    "domain-kvm-2nics-seed-log": lambda: full_machine(Accel.KVM),
    "domain-tcg-2nics-seed-log": lambda: full_machine(Accel.TCG),
    "network-nat": nat_network,
    "network-isolated": isolated_network,
    "network-bridge": bridge_network,
    "pool-dir": lambda: dir_pool("scratch", "/var/lib/kvmlab/scratch"),
    "volume-overlay": lambda: qcow2_volume(
        "web-1.qcow2", 10 * 1024**3, backing=("/var/lib/kvmlab/images/alpine-3.19", "qcow2")
    ),
    "volume-raw": lambda: raw_volume("web-1-seed.img", 374784),
    "snapshot-internal": snapshot,
}

SCHEMAS: dict[type[XMLObject], str] = {
    DomainXML: "domain",
    NetworkXML: "network",
    PoolXML: "storagepool",
    VolumeXML: "storagevol",
    SnapshotXML: "domainsnapshot",
}


@pytest.mark.parametrize("case", CASES)
def test_matches_golden_file(case: str, regen_golden: bool) -> None:
    xml = CASES[case]().to_xml()
    golden = GOLDEN_DIR / f"{case}.xml"
    if regen_golden:
        golden.write_text(xml)
    assert golden.exists(), f"no golden file {golden}; run pytest tests/unit --regen-golden"
    assert xml == golden.read_text()


@pytest.mark.parametrize("case", CASES)
def test_validates_against_libvirt_schema(
    case: str, validate_xml: Callable[[str, str], None]
) -> None:
    obj = CASES[case]()
    validate_xml(obj.to_xml(), SCHEMAS[type(obj)])


@pytest.mark.parametrize("case", CASES)
def test_parsing_own_output_gives_the_same_xml(case: str) -> None:
    obj = CASES[case]()
    xml = obj.to_xml()
    assert type(obj).from_xml(xml).to_xml() == xml


@pytest.mark.parametrize("accel", [Accel.KVM, Accel.TCG])
def test_machine_survives_the_test_driver(test_conn: Any, accel: Accel) -> None:
    dom = test_conn.defineXML(full_machine(accel).to_xml())
    back = DomainXML.from_xml(dom.XMLDesc())

    assert back.name == "web-1"
    assert back.type == accel.domain_type
    assert back.memory_bytes == 1536 * 1024**2
    assert back.vcpus == 2
    assert back.cpu_mode == ("host-model" if accel is Accel.KVM else None)
    assert back.boot_devices == ["hd"]
    assert (back.acpi, back.apic) == (True, True)
    assert [(d.source_pool, d.source_volume, d.target_dev, d.driver_type, d.readonly)
            for d in back.disks] == [
        ("kvmlab", "web-1.qcow2", "vda", "qcow2", False),
        ("kvmlab", "web-1-seed.img", "vdb", "raw", True),
    ]  # fmt: skip
    assert [(n.mac, n.source_network, n.model) for n in back.interfaces] == [
        (MAC1, "default", "virtio"),
        (MAC2, "default", "virtio"),
    ]
    assert back.serials[0].log_file == "/var/log/kvmlab/web-1.log"
    assert back.serials[0].log_append is True
    assert back.consoles[0].target_type == "serial"
    agent = back.guest_agent_channel
    assert agent is not None and agent.target_type == "virtio"
    assert [r.backend for r in back.rngs] == ["/dev/urandom"]
    assert (back.on_poweroff, back.on_reboot) == ("destroy", "restart")
    assert back.kvmlab is not None
    assert back.kvmlab.image == "alpine-3.19"
    assert back.kvmlab.hostname == "web"
    assert back.kvmlab.created == CREATED
    assert back.kvmlab.template is False
    assert [(v.pool, v.name, v.role) for v in back.kvmlab.volumes] == [
        ("kvmlab", "web-1.qcow2", "disk"),
        ("kvmlab", "web-1-seed.img", "seed"),
    ]
    assert "<graphics" not in dom.XMLDesc()


def test_minimal_machine_survives_the_test_driver(test_conn: Any) -> None:
    dom = test_conn.defineXML(minimal_machine().to_xml())
    back = DomainXML.from_xml(dom.XMLDesc())
    assert (back.name, back.type, back.memory_bytes, back.vcpus) == ("tiny", "qemu", 256 << 20, 1)
    assert back.cpu_mode is None
    assert [d.source_volume for d in back.disks] == ["tiny.qcow2"]
    assert len(back.interfaces) == 0
    assert back.serials[0].log_file is None


def test_metadata_is_read_fast_from_libvirt_output(test_conn: Any) -> None:
    dom = test_conn.defineXML(full_machine(Accel.TCG).to_xml())
    meta = kvmlab_metadata_from_string(dom.XMLDesc())
    assert meta is not None and meta.image == "alpine-3.19"
    assert kvmlab_metadata_from_string("<domain><name>other</name></domain>") is None


def test_metadata_alone_goes_through_the_metadata_api(test_conn: Any) -> None:
    element = 2  # VIR_DOMAIN_METADATA_ELEMENT
    dom = test_conn.defineXML(full_machine(Accel.TCG).to_xml())
    meta = MachineMetadataXML.from_metadata_xml(dom.metadata(element, MACHINE_NS))
    assert meta.hostname == "web"
    assert [v.name for v in meta.volumes] == ["web-1.qcow2", "web-1-seed.img"]

    meta.template = True
    dom.setMetadata(element, meta.to_metadata_xml(), "kvmlab", MACHINE_NS, 0)
    back = DomainXML.from_xml(dom.XMLDesc())
    assert back.kvmlab is not None and back.kvmlab.template is True
    assert [v.role for v in back.kvmlab.volumes] == ["disk", "seed"]
    assert kvmlab_metadata_from_string("<domain><name>other</name></domain>") is None


@pytest.mark.parametrize(
    ("factory", "forward", "bridge", "ip", "hosts"),
    [
        (nat_network, "nat", "virbr7", ("10.70.0.1", 24), list(RESERVATIONS)),
        (isolated_network, None, "virbr8", ("10.71.0.1", 28),
         [("52:54:00:0b:00:01", "db", "10.71.0.4")]),
        (bridge_network, "bridge", "br0", (None, None), []),
    ],
)  # fmt: skip
def test_network_survives_the_test_driver(
    test_conn: Any,
    factory: Callable[[], NetworkXML],
    forward: str | None,
    bridge: str,
    ip: tuple[str | None, int | None],
    hosts: list[tuple[str, str, str]],
) -> None:
    made = factory()
    net = test_conn.networkDefineXML(made.to_xml())
    back = NetworkXML.from_xml(net.XMLDesc())
    assert back.name == made.name
    assert back.forward_mode == forward
    assert back.bridge_name == bridge
    assert (back.ip_address, back.ip_prefix) == ip
    assert [(h.mac, h.name, h.ip) for h in back.dhcp_hosts] == hosts
    assert made.kvmlab is not None and back.kvmlab is not None
    assert (back.kvmlab.mode, back.kvmlab.created) == (made.kvmlab.mode, CREATED)


def test_nat_network_has_range_domain_and_stp(test_conn: Any) -> None:
    back = NetworkXML.from_xml(test_conn.networkDefineXML(nat_network().to_xml()).XMLDesc())
    assert (back.dhcp_start, back.dhcp_end) == ("10.70.0.2", "10.70.0.254")
    assert (back.domain_name, back.domain_local_only) == ("lab.test", True)
    assert (back.bridge_stp, back.bridge_delay) == (True, 0)


def test_pool_survives_the_test_driver(test_conn: Any) -> None:
    pool = test_conn.storagePoolDefineXML(dir_pool("scratch", "/var/lib/kvmlab/scratch").to_xml())
    pool.create(0)
    back = PoolXML.from_xml(pool.XMLDesc())
    assert (back.type, back.name, back.target_path) == ("dir", "scratch", "/var/lib/kvmlab/scratch")
    assert back.uuid
    assert back.capacity_bytes is not None and back.capacity_bytes > 0
    assert back.available_bytes is not None and back.allocation_bytes is not None


def test_overlay_volume_survives_the_test_driver(test_conn: Any) -> None:
    base = test_conn.storagePoolLookupByName("kvmlab-images").storageVolLookupByName("alpine-3.19")
    made = qcow2_volume("web-1.qcow2", 10 * 1024**3, backing=(base.path(), "qcow2"))
    vol = test_conn.storagePoolLookupByName("kvmlab").createXML(made.to_xml(), 0)
    back = VolumeXML.from_xml(vol.XMLDesc())
    assert back.name == "web-1.qcow2"
    assert back.capacity_bytes == 10 * 1024**3
    assert back.target_format == "qcow2"
    assert (back.backing_path, back.backing_format) == (base.path(), "qcow2")
    assert back.target_path == back.key == "/var/lib/kvmlab/machines/web-1.qcow2"


def test_raw_volume_survives_the_test_driver(test_conn: Any) -> None:
    vol = test_conn.storagePoolLookupByName("kvmlab").createXML(raw_volume("s.img", 4096).to_xml())
    back = VolumeXML.from_xml(vol.XMLDesc())
    assert (back.capacity_bytes, back.allocation_bytes, back.target_format) == (4096, 0, "raw")
    assert back.backing_path is None


def test_snapshot_survives_the_test_driver(test_conn: Any) -> None:
    dom = test_conn.defineXML(full_machine(Accel.TCG).to_xml())
    snap = dom.snapshotCreateXML(snapshot().to_xml(), 0)
    back = SnapshotXML.from_xml(snap.getXMLDesc())
    assert back.name == "before-upgrade"
    assert back.description == "known good state"
    assert back.state == "shutoff"
    assert back.creation_time is not None and back.creation_time > 0
    assert [(d.name, d.snapshot) for d in back.disks] == [("vda", "internal"), ("vdb", "no")]
    # The machine's definition libvirt keeps inside the snapshot is not mapped, but kept.
    assert "<kvmlab:image>alpine-3.19</kvmlab:image>" in back.to_xml()
    assert back.to_xml().count("<disk ") == 4  # two snapshot disks + the domain's two


def test_random_mac_is_in_qemu_range_and_seedable() -> None:
    mac = random_mac(random.Random(4))
    assert mac.startswith("52:54:00:") and len(mac) == 17
    assert random_mac(random.Random(4)) == mac
    NicSpec("default", mac=random_mac())  # the spec accepts what it makes


def test_machine_needs_one_mac_per_nic() -> None:
    spec = MachineSpec(name="a", image="i", nics=(NicSpec("default"),))
    with pytest.raises(ValueError, match="MAC"):
        domain_from_spec(spec, accel=Accel.KVM, pool="p", disk_volume="d", seed_volume=None,
                         macs=[], created=CREATED)  # fmt: skip


@pytest.mark.parametrize("bridge", ["", "a-very-long-bridge-name", "br/0"])
def test_bad_bridge_names_are_refused(bridge: str) -> None:
    with pytest.raises(InvalidInput):
        network_from_spec(NetworkSpec(name="n"), bridge=bridge, created=CREATED)


def test_reservations_without_dhcp_are_refused() -> None:
    spec = NetworkSpec(
        name="n", dhcp=False, reservations=(("52:54:00:00:00:01", "a", "10.70.0.9"),)
    )
    with pytest.raises(InvalidInput, match="DHCP"):
        network_from_spec(spec, bridge="virbr9", created=CREATED)
