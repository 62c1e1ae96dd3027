"""Pure functions and mappers for clones: a clone's domain XML from its source's.

A clone gets its own name, a new UUID (libvirt picks it: the ``<uuid>`` is dropped), new MACs,
its own disk volumes and a new NoCloud seed volume; nothing here talks to libvirt, so the
result is determined by the arguments (and unit-tested).

Linked clones record the volumes they are overlays of in kvmlab's metadata::

    <kvmlab:machine>
      ...
      <kvmlab:volume pool="kvmlab" name="web-1.qcow2" role="disk"/>
      <kvmlab:volume pool="kvmlab" name="web-1-seed.iso" role="seed"/>
      <kvmlab:clone-of>base</kvmlab:clone-of>
      <kvmlab:base pool="kvmlab" volume="base.qcow2" machine="base"/>
    </kvmlab:machine>

The metadata is informational (``kvmlab vm info``, ``virsh dumpxml``): who depends on whom is
always computed from the volumes' backing stores in the pool, never from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvmlab.errors import InvalidInput
from kvmlab.libvirt.domain import MACHINE_NS, DomainXML, MachineMetadataXML
from kvmlab.libvirt.xmlbase import XMLChildren, XMLObject, XMLProperty

_KVMLAB = {"kvmlab": MACHINE_NS}

SEED_ROLE = "seed"

VolumeRef = tuple[str, str]  # (pool, volume name)


class BaseRefXML(XMLObject):
    """``<kvmlab:base pool= volume= machine=/>``: a volume a linked clone is an overlay of."""

    _TAG = "kvmlab:base"
    _NS = _KVMLAB

    pool = XMLProperty("./@pool")
    volume = XMLProperty("./@volume")
    machine = XMLProperty("./@machine")


class CloneMetadataXML(MachineMetadataXML):
    """kvmlab's machine metadata with what clones add: the source and the base volumes.

    Wraps the same element as the :class:`MachineMetadataXML` it is made from, so edits show
    in the domain document: ``CloneMetadataXML(dom.kvmlab.element)``.
    """

    # the base class's _ORDER is inferred as a 5-tuple; a longer one is what XMLObject wants
    _ORDER = (*MachineMetadataXML._ORDER, "kvmlab:clone-of", "kvmlab:base")  # type: ignore[assignment]

    clone_of = XMLProperty("./kvmlab:clone-of")
    bases = XMLChildren("./kvmlab:base", BaseRefXML)

    def add_base(self, pool: str, volume: str, machine: str | None) -> BaseRefXML:
        """Record that this machine's disks are overlays of ``volume`` in ``pool``."""
        ref = BaseRefXML()
        ref.pool, ref.volume, ref.machine = pool, volume, machine
        return self.bases.add(ref)


def clone_names(new: str, count: int | None) -> list[str]:
    """The names of the clones: ``new`` alone, or ``new-1`` .. ``new-N`` with a count."""
    if count is None:
        return [new]
    if count < 1:
        raise InvalidInput(
            f"--count must be at least 1, not {count}", hint="leave --count out for one clone"
        )
    return [f"{new}-{i}" for i in range(1, count + 1)]


def clone_volume_name(clone: str, role: str | None, index: int) -> str:
    """The name of a clone's volume: ``NAME.qcow2`` for the (first) disk, as ``vm create``
    names it, ``NAME-seed.iso`` for the seed, ``NAME-ROLE-I.qcow2`` for anything else."""
    if role == SEED_ROLE:
        return f"{clone}-seed.iso"
    if index == 0 and role in (None, "disk"):
        return f"{clone}.qcow2"
    return f"{clone}-{role or 'disk'}-{index}.qcow2"


def source_volumes(
    source: DomainXML,
) -> tuple[list[tuple[VolumeRef, str | None]], VolumeRef | None]:
    """The source's owned volumes that a clone copies (with their role), and its seed.

    Raises :class:`InvalidInput` for a machine kvmlab did not make: its disks' ownership is
    unknown, so kvmlab cannot tell what a clone must copy.
    """
    meta = source.kvmlab
    if meta is None:
        raise InvalidInput(
            f"{source.name} was not made by kvmlab, so kvmlab does not know which disks to copy",
            hint="clone it with `virt-clone`",
        )
    disks: list[tuple[VolumeRef, str | None]] = []
    seed: VolumeRef | None = None
    for v in meta.volumes:
        if not v.name:
            continue
        ref = (v.pool or "", v.name)
        if v.role == SEED_ROLE:
            seed = ref
        else:
            disks.append((ref, v.role))
    if not disks:
        raise InvalidInput(f"{source.name} owns no disk volume to clone")
    return disks, seed


def clone_domain(
    source: DomainXML,
    *,
    name: str,
    volume_map: Mapping[VolumeRef, VolumeRef],
    seed: VolumeRef | None,
    macs: Sequence[str],
    created: str,
    linked: bool,
) -> DomainXML:
    """The clone ``name`` of the (inactive) domain ``source``.

    ``volume_map`` maps each source disk volume to the clone's; ``seed`` is the clone's new
    NoCloud seed volume (replacing the source's, which is never shared); ``macs`` gives one
    new MAC per interface. A template's read-only disks become writable in the clone; with
    ``linked`` the source volumes are recorded as the clone's bases.
    """
    src_name = source.name or ""
    _, src_seed = source_volumes(source)
    if len(macs) != len(source.interfaces):
        raise ValueError(f"{len(source.interfaces)} interfaces but {len(macs)} MAC addresses")
    dom = source.copy()
    dom.name = name
    dom.uuid = None  # libvirt generates a new one
    dom.id = None
    dom.title = None
    for disk in dom.disks:
        ref = (disk.source_pool or "", disk.source_volume or "")
        if ref in volume_map:
            disk.source_pool, disk.source_volume = volume_map[ref]
            disk.readonly = False  # a template's disk is read-only; its clones' are not
        elif src_seed is not None and ref == src_seed:
            if seed is None:
                raise ValueError("the source has a seed, so the clone needs one")
            disk.source_pool, disk.source_volume = seed
        elif disk.source_volume and disk.device == "disk" and not disk.readonly:
            # a writable disk the source does not own: two machines must not share it
            raise InvalidInput(
                f"{src_name} has disk {disk.source_pool}/{disk.source_volume}, which it "
                "does not own; a clone would share it",
                hint="detach that disk from the source first",
            )
        disk.alias = None
    for nic, mac in zip(dom.interfaces, macs, strict=True):
        nic.mac = mac
        nic.target_dev = None
        nic.alias = None
    for dev in (*dom.serials, *dom.consoles, *dom.channels):
        dev.alias = None
        if dev.log_file and src_name and src_name in dev.log_file:
            dev.log_file = dev.log_file.replace(src_name, name)
    old = dom.kvmlab
    assert old is not None  # source_volumes() checked it
    meta = CloneMetadataXML(old.element)
    roles = _roles(old, volume_map)
    meta.hostname = name
    meta.created = created
    meta.template = None
    meta.clone_of = src_name
    meta.bases = []
    meta.volumes = []
    for (src_ref, (pool, vol)), role in zip(volume_map.items(), roles, strict=True):
        meta.add_volume(pool, vol, role)
        if linked:
            meta.add_base(src_ref[0], src_ref[1], src_name)
    if seed is not None:
        meta.add_volume(seed[0], seed[1], SEED_ROLE)
    return dom


def _roles(meta: MachineMetadataXML, volume_map: Mapping[VolumeRef, VolumeRef]) -> list[str | None]:
    roles: dict[VolumeRef, str | None] = {
        (v.pool or "", v.name or ""): v.role for v in meta.volumes
    }
    return [roles.get(ref, "disk") for ref in volume_map]


def template_domain(source: DomainXML) -> DomainXML:
    """``source`` frozen as a template: metadata ``template=true``, disks read-only."""
    dom = source.copy()
    meta = dom.kvmlab
    if meta is None:
        raise InvalidInput(f"{source.name} was not made by kvmlab; it cannot be a template")
    meta.template = True
    disks, _ = source_volumes(source)
    owned = {ref for ref, _role in disks}
    for disk in dom.disks:
        if (disk.source_pool or "", disk.source_volume or "") in owned:
            disk.readonly = True
    return dom
