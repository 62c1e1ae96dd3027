"""The pure parts of clones and templates: naming, the clone's XML, dependencies, the journal."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmlab import errors
from kvmlab.libvirt.build import domain_from_spec
from kvmlab.libvirt.clonexml import (
    CloneMetadataXML,
    clone_domain,
    clone_names,
    clone_volume_name,
    source_volumes,
    template_domain,
)
from kvmlab.libvirt.domain import DomainXML
from kvmlab.models import Machine, MachineState, Volume
from kvmlab.services import journal
from kvmlab.services.clones import dependents_of, machine_paths, volume_owners
from kvmlab.specs import Accel, MachineSpec, NicSpec

CREATED = "2026-01-02T03:04:05+00:00"
P = "/pool"


def source_machine(template: bool = False) -> DomainXML:
    spec = MachineSpec(
        name="base", image="tiny", nics=(NicSpec("lab"), NicSpec("lab", mac="52:54:00:00:00:02"))
    )
    dom = domain_from_spec(
        spec,
        accel=Accel.TCG,
        pool="kvmlab",
        disk_volume="base.qcow2",
        seed_volume="base-seed.iso",
        macs=["52:54:00:00:00:01", "52:54:00:00:00:02"],
        console_log="/var/log/kvmlab/base.log",
        created=CREATED,
    )
    dom.uuid = "11111111-2222-3333-4444-555555555555"
    return template_domain(dom) if template else dom


# -- naming ----------------------------------------------------------------------------------


def test_one_clone_keeps_its_name_a_count_numbers_them() -> None:
    assert clone_names("web", None) == ["web"]
    assert clone_names("web", 3) == ["web-1", "web-2", "web-3"]


@pytest.mark.parametrize("count", [0, -2])
def test_a_count_below_one_is_refused(count: int) -> None:
    with pytest.raises(errors.InvalidInput, match="--count must be at least 1"):
        clone_names("web", count)


def test_volume_names_follow_vm_create() -> None:
    assert clone_volume_name("web-1", "disk", 0) == "web-1.qcow2"
    assert clone_volume_name("web-1", "seed", 0) == "web-1-seed.iso"
    assert clone_volume_name("web-1", "data", 1) == "web-1-data-1.qcow2"


# -- the clone's XML -------------------------------------------------------------------------


def test_clone_has_its_own_identity_and_volumes(validate_xml: Callable[[str, str], None]) -> None:
    src = source_machine()
    dom = clone_domain(
        src,
        name="web-1",
        volume_map={("kvmlab", "base.qcow2"): ("kvmlab", "web-1.qcow2")},
        seed=("kvmlab", "web-1-seed.iso"),
        macs=["52:54:00:aa:00:01", "52:54:00:aa:00:02"],
        created=CREATED,
        linked=True,
    )
    assert dom.name == "web-1"
    assert dom.uuid is None  # libvirt makes a new one
    assert [n.mac for n in dom.interfaces] == ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]
    assert [(d.source_volume, d.readonly) for d in dom.disks] == [
        ("web-1.qcow2", False),
        ("web-1-seed.iso", True),
    ]
    assert dom.serials[0].log_file == "/var/log/kvmlab/web-1.log"
    meta = CloneMetadataXML(dom.kvmlab.element)  # type: ignore[union-attr]
    assert (meta.hostname, meta.created, meta.template, meta.clone_of) == (
        "web-1",
        CREATED,
        False,
        "base",
    )
    assert [(v.name, v.role) for v in meta.volumes] == [
        ("web-1.qcow2", "disk"),
        ("web-1-seed.iso", "seed"),
    ]
    assert [(b.pool, b.volume, b.machine) for b in meta.bases] == [("kvmlab", "base.qcow2", "base")]
    # the source is untouched
    assert src.name == "base" and src.disks[0].source_volume == "base.qcow2"
    validate_xml(dom.to_xml(), "domain")


def test_clone_survives_the_test_driver(test_conn: Any) -> None:
    src = source_machine()
    test_conn.defineXML(src.to_xml())
    dom = clone_domain(
        src,
        name="web-1",
        volume_map={("kvmlab", "base.qcow2"): ("kvmlab", "web-1.qcow2")},
        seed=("kvmlab", "web-1-seed.iso"),
        macs=["52:54:00:aa:00:01", "52:54:00:aa:00:02"],
        created=CREATED,
        linked=False,
    )
    back = DomainXML.from_xml(test_conn.defineXML(dom.to_xml()).XMLDesc())
    assert back.uuid and back.uuid != src.uuid
    meta = CloneMetadataXML(back.kvmlab.element)  # type: ignore[union-attr]
    assert meta.clone_of == "base" and list(meta.bases) == []  # a full clone has no base


def test_clone_of_a_template_is_writable_and_no_template() -> None:
    src = source_machine(template=True)
    assert src.kvmlab is not None and src.kvmlab.template
    assert src.disks[0].readonly  # the template's base is read-only
    dom = clone_domain(
        src,
        name="c",
        volume_map={("kvmlab", "base.qcow2"): ("kvmlab", "c.qcow2")},
        seed=("kvmlab", "c-seed.iso"),
        macs=["52:54:00:aa:00:01", "52:54:00:aa:00:02"],
        created=CREATED,
        linked=True,
    )
    assert dom.kvmlab is not None and dom.kvmlab.template is False
    assert dom.disks[0].readonly is False


def test_source_volumes_split_disks_and_seed() -> None:
    disks, seed = source_volumes(source_machine())
    assert disks == [(("kvmlab", "base.qcow2"), "disk")]
    assert seed == ("kvmlab", "base-seed.iso")


def test_a_machine_kvmlab_did_not_make_is_refused() -> None:
    dom = source_machine()
    dom.kvmlab = None
    with pytest.raises(errors.InvalidInput, match="not made by kvmlab"):
        source_volumes(dom)


def test_one_mac_per_interface() -> None:
    with pytest.raises(ValueError, match="2 interfaces but 1 MAC"):
        clone_domain(
            source_machine(),
            name="c",
            volume_map={("kvmlab", "base.qcow2"): ("kvmlab", "c.qcow2")},
            seed=("kvmlab", "c-seed.iso"),
            macs=["52:54:00:aa:00:01"],
            created=CREATED,
            linked=True,
        )


# -- dependencies ----------------------------------------------------------------------------


def vol(name: str, backing: str | None = None, pool: str = "kvmlab") -> Volume:
    return Volume(pool, name, f"{P}/{name}", "qcow2", 1 << 30, 1 << 20, backing)


def machine(name: str, *volumes: str) -> Machine:
    return Machine(
        name, "uuid", MachineState.STOPPED, 1, 1 << 28, True,
        owned_volumes=tuple(("kvmlab", v) for v in volumes),
    )  # fmt: skip


VOLUMES = [
    vol("tiny", pool="kvmlab-images"),
    vol("base.qcow2", f"{P}/tiny"),
    vol("base-seed.iso"),
    vol("web-1.qcow2", f"{P}/base.qcow2"),
    vol("web-2.qcow2", f"{P}/base.qcow2"),
    vol("web-1a.qcow2", f"{P}/web-1.qcow2"),  # a linked clone of a linked clone
    vol("base-snap.qcow2", f"{P}/base.qcow2"),  # base's own external snapshot
    vol("stray.qcow2", f"{P}/web-2.qcow2"),  # made by hand: no machine owns it
    vol("other.qcow2", f"{P}/tiny"),
]
MACHINES = [
    machine("base", "base.qcow2", "base-seed.iso", "base-snap.qcow2"),
    machine("web-1", "web-1.qcow2"),
    machine("web-2", "web-2.qcow2"),
    machine("web-1a", "web-1a.qcow2"),
    machine("other", "other.qcow2"),
]


def test_dependents_at_any_depth_deepest_first() -> None:
    owners = volume_owners(MACHINES, VOLUMES)
    deps = dependents_of(machine_paths(MACHINES[0], VOLUMES), VOLUMES, owners)
    assert deps.machines == ("web-1a", "web-1", "web-2")  # web-1a before its base web-1
    assert deps.volumes == ("kvmlab/stray.qcow2",)


def test_leaves_have_no_dependent_machines() -> None:
    owners = volume_owners(MACHINES, VOLUMES)
    web2 = dependents_of(machine_paths(MACHINES[2], VOLUMES), VOLUMES, owners)
    assert web2 == ((), ("kvmlab/stray.qcow2",))
    assert dependents_of(machine_paths(MACHINES[3], VOLUMES), VOLUMES, owners) == ((), ())


def test_the_image_is_not_a_machines_dependent() -> None:
    """Machines on the same image are siblings, not dependents of each other."""
    owners = volume_owners(MACHINES, VOLUMES)
    deps = dependents_of(machine_paths(MACHINES[4], VOLUMES), VOLUMES, owners)
    assert "base" not in deps.machines


# -- the journal -----------------------------------------------------------------------------


def test_journal_round_trip_and_cleanup(tmp_path: Path) -> None:
    assert not journal.has_pending(tmp_path)
    planned = [
        journal.PlannedMachine("web-1", (("kvmlab", "web-1.qcow2"), ("kvmlab", "web-1-seed.iso"))),
        journal.PlannedMachine("web-2", (("kvmlab", "web-2.qcow2"),)),
    ]
    path = journal.begin(tmp_path, "clone", "qemu:///x", planned)
    assert journal.has_pending(tmp_path)
    (got,) = journal.read_all(tmp_path, "qemu:///x")
    assert got.machines == tuple(planned) and got.op == "clone" and got.pid == os.getpid()
    assert got.owner_alive()  # this very process
    assert journal.read_all(tmp_path, "qemu:///other") == []
    journal.rewrite(got, planned[1:])
    assert journal.read_all(tmp_path)[0].machines == (planned[1],)
    journal.end(path)
    assert not journal.has_pending(tmp_path) and journal.read_all(tmp_path) == []


def test_a_dead_writer_is_noticed(tmp_path: Path) -> None:
    path = journal.begin(tmp_path, "clone", "u", [journal.PlannedMachine("a", ())])
    j = journal.parse(path)
    assert j is not None
    dead = j._replace(pid=2**22 + 7)  # above pid_max's default: no such process
    assert not dead.owner_alive()
    reused = j._replace(pid_start="1")  # same pid, another start time: pid reused
    assert not reused.owner_alive()


def test_garbage_is_not_a_journal(tmp_path: Path) -> None:
    d = journal.journal_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "clone-1-x.json").write_text("{not json")
    (d / "clone-2-x.json").write_text('{"op": "clone"}')
    assert journal.read_all(tmp_path) == []


def test_leftovers_are_volumes_of_undefined_clones_no_domain_owns() -> None:
    j = journal.Journal(
        Path("x"), "clone", "u", 1, None,
        (
            journal.PlannedMachine("c-1", (("p", "c-1.qcow2"), ("p", "c-1-seed.iso"))),
            journal.PlannedMachine("c-2", (("p", "c-2.qcow2"), ("p", "c-2-seed.iso"))),
            journal.PlannedMachine("c-3", (("p", "c-3.qcow2"),)),
        ),
    )  # fmt: skip
    # c-1 is defined (whole); c-2 was half made; c-3's name was taken meanwhile by a machine
    # that owns c-3.qcow2 (so it must not be deleted)
    got = journal.leftovers(j, {"c-1"}, {("p", "c-1.qcow2"), ("p", "c-3.qcow2")})
    assert got == [("p", "c-2.qcow2"), ("p", "c-2-seed.iso")]
