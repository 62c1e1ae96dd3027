"""Clones: new machines from a stopped machine or a template, linked (qcow2 overlays) or full.

Every clone has its own identity: name, UUID, MACs, hostname (= its name) and a new NoCloud
seed volume (new instance-id); the source's seed is never copied. Volumes are made through
libvirt's storage API (so ``qemu+ssh://`` URIs work), and each clone's domain is defined
last, after its volumes exist, under an operation journal (:mod:`kvmlab.services.journal`):
a clone killed half-way leaves only whole machines once the next kvmlab command ran
:func:`recover`.

Who depends on whom is computed from libvirt alone: a volume in the machine pool whose
backing store is a path of a machine's volume is that machine's dependent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.clonexml import (
    VolumeRef,
    clone_domain,
    clone_names,
    clone_volume_name,
    source_volumes,
)
from kvmlab.models import CloneProgress, Machine, MachineState, Volume
from kvmlab.names import validate_name
from kvmlab.services import journal
from kvmlab.services.storage import IMAGE_POOL, MACHINE_POOL
from kvmlab.timestamps import utc_now

OVERLAY_MIN_BYTES = 256 * 1024  # a fresh qcow2 overlay: header, L1 and refcount tables
PROGRESS_INTERVAL = 0.2
MAX_COUNT = 1000
RECOVER_WAIT = 60.0  # seconds to wait for a copy the daemon is finishing

ProgressSink = Callable[[CloneProgress], None]


# --------------------------------------------------------------------------------------------
# Dependencies (pure)
# --------------------------------------------------------------------------------------------


class Dependents(NamedTuple):
    """What depends on a machine's volumes."""

    machines: tuple[str, ...]  # in deletion order: the deepest overlays first
    volumes: tuple[str, ...]  # pool/name of dependent volumes no machine owns


def dependents_of(
    roots: Iterable[str], volumes: Sequence[Volume], owner_of: Mapping[str, str]
) -> Dependents:
    """Machines (and unowned volumes) whose volumes are overlays on ``roots``, at any depth.

    ``roots`` are volume paths, ``volumes`` every volume of the pools (each with the path of
    its backing store), ``owner_of`` maps a volume path to the machine that owns it. Volumes
    owned by the roots' own machine (e.g. its external snapshots) are not dependents.
    """
    root_set = set(roots)
    root_owners = {owner_of[p] for p in root_set if p in owner_of}
    children: dict[str, list[Volume]] = {}
    for v in volumes:
        if v.backing:
            children.setdefault(v.backing, []).append(v)
    depth: dict[str, int] = {}
    loose: list[str] = []
    frontier, level, seen = list(root_set), 0, set(root_set)
    while frontier:
        level += 1
        nxt = []
        for path in frontier:
            for child in children.get(path, []):
                if child.path in seen:
                    continue
                seen.add(child.path)
                nxt.append(child.path)
                owner = owner_of.get(child.path)
                if owner is None:
                    loose.append(f"{child.pool}/{child.name}")
                elif owner not in root_owners:
                    depth[owner] = max(depth.get(owner, 0), level)
        frontier = nxt
    ordered = sorted(depth, key=lambda m: (-depth[m], m))
    return Dependents(tuple(ordered), tuple(sorted(loose)))


def volume_owners(machines: Sequence[Machine], volumes: Sequence[Volume]) -> dict[str, str]:
    """Volume path -> the machine owning it (from kvmlab's metadata on each machine)."""
    by_ref = {(v.pool, v.name): v.path for v in volumes}
    out = {}
    for m in machines:
        for ref in m.owned_volumes:
            path = by_ref.get(ref)
            if path:
                out[path] = m.name
    return out


def machine_paths(machine: Machine, volumes: Sequence[Volume]) -> list[str]:
    """The paths of the volumes a machine owns."""
    owned = set(machine.owned_volumes)
    return [v.path for v in volumes if (v.pool, v.name) in owned]


# --------------------------------------------------------------------------------------------
# Dependencies (against libvirt)
# --------------------------------------------------------------------------------------------


def pool_volumes(env: Env) -> list[Volume]:
    out: list[Volume] = []
    for pool in (MACHINE_POOL, IMAGE_POOL):
        try:
            out += env.hypervisor.list_volumes(pool)
        except errors.PoolNotFound:
            continue
    return out


def find_dependents(env: Env, name: str) -> Dependents:
    """What depends on machine ``name``'s volumes, read from libvirt."""
    hv = env.hypervisor
    machines = hv.list_machines()
    target = next((m for m in machines if m.name == name), None)
    if target is None:
        hv.machine(name)  # raises MachineNotFound with the usual message
        return Dependents((), ())
    volumes = pool_volumes(env)
    return dependents_of(machine_paths(target, volumes), volumes, volume_owners(machines, volumes))


def refuse_if_base(env: Env, name: str) -> None:
    """Hook of ``vm delete``: finish crashed clones, then refuse if others depend on ``name``."""
    recover(env)
    deps = find_dependents(env, name)
    _raise_if_dependents(name, deps, "delete")


def _raise_if_dependents(name: str, deps: Dependents, verb: str) -> None:
    if not deps.machines and not deps.volumes:
        return
    listed = list(deps.machines) + [f"volume {v}" for v in deps.volumes]
    if verb == "delete":
        hint = f"`kvmlab vm delete {name} --cascade` deletes them too"
        if deps.volumes:
            hint = "remove the volumes with `virsh vol-delete`, then delete the machines"
    else:
        hint = (
            f"delete the clones first (`kvmlab vm delete {name} --cascade` deletes all), "
            f"or clone {name} and run the copy"
        )
    raise errors.HasDependents(
        f"cannot {verb} {name}: its disk is the base of {', '.join(listed)}"
        + (" (writing to it would corrupt them)" if verb == "start" else ""),
        dependents=list(deps.machines),
        hint=hint,
    )


def refuse_start(env: Env, name: str) -> None:
    """Hook of ``vm start``: templates never run, nor do machines whose disk backs clones."""
    hv = env.hypervisor
    xml = hv.domain_xml(name, inactive=True)
    if xml.kvmlab is None:
        return
    if xml.kvmlab.template:
        raise errors.InvalidState(
            f"{name} is a template: templates do not run (their disk is a read-only base)",
            hint=f"clone it and start the clone: `kvmlab clone {name} NEW --start`",
        )
    if hv.state(name) is not MachineState.STOPPED:
        return
    volumes = hv.list_volumes(MACHINE_POOL)
    owned = {v.name for v in xml.kvmlab.volumes if v.pool == MACHINE_POOL}
    paths = {v.path for v in volumes if v.name in owned}
    if any(v.backing in paths for v in volumes):  # cheap test first; names only if needed
        _raise_if_dependents(name, find_dependents(env, name), "start")


def delete_with_dependents(env: Env, name: str, force: bool = False) -> list[str]:
    """Delete ``name`` and every machine whose disks are overlays on it (deepest first).

    Says what it will delete (``env.progress``) before deleting anything. Returns the volumes
    removed. Volumes that depend on it but belong to no machine are refused, not deleted.
    """
    from kvmlab.services import machines as machine_service

    validate_name(name, "machine")
    recover(env)
    deps = find_dependents(env, name)
    if deps.volumes:
        _raise_if_dependents(name, deps, "delete")
    if deps.machines:
        env.progress(f"deleting {name} and its dependents: {', '.join(deps.machines)}")
    removed: list[str] = []
    for dep in deps.machines:
        removed += machine_service.delete(env, dep, force=force)
    removed += machine_service.delete(env, name, force=force)
    return removed


# --------------------------------------------------------------------------------------------
# Crash recovery
# --------------------------------------------------------------------------------------------


def recover(env: Env) -> list[str]:
    """Delete the volumes of clones whose ``kvmlab`` process died before defining them.

    Only journals of this URI whose process is gone are looked at; a volume is deleted only
    if no defined domain owns it. Returns ``pool/name`` of what was deleted.
    """
    pending = [j for j in journal.read_all(env.state_dir, env.uri) if not j.owner_alive()]
    if not pending:
        return []
    hv = env.hypervisor
    machines = hv.list_machines()
    defined = {m.name for m in machines}
    owned = {ref for m in machines for ref in m.owned_volumes}
    removed: list[str] = []
    for j in pending:
        left: list[journal.PlannedMachine] = []
        to_delete = set(journal.leftovers(j, defined, owned))
        for planned in j.machines:
            failed = [
                ref
                for ref in planned.volumes
                if ref in to_delete and not _delete(env, ref, removed)
            ]
            if failed:
                left.append(journal.PlannedMachine(planned.name, tuple(failed)))
        journal.rewrite(j, left)
    if removed:
        env.progress(f"removed leftovers of an interrupted clone: {', '.join(removed)}")
    return removed


def _delete(env: Env, ref: VolumeRef, removed: list[str]) -> bool:
    """Delete a leftover volume; wait a little for one libvirtd is still writing.

    A full copy (``createXMLFrom``) goes on in the daemon after its client was killed, and
    until it ends the volume cannot be deleted ("still being allocated").
    """
    hv = env.hypervisor
    deadline = time.monotonic() + RECOVER_WAIT
    while True:
        try:
            if hv.has_volume(*ref):
                hv.delete_volume(*ref)
                removed.append(f"{ref[0]}/{ref[1]}")
            return True
        except errors.Conflict:
            if time.monotonic() > deadline:
                return False  # the journal keeps it: the next command tries again
            time.sleep(0.5)
        except errors.KvmlabError:
            return False


# --------------------------------------------------------------------------------------------
# Cloning
# --------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    names: list[str]
    disks: list[tuple[Volume, str | None]]  # the source's disk volumes and their roles
    has_seed: bool
    linked: bool
    full_size: int  # bytes one full copy takes (estimate); 0 when linked


def clone(
    env: Env,
    source: str,
    new: str,
    *,
    count: int | None = None,
    linked: bool | None = None,
    start: bool = False,
    progress: ProgressSink | None = None,
) -> list[Machine]:
    """Clone stopped machine (or template) ``source`` into ``new`` (or ``new-1..new-N``).

    ``linked``: qcow2 overlays on the source's disks (True), full copies (False), or the
    default (None): linked from a template, full otherwise. Everything is checked before
    anything is made: names, that the source is stopped, that no clone name exists, and that
    the pool has room. Returns the clones (started if ``start``).
    """
    validate_name(source, "machine")
    validate_name(new, "machine")
    if count is not None and count < 1:
        clone_names(new, count)  # raises with the message
    validate_name(new if count is None else f"{new}-{count}", "machine")  # the longest name
    hv = env.hypervisor
    from kvmlab.services.storage import ensure_pools

    ensure_pools(env)
    recover(env)
    src = hv.domain_xml(source, inactive=True)
    state = hv.state(source)
    if state is not MachineState.STOPPED:
        raise errors.InvalidState(
            f"{source} is {state.value}; only a stopped machine can be cloned (its disk must "
            "not change during the copy)",
            hint=f"`kvmlab vm stop {source}`, then clone again",
        )
    is_template = bool(src.kvmlab is not None and src.kvmlab.template)
    plan = _plan(env, src, new, count, is_template if linked is None else linked)
    _check_space(env, plan, count or 1)
    plan = plan._replace(names=clone_names(new, count))
    _check_free_names(env, plan)
    return _make_all(env, src, plan, start, progress)


def _plan(env: Env, src: object, new: str, count: int | None, linked: bool) -> _Plan:
    from kvmlab.libvirt.domain import DomainXML

    assert isinstance(src, DomainXML)
    disk_refs, seed = source_volumes(src)
    volumes = {(v.pool, v.name): v for v in pool_volumes(env)}
    by_path = {v.path: v for v in volumes.values()}
    disks = []
    for ref, role in disk_refs:
        vol = volumes.get(ref)
        if vol is None:
            raise errors.VolumeNotFound(
                f"{src.name}'s disk volume {ref[0]}/{ref[1]} does not exist on {env.uri}"
            )
        if not linked and ref[0] != MACHINE_POOL:
            raise errors.InvalidInput(f"{src.name}'s disk {ref[1]} is not in pool {MACHINE_POOL}")
        disks.append((vol, role))
    full_size = 0 if linked else sum(_chain_allocation(v, by_path) for v, _ in disks)
    return _Plan([], disks, seed is not None, linked, full_size)


def _chain_allocation(vol: Volume, by_path: Mapping[str, Volume]) -> int:
    """Bytes a flattened copy of ``vol`` may take: its allocation and its backing chain's."""
    total, seen = 0, set()
    cur: Volume | None = vol
    while cur is not None and cur.path not in seen:
        seen.add(cur.path)
        total += cur.allocation
        cur = by_path.get(cur.backing) if cur.backing else None
    return total


def _seed_bytes(hostname: str) -> bytes:
    from kvmlab.image.seed import make_nocloud_seed

    return make_nocloud_seed(str(uuid.uuid4()), hostname)


def _check_space(env: Env, plan: _Plan, count: int) -> None:
    per_disk = OVERLAY_MIN_BYTES * len(plan.disks) if plan.linked else plan.full_size
    per_clone = per_disk + (len(_seed_bytes("x" * 64)) if plan.has_seed else 0)
    need = per_clone * count
    available = env.hypervisor.pool_xml(MACHINE_POOL).available_bytes
    if available is not None and need > available:
        kind = "linked clones need at least" if plan.linked else "full copies need about"
        raise errors.InvalidInput(
            f"{count} {kind} {_size(need)}, but pool {MACHINE_POOL} has {_size(available)} free",
            hint="clone fewer, use --linked, or free space in the pool",
        )
    if count > MAX_COUNT:
        raise errors.InvalidInput(
            f"--count {count} is more than {MAX_COUNT} clones at once", hint="clone in batches"
        )


def _size(n: int) -> str:
    from kvmlab.specs import format_size

    return format_size(n)


def _planned_volumes(plan: _Plan, name: str) -> list[VolumeRef]:
    vols = [(MACHINE_POOL, clone_volume_name(name, role, i)) for i, (_, role) in
            enumerate(plan.disks)]  # fmt: skip
    if plan.has_seed:
        vols.append((MACHINE_POOL, clone_volume_name(name, "seed", 0)))
    return vols


def _check_free_names(env: Env, plan: _Plan) -> None:
    hv = env.hypervisor
    existing = hv.machine_names()
    taken = [n for n in plan.names if n in existing]
    if taken:
        raise errors.AlreadyExists(
            f"a VM named {', '.join(taken[:10])}{' ...' if len(taken) > 10 else ''} exists "
            f"already on {env.uri}",
            hint="pick another name for the clones, or delete those machines",
        )
    existing_vols = {(v.pool, v.name) for v in hv.list_volumes(MACHINE_POOL)}
    clash = [f"{p}/{v}" for n in plan.names for p, v in _planned_volumes(plan, n)
             if (p, v) in existing_vols]  # fmt: skip
    if clash:
        raise errors.AlreadyExists(
            f"volume {', '.join(clash[:10])} exists already (left from an earlier machine?)",
            hint=f"remove it with `virsh vol-delete VOLUME --pool {MACHINE_POOL}`",
        )


def _make_all(
    env: Env, src: object, plan: _Plan, start: bool, progress: ProgressSink | None
) -> list[Machine]:
    from kvmlab.libvirt.domain import DomainXML

    assert isinstance(src, DomainXML)
    hv = env.hypervisor
    planned = [journal.PlannedMachine(n, tuple(_planned_volumes(plan, n))) for n in plan.names]
    jpath = journal.begin(env.state_dir, "clone", env.uri, planned)
    made: list[str] = []
    macs_used: set[str] = set()
    for i, p in enumerate(planned, 1):
        try:
            _make_one(env, src, plan, p, macs_used, progress, i, len(planned))
        except BaseException as e:
            if _undo(env, p):
                journal.end(jpath)
            if made and isinstance(e, errors.KvmlabError):
                e.message += f" (while making {p.name}; {', '.join(made)} were made and kept)"
            raise
        made.append(p.name)
        if start:
            env.progress(f"starting {p.name}")
            hv.start(p.name)
        if progress:
            progress(CloneProgress(p.name, i, len(planned), 0, 0, done=True))
    journal.end(jpath)
    return [hv.machine(n) for n in made]


def _undo(env: Env, p: journal.PlannedMachine) -> bool:
    """Remove what exists of a clone that failed before its domain was defined."""
    hv = env.hypervisor
    if hv.has_machine(p.name):
        return True  # defined: it is whole
    ok = True
    for pool, vol in p.volumes:
        try:
            hv.delete_volume(pool, vol)
        except errors.KvmlabError:
            ok = False
    return ok


def _make_one(
    env: Env,
    src: object,
    plan: _Plan,
    p: journal.PlannedMachine,
    macs_used: set[str],
    progress: ProgressSink | None,
    index: int,
    count: int,
) -> None:
    from kvmlab.libvirt.build import qcow2_volume, random_mac, raw_volume
    from kvmlab.libvirt.domain import DomainXML

    assert isinstance(src, DomainXML)
    hv = env.hypervisor
    volume_map: dict[VolumeRef, VolumeRef] = {}
    for (vol, _role), (pool, name) in zip(plan.disks, p.volumes, strict=False):
        if plan.linked:
            backing = (vol.path, vol.format or "qcow2")
            hv.create_volume(pool, qcow2_volume(name, vol.capacity, backing=backing))
        else:
            _full_copy(env, vol, name, p.name, progress, index, count, plan.full_size)
        volume_map[(vol.pool, vol.name)] = (pool, name)
    seed_ref = None
    if plan.has_seed:
        seed_ref = p.volumes[-1]
        data = _seed_bytes(p.name)
        hv.create_volume(seed_ref[0], raw_volume(seed_ref[1], len(data)))
        hv.upload_volume(seed_ref[0], seed_ref[1], data)
    macs = []
    for _ in src.interfaces:
        mac = random_mac()
        while mac in macs_used:
            mac = random_mac()
        macs_used.add(mac)
        macs.append(mac)
    xml = clone_domain(
        src,
        name=p.name,
        volume_map=volume_map,
        seed=seed_ref,
        macs=macs,
        created=utc_now(),
        linked=plan.linked,
    )
    hv.define_machine(xml)  # last: a defined clone is a whole clone


def _full_copy(
    env: Env,
    vol: Volume,
    name: str,
    machine: str,
    progress: ProgressSink | None,
    index: int,
    count: int,
    size: int,
) -> None:
    """Copy ``vol`` through libvirt (``createXMLFrom``), reporting the bytes written."""
    from kvmlab.libvirt.build import qcow2_volume

    hv = env.hypervisor
    xml = qcow2_volume(name, vol.capacity)
    if progress is None:
        hv.clone_volume(MACHINE_POOL, xml, vol.name)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(hv.clone_volume, MACHINE_POOL, xml, vol.name)
        while not job.done():
            try:
                copied = hv.volume_allocation(MACHINE_POOL, name) or 0
            except errors.KvmlabError:
                copied = 0
            progress(CloneProgress(machine, index, count, copied, max(size, copied)))
            time.sleep(PROGRESS_INTERVAL)
        job.result()
    progress(CloneProgress(machine, index, count, size, size))
