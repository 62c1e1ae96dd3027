"""``add_install_media``: a CD-ROM booted first, or direct kernel boot (issue 6).

Every generated domain is validated against libvirt's schema and defined on the test driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvmlab.errors import InvalidInput
from kvmlab.libvirt.build import add_install_media, domain_from_spec
from kvmlab.libvirt.domain import DomainXML
from kvmlab.specs import Accel, MachineSpec

CREATED = "2026-01-01T00:00:00+00:00"


def _machine(spec: MachineSpec) -> DomainXML:
    return domain_from_spec(
        spec, accel=Accel.TCG, pool="kvmlab", disk_volume=f"{spec.name}.qcow2",
        seed_volume=f"{spec.name}-seed.iso", macs=[], created=CREATED,
    )  # fmt: skip


def test_cdrom_boots_before_the_disk(
    test_conn: Any, validate_xml: Callable[[str, str], None]
) -> None:
    spec = MachineSpec(name="inst", image="deb-iso", cdrom="deb-iso", disk_size=8 << 30)
    dom = add_install_media(_machine(spec), cdrom=("kvmlab-images", "deb-iso"))
    validate_xml(dom.to_xml(), "domain")
    back = DomainXML.from_xml(test_conn.defineXML(dom.to_xml()).XMLDesc())
    assert back.boot_devices == ["cdrom", "hd"]
    cd = [d for d in back.disks if d.device == "cdrom"]
    assert [(d.source_pool, d.source_volume, d.target_bus, d.readonly) for d in cd] == [
        ("kvmlab-images", "deb-iso", "ide", True)
    ]
    assert back.kvmlab is not None and back.kvmlab.image == "deb-iso"


def test_direct_kernel_boot(test_conn: Any, validate_xml: Callable[[str, str], None]) -> None:
    spec = MachineSpec(name="k", image="tiny", kernel="vmlinuz", initrd="initrd",
                       cmdline="console=ttyS0 kvmlab.shell")  # fmt: skip
    dom = add_install_media(_machine(spec), kernel="/p/vmlinuz", initrd="/p/initrd",
                            cmdline=spec.cmdline)  # fmt: skip
    validate_xml(dom.to_xml(), "domain")
    back = DomainXML.from_xml(test_conn.defineXML(dom.to_xml()).XMLDesc())
    assert (back.kernel, back.initrd, back.cmdline) == (
        "/p/vmlinuz", "/p/initrd", "console=ttyS0 kvmlab.shell"
    )
    assert back.boot_devices == ["hd"]


def test_spec_checks() -> None:
    with pytest.raises(InvalidInput, match="--cdrom needs --disk"):
        MachineSpec(name="a", image="iso", cdrom="iso")
    with pytest.raises(InvalidInput, match="need --kernel"):
        MachineSpec(name="a", image="tiny", initrd="i")
    with pytest.raises(InvalidInput, match="--kernel image name"):
        MachineSpec(name="a", image="tiny", kernel="../etc/passwd")
    with pytest.raises(InvalidInput, match="need --kernel"):
        add_install_media(DomainXML(), cmdline="x")
