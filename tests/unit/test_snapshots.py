"""Snapshot tree rendering, the per-machine lock, and the snapshot XML plan (no daemon)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.domain import DiskXML, DomainXML
from kvmlab.libvirt.snapshot import guest_layout
from kvmlab.models import Snapshot, SnapshotKind
from kvmlab.services.locks import lock_path, machine_lock
from kvmlab.services.snapshots import snapshot_plan, tree_rows

URI = "qemu:///system"


def _snap(
    name: str, parent: str | None = None, created: int = 0, current: bool = False
) -> Snapshot:
    return Snapshot("vm", name, SnapshotKind.MEMORY, "running", "internal", created, parent,
                    current=current)  # fmt: skip


# -- the tree -----------------------------------------------------------------------------------
def test_tree_draws_branches_and_marks_the_current() -> None:
    snaps = [
        _snap("root", None, 1),
        _snap("a", "root", 2),
        _snap("a1", "a", 3),
        _snap("a2", "a", 4, current=True),
        _snap("b", "root", 5),
        _snap("b1", "b", 6),
        _snap("other", None, 7),
    ]
    assert [label for label, _ in tree_rows(snaps)] == [
        "root",
        "├─ a",
        "│  ├─ a1",
        "│  └─ a2 *",
        "└─ b",
        "   └─ b1",
        "other",
    ]


def test_tree_with_a_missing_parent_makes_a_root() -> None:
    rows = tree_rows([_snap("x", "deleted-meanwhile"), _snap("y", "x")])
    assert [(label, s.name) for label, s in rows] == [("x", "x"), ("└─ y", "y")]


def test_tree_of_nothing_is_empty() -> None:
    assert tree_rows([]) == []


# -- the lock -----------------------------------------------------------------------------------
def test_second_holder_is_busy_naming_the_first(tmp_path: Path) -> None:
    with machine_lock(tmp_path, URI, "web", "snapshot create"):
        with pytest.raises(errors.Busy) as err, machine_lock(tmp_path, URI, "web", "revert"):
            pass
        msg = err.value.message
        assert msg.startswith(f"VM web is busy: snapshot create by pid {os.getpid()} since 20")
        with machine_lock(tmp_path, URI, "db", "snapshot delete"):  # another machine: free
            pass
        with machine_lock(tmp_path, "qemu+ssh://h/system", "web", "try"):  # another host
            pass
    with machine_lock(tmp_path, URI, "web", "snapshot revert"):  # released
        pass


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), machine_lock(tmp_path, URI, "web", "try"):
        raise RuntimeError("boom")
    with machine_lock(tmp_path, URI, "web", "try"):
        pass


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; "
        "from kvmlab.services.locks import machine_lock; "
        f"cm = machine_lock(Path({str(tmp_path)!r}), {URI!r}, 'web', 'snapshot create'); "
        "cm.__enter__(); print('held', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(errors.Busy) as err, machine_lock(tmp_path, URI, "web", "try"):
            pass
        assert f"snapshot create by pid {proc.pid} since" in err.value.message
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while True:  # the kernel drops a dead holder's lock: no stale lock files
        try:
            with machine_lock(tmp_path, URI, "web", "try"):
                break
        except errors.Busy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert lock_path(tmp_path, URI, "web").parent == tmp_path / "locks"


# -- the plan -----------------------------------------------------------------------------------
class _FakeHypervisor:
    def __init__(self, dom: DomainXML) -> None:
        self.dom = dom

    def domain_xml(self, name: str, inactive: bool = False) -> DomainXML:
        return self.dom


def _env_with(dom: DomainXML) -> Env:
    env = Env(uri=URI, state_dir=Path("/nonexistent"))
    env._hypervisor = _FakeHypervisor(dom)  # type: ignore[assignment]
    return env


def _disk(dev: str, fmt: str, readonly: bool = False, device: str = "disk") -> DiskXML:
    d = DiskXML()
    d.type, d.device, d.driver_name, d.driver_type = "volume", device, "qemu", fmt
    d.source_pool, d.source_volume = "kvmlab", f"vm-{dev}.img"
    d.target_dev, d.target_bus, d.readonly = dev, "virtio", readonly
    return d


def test_plan_snapshots_the_qcow2_disk_and_skips_the_readonly_seed(
    validate_xml: Callable[[str, str], None],
) -> None:
    dom = DomainXML()
    dom.name = "vm"
    dom.disks.add(_disk("vda", "qcow2"))
    dom.disks.add(_disk("vdb", "raw", readonly=True))
    xml = snapshot_plan(_env_with(dom), "vm", "s1", "before the upgrade")
    assert [(d.name, d.snapshot) for d in xml.disks] == [("vda", "internal"), ("vdb", "no")]
    assert (xml.name, xml.description) == ("s1", "before the upgrade")
    validate_xml(xml.to_xml(), "domainsnapshot")


def test_plan_refuses_a_raw_writable_disk_naming_it() -> None:
    dom = DomainXML()
    dom.disks.add(_disk("vda", "qcow2"))
    dom.disks.add(_disk("vdc", "raw"))
    with pytest.raises(errors.SnapshotUnsupported) as err:
        snapshot_plan(_env_with(dom), "vm", "s1", None)
    msg: Any = err.value.message
    assert "disk vdc (volume kvmlab/vm-vdc.img) is raw" in msg and "need qcow2" in msg


class _HypervisorWithExternal(_FakeHypervisor):
    def state(self, name: str) -> Any:
        from kvmlab.models import MachineState

        return MachineState.RUNNING

    def list_snapshots(self, name: str) -> list[Snapshot]:
        return [_snap("ext1")._replace(location="external")]


def test_a_machine_with_external_snapshots_is_refused(tmp_path: Path) -> None:
    from kvmlab.services.snapshots import create_snapshot

    dom = DomainXML()
    dom.disks.add(_disk("vda", "qcow2"))
    env = Env(uri=URI, state_dir=tmp_path)
    env._hypervisor = _HypervisorWithExternal(dom)  # type: ignore[assignment]
    with pytest.raises(errors.SnapshotUnsupported) as err:
        create_snapshot(env, "vm", "s1")
    assert "vm has external snapshots (ext1)" in err.value.message
    assert "will not mix" in err.value.message


# -- which reverts may load into the running QEMU -----------------------------------------------
SNAPSHOT_DATA = Path(__file__).parent.parent / "data" / "snapshot"


def _layouts(edit: Callable[[ET.Element], object] | None = None) -> tuple[Any, Any]:
    """guest_layout of a snapshot's saved machine and of the live one (libvirt 9.0's own XML
    for a tiny machine with a NIC on a NAT network, recorded from the sandboxed daemon)."""
    saved = ET.parse(SNAPSHOT_DATA / "snapshot.xml").getroot().find("./domain")
    live = ET.parse(SNAPSHOT_DATA / "live-domain.xml").getroot()
    assert saved is not None
    if edit is not None:
        edit(live)
    return guest_layout(saved), guest_layout(live)


def test_same_hardware_matches_despite_runtime_details() -> None:
    saved, live = _layouts()
    assert saved == live  # aliases, tap name, pty paths, image-chain indexes, seclabel differ
    assert ("cpu", "qemu64") in live
    assert any(row[0] == "interface" and "mac.address=52:54:00:54:e1:5a" in row for row in live)


def _set(path: str, attr: str, value: str) -> Callable[[ET.Element], None]:
    def edit(live: ET.Element) -> None:
        el = live.find(path)
        assert el is not None, path
        el.set(attr, value)

    return edit


def _add_rng(live: ET.Element) -> None:
    devices = live.find("./devices")
    assert devices is not None
    ET.SubElement(ET.SubElement(devices, "rng", model="virtio"), "address", type="pci",
                  domain="0x0000", bus="0x00", slot="0x09", function="0x0")  # fmt: skip


def _more_memory(live: ET.Element) -> None:
    mem = live.find("./memory")
    assert mem is not None
    mem.text = "524288"


@pytest.mark.parametrize(
    "edit",
    [
        _add_rng,  # a device hot-plugged since
        _more_memory,
        _set("./devices/interface/mac", "address", "52:54:00:00:00:01"),
        _set("./devices/interface/model", "type", "e1000"),
        _set("./devices/interface/source", "network", "other"),
        _set("./devices/disk/source", "volume", "other.qcow2"),
        _set("./devices/disk/address", "slot", "0x09"),
        _set("./os/type", "machine", "pc-q35-7.2"),
    ],
    ids=["device-added", "memory", "mac", "nic-model", "network", "disk-source", "slot", "type"],
)
def test_changed_hardware_does_not_match(edit: Callable[[ET.Element], None]) -> None:
    saved, live = _layouts(edit)
    assert saved != live
