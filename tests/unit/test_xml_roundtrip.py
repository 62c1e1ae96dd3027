"""Editing a parsed document keeps what kvmlab does not map.

``tests/data/roundtrip/live-domain.xml`` is modeled on what libvirt 9 emits for a running
QEMU domain: ``id``, aliases, PCI addresses, ``<seclabel>``, a ``vnet3`` target, a connected
guest agent channel and another application's metadata namespace.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from kvmlab.errors import InvalidInput
from kvmlab.libvirt.domain import (
    DiskXML,
    DomainXML,
    InterfaceXML,
    is_kvmlab_domain,
    kvmlab_metadata_from_string,
)
from kvmlab.libvirt.network import NetworkXML

from .conftest import DATA

LIVE = (DATA / "roundtrip" / "live-domain.xml").read_text()


def same_tree(a: ET.Element, b: ET.Element) -> bool:
    """Equal tags, attributes, non-blank text and children, ignoring indentation."""
    return (
        a.tag == b.tag
        and a.attrib == b.attrib
        and (a.text or "").strip() == (b.text or "").strip()
        and len(a) == len(b)
        and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    )


def find(tree: ET.Element, path: str) -> ET.Element:
    found = tree.find(path)
    assert found is not None, path
    return found


def add_nic(dom: DomainXML, mac: str, network: str) -> InterfaceXML:
    nic = InterfaceXML()
    nic.type, nic.mac, nic.source_network, nic.model = "network", mac, network, "virtio"
    return dom.interfaces.add(nic)


def test_parse_then_write_gives_the_same_tree() -> None:
    out = DomainXML.from_xml(LIVE).to_xml()
    assert same_tree(ET.fromstring(out), ET.fromstring(LIVE))
    assert same_tree(ET.fromstring(DomainXML.from_xml(out).to_xml()), ET.fromstring(LIVE))


def test_namespace_prefixes_of_the_document_are_kept() -> None:
    out = DomainXML.from_xml(LIVE).to_xml()
    assert "<kvmlab:machine xmlns:kvmlab='https://kvmlab.dev/xmlns/machine/1'>" in out
    assert "<libosinfo:os id='http://alpinelinux.org/alpinelinux/3.19'/>" in out
    assert "ns0:" not in out


def test_live_values_are_read() -> None:
    dom = DomainXML.from_xml(LIVE)
    assert (dom.id, dom.name, dom.type) == (7, "web-1", "kvm")
    assert dom.memory_bytes == dom.current_memory_bytes == 512 * 1024**2
    assert dom.os_machine == "pc-i440fx-7.2"
    nic = dom.interfaces[0]
    assert (nic.target_dev, nic.alias, nic.mac) == ("vnet3", "net0", "52:54:00:4a:10:7e")
    assert nic.source_network == "default"
    agent = dom.guest_agent_channel
    assert agent is not None
    assert agent.state == "connected"
    assert agent.source_path == "/run/libvirt/qemu/channel/7-web-1/org.qemu.guest_agent.0"
    assert dom.serials[0].source_path == "/dev/pts/3"
    assert dom.serials[0].target_type == "isa-serial"
    assert dom.disks[1].readonly and not dom.disks[0].readonly
    assert dom.disks[0].alias == "virtio-disk0"
    assert dom.memballoon is not None and dom.memballoon.model == "virtio"


def test_kvmlab_metadata_is_read() -> None:
    dom = DomainXML.from_xml(LIVE)
    assert dom.is_kvmlab
    meta = dom.kvmlab
    assert meta is not None
    assert (meta.image, meta.hostname, meta.created) == (
        "alpine-3.19",
        "web",
        "2024-05-01T10:00:00+00:00",
    )
    assert meta.template is False
    assert [(v.pool, v.name, v.role) for v in meta.volumes] == [
        ("kvmlab", "web-1.qcow2", "disk"),
        ("kvmlab", "web-1-seed.img", "seed"),
    ]
    fast = kvmlab_metadata_from_string(LIVE)
    assert fast is not None and fast.image == "alpine-3.19"
    assert is_kvmlab_domain(LIVE)


def test_a_foreign_domain_is_not_kvmlabs() -> None:
    foreign = LIVE.replace("https://kvmlab.dev/xmlns/machine/1", "https://example.org/x")
    assert not is_kvmlab_domain(foreign)
    assert kvmlab_metadata_from_string(foreign) is None
    assert DomainXML.from_xml(foreign).kvmlab is None


def test_editing_keeps_unknown_elements_and_places_new_ones_in_order() -> None:
    dom = DomainXML.from_xml(LIVE)
    dom.memory_bytes = 1024**3
    dom.current_memory_bytes = 1024**3
    add_nic(dom, "52:54:00:4a:10:7f", "lab")
    out = dom.to_xml()
    tree = ET.fromstring(out)

    assert tree.findtext("memory") == "1048576"
    assert find(tree, "memory").get("unit") == "KiB"
    # Everything libvirt wrote is still there.
    for kept in ["seclabel", "resource/partition", "cpu/model", "clock/timer",
                 "devices/controller", "devices/input", "devices/audio",
                 "devices/memballoon/stats", "devices/rng/address"]:  # fmt: skip
        assert tree.find(kept) is not None, kept
    assert len(tree.findall("seclabel")) == 2
    assert find(tree, "devices/interface/alias").get("name") == "net0"
    assert "libosinfo:libosinfo" in out
    # The new NIC comes right after the existing one, before the serial port.
    tags = [child.tag for child in find(tree, "devices")]
    first = tags.index("interface")
    assert tags[first - 1 : first + 3] == ["controller", "interface", "interface", "serial"]
    back = DomainXML.from_xml(out)
    assert [(n.mac, n.source_network, n.target_dev) for n in back.interfaces] == [
        ("52:54:00:4a:10:7e", "default", "vnet3"),
        ("52:54:00:4a:10:7f", "lab", None),
    ]


def test_edited_live_xml_is_valid_and_defines(
    test_conn: Any, validate_xml: Callable[[str, str], None]
) -> None:
    dom = DomainXML.from_xml(LIVE)
    dom.memory_bytes = 1024**3
    add_nic(dom, "52:54:00:4a:10:7f", "default")
    validate_xml(dom.to_xml(), "domain")
    defined = DomainXML.from_xml(test_conn.defineXML(dom.to_xml()).XMLDesc())
    assert defined.memory_bytes == 1024**3
    assert [n.mac for n in defined.interfaces] == ["52:54:00:4a:10:7e", "52:54:00:4a:10:7f"]
    assert defined.kvmlab is not None and defined.kvmlab.image == "alpine-3.19"


def test_removing_values_removes_elements_left_empty() -> None:
    dom = DomainXML.from_xml(LIVE)
    dom.interfaces.remove(dom.interfaces[0])
    dom.acpi = False
    dom.title = None
    dom.kvmlab = None
    tree = ET.fromstring(dom.to_xml())
    assert tree.find("devices/interface") is None
    assert tree.find("features/acpi") is None and tree.find("features/apic") is not None
    assert tree.find("title") is None
    # libosinfo's metadata remains, so <metadata> stays.
    assert tree.find("metadata") is not None and not is_kvmlab_domain(dom.to_xml())


def test_flag_and_metadata_edits_on_a_live_document() -> None:
    dom = DomainXML.from_xml(LIVE)
    assert dom.kvmlab is not None
    dom.kvmlab.template = True
    dom.kvmlab.add_volume("kvmlab", "web-1-data.qcow2", "data")
    meta = kvmlab_metadata_from_string(dom.to_xml())
    assert meta is not None and meta.template is True
    assert [v.name for v in meta.volumes][-1] == "web-1-data.qcow2"
    out = dom.to_xml()
    # template goes before the volume entries, as in a fresh document.
    assert out.index("<kvmlab:template>yes</kvmlab:template>") < out.index("<kvmlab:volume ")


def test_special_characters_are_escaped() -> None:
    dom = DomainXML.from_xml(LIVE)
    dom.description = "a <b> & 'c' \"d\""
    dom.disks[0].serial = "x'y"
    back = DomainXML.from_xml(dom.to_xml())
    assert back.description == "a <b> & 'c' \"d\""
    assert back.disks[0].serial == "x'y"


def test_a_document_of_another_kind_is_refused() -> None:
    with pytest.raises(InvalidInput, match="<network>"):
        NetworkXML.from_xml(LIVE)
    with pytest.raises(InvalidInput, match="not valid XML"):
        DomainXML.from_xml("<domain>")


def test_a_bad_number_is_reported() -> None:
    dom = DomainXML.from_xml(LIVE.replace("<vcpu placement='static'>2<", "<vcpu>two<"))
    with pytest.raises(InvalidInput, match="vcpu"):
        _ = dom.vcpus


def test_a_fresh_document_is_built_in_libvirt_order_whatever_the_order_of_setting() -> None:
    dom = DomainXML()
    dom.on_reboot = "restart"
    dom.emulator = "/usr/bin/qemu-system-x86_64"
    dom.boot_devices = ["hd", "cdrom"]
    dom.os_type = "hvm"
    dom.apic = True
    dom.acpi = True
    dom.memory_bytes = 256 * 1024**2
    dom.name = "late"
    dom.interfaces.add(InterfaceXML())
    dom.disks.add(DiskXML())
    tree = ET.fromstring(dom.to_xml())
    assert [c.tag for c in tree] == ["name", "memory", "os", "features", "on_reboot", "devices"]
    assert [c.tag for c in find(tree, "os")] == ["type", "boot", "boot"]
    assert [c.tag for c in find(tree, "features")] == ["acpi", "apic"]
    assert [c.tag for c in find(tree, "devices")] == ["emulator", "disk", "interface"]
    assert dom.boot_devices == ["hd", "cdrom"]


def test_attribute_values_with_quotes_and_newlines_survive() -> None:
    dom = DomainXML.from_xml(LIVE)
    dom.interfaces[0].alias = "ua-'net'\n\t0"
    assert DomainXML.from_xml(dom.to_xml()).interfaces[0].alias == "ua-'net'\n\t0"
