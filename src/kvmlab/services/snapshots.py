"""Snapshots of machines, and ``try``: run a command with an automatic way back.

kvmlab takes **internal qcow2 snapshots** only (docs/snapshots.md explains the choice for
libvirt 9.0 + QEMU 7.2): they live inside the machine's qcow2 overlay, never touch the image
it is backed by, and libvirt 9.0 can create, revert and delete them with or without the guest's
RAM. A machine that already has external snapshots (made with virsh) is refused rather than
mixed, and so is a machine with a writable disk that cannot hold internal snapshots (raw).

libvirt 9.0 refuses internal *disk-only* snapshots of a running machine ("active qemu domains
require external disk snapshots"). So a disk snapshot of a running machine is taken as a full
internal snapshot while the guest's filesystems are frozen through the agent, and kvmlab
records in its snapshot journal (``STATE_DIR/snapshots/``) that it is to be reverted as a disk
snapshot: revert discards the saved RAM and leaves the machine stopped (or boots it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.snapshot import SnapshotXML
from kvmlab.models import MachineState, Snapshot, SnapshotKind, TryResult
from kvmlab.names import validate_name
from kvmlab.services.locks import machine_lock

_LIVE = (MachineState.RUNNING, MachineState.PAUSED)
_TAKEN_LIVE = ("running", "paused", "blocked", "pmsuspended")


# -- create -----------------------------------------------------------------------------------
def create_snapshot(
    env: Env,
    machine: str,
    name: str | None = None,
    kind: SnapshotKind | None = None,
    description: str | None = None,
) -> Snapshot:
    """Snapshot a machine, running or stopped.

    ``kind`` defaults to ``memory`` for a running machine (it comes back running where it
    was) and ``disk`` for a stopped one. A disk snapshot of a running machine freezes the
    guest's filesystems through the agent if the agent can, so the disks are consistent.
    """
    validate_name(machine, "machine")
    with machine_lock(env.state_dir, env.uri, machine, "snapshot create"):
        return _create(env, machine, name, kind, description)


def _create(
    env: Env, machine: str, name: str | None, kind: SnapshotKind | None, description: str | None
) -> Snapshot:
    hv = env.hypervisor
    name = validate_name(name or _default_name(), "snapshot")
    live = hv.state(machine) in _LIVE
    kind = kind or (SnapshotKind.MEMORY if live else SnapshotKind.DISK)
    if kind is SnapshotKind.MEMORY and not live:
        raise errors.InvalidState(
            f"{machine} is stopped: there is no memory to snapshot",
            hint=f"take a disk snapshot (`kvmlab snap create {machine} {name}`), or start it",
        )
    existing = hv.list_snapshots(machine)
    _refuse_external(machine, existing)
    if any(s.name == name for s in existing):
        raise errors.AlreadyExists(
            f"{machine} has a snapshot named {name!r} already",
            hint=f"pick another name, or `kvmlab snap delete {machine} {name}` first",
        )
    xml = snapshot_plan(env, machine, name, description)
    quiesced: bool | None = None
    if kind is SnapshotKind.DISK and live:
        quiesced = _freeze(env, machine)
        try:
            hv.create_snapshot(machine, xml)
        finally:
            if quiesced:
                _thaw(env, machine)
        _journal_set(env, machine, name, {"kind": kind.value, "quiesced": quiesced})
    else:
        hv.create_snapshot(machine, xml)
        _journal_drop(env, machine, name)  # a stale entry of an earlier namesake
    return _lookup(env, machine, name)


def _default_name() -> str:
    return time.strftime("snap-%Y%m%d-%H%M%S", time.gmtime())  # UTC, without datetime


def snapshot_plan(env: Env, machine: str, name: str, description: str | None) -> SnapshotXML:
    """The ``<domainsnapshot>`` for an internal snapshot; refuses disks that cannot hold one.

    Read-only and empty disks (the NoCloud seed, CD-ROMs) are excluded (``snapshot='no'``):
    QEMU leaves read-only images alone, and a raw seed could not hold a snapshot anyway.
    """
    dom = env.hypervisor.domain_xml(machine)
    xml = SnapshotXML()
    xml.name, xml.description = name, description
    for disk in dom.disks:
        dev = disk.target_dev or "?"
        source = disk.source_file or (
            f"volume {disk.source_pool}/{disk.source_volume}" if disk.source_volume else None
        )
        if disk.readonly or disk.device in ("cdrom", "floppy") or source is None:
            xml.add_disk(dev, "no")
            continue
        fmt = disk.driver_type
        if fmt is None and disk.source_pool and disk.source_volume:
            # no <driver type>: libvirt uses the volume's format
            fmt = env.hypervisor.volume(disk.source_pool, disk.source_volume).format
        if fmt != "qcow2":
            raise errors.SnapshotUnsupported(
                f"cannot snapshot {machine}: disk {dev} ({source}) is "
                f"{fmt or 'of unknown format'}, and internal snapshots need qcow2",
                hint=f"convert the disk to qcow2 (`qemu-img convert -O qcow2`) while {machine} "
                "is stopped, or detach it",
            )
        xml.add_disk(dev, "internal")
    return xml


def _refuse_external(machine: str, existing: Sequence[Snapshot]) -> None:
    external = [s.name for s in existing if s.location == "external"]
    if external:
        raise errors.SnapshotUnsupported(
            f"{machine} has external snapshots ({', '.join(external)}); kvmlab takes internal "
            "snapshots only and will not mix the two on one machine",
            hint="manage that machine's snapshots with virsh, or delete the external ones",
        )


# -- quiesce ----------------------------------------------------------------------------------
def _freeze(env: Env, machine: str) -> bool:
    """Freeze the guest's filesystems if its agent can; False: crash-consistent snapshot."""
    hv = env.hypervisor
    try:
        info = hv.agent_command(machine, {"execute": "guest-info"}, timeout=5) or {}
    except errors.KvmlabError:
        env.progress(f"{machine} has no answering guest agent: disks are not quiesced")
        return False
    supported = {
        c.get("name") for c in info.get("supported_commands", []) if c.get("enabled", True)
    }
    if not {"guest-fsfreeze-freeze", "guest-fsfreeze-thaw"} <= supported:
        env.progress(f"{machine}'s guest agent cannot freeze filesystems: not quiesced")
        return False
    try:
        hv.agent_command(machine, {"execute": "guest-fsfreeze-freeze"}, timeout=60)
    except errors.KvmlabError as e:
        env.progress(f"freezing {machine}'s filesystems failed ({e.message}): not quiesced")
        _thaw(env, machine, quiet=True)  # a partial freeze leaves some frozen
        return False
    return True


def _thaw(env: Env, machine: str, quiet: bool = False) -> None:
    try:
        env.hypervisor.agent_command(machine, {"execute": "guest-fsfreeze-thaw"}, timeout=60)
    except errors.KvmlabError as e:
        if quiet:
            return
        raise errors.OperationFailed(
            f"could not thaw {machine}'s filesystems: {e.message}",
            hint=f"`kvmlab exec {machine} -- fsfreeze -u /` for each mount, or reboot it",
        ) from e


# -- list -------------------------------------------------------------------------------------
def list_snapshots(env: Env, machine: str, with_sizes: bool = True) -> list[Snapshot]:
    """A machine's snapshots in tree order (parents before children), current one marked."""
    validate_name(machine, "machine")
    hv = env.hypervisor
    snaps = hv.list_snapshots(machine)
    journal = _journal(env, machine)
    sizes = _sizes(env, machine) if with_sizes and snaps else {}
    children: dict[str | None, list[Snapshot]] = {}
    names = {s.name for s in snaps}
    for s in sorted(snaps, key=lambda s: (s.created, s.name)):
        children.setdefault(s.parent if s.parent in names else None, []).append(s)
    out: list[Snapshot] = []

    def walk(parent: str | None) -> None:
        for s in children.get(parent, []):
            entry = journal.get(s.name) or {}
            kind = SnapshotKind(entry["kind"]) if "kind" in entry else s.kind
            out.append(
                s._replace(
                    kind=kind,
                    children=tuple(c.name for c in children.get(s.name, [])),
                    vm_state_size=sizes.get(s.name),
                    quiesced=entry.get("quiesced"),
                )
            )
            walk(s.name)

    walk(None)
    return out


def get_snapshot(env: Env, machine: str, name: str) -> Snapshot:
    """One snapshot by name; :class:`SnapshotNotFound` with a hint if there is none."""
    validate_name(machine, "machine")
    return _find(env, machine, name)


def _find(env: Env, machine: str, name: str) -> Snapshot:
    for s in list_snapshots(env, machine):
        if s.name == name:
            return s
    raise errors.SnapshotNotFound(
        f"no snapshot named {name!r} of VM {machine!r} on {env.uri}",
        hint=f"`kvmlab snap list {machine}` shows its snapshots",
    )


def _lookup(env: Env, machine: str, name: str) -> Snapshot:
    """One snapshot without its tree links and size: two RPCs, for revert and delete."""
    validate_name(name, "snapshot")
    snap = env.hypervisor.snapshot(machine, name)
    entry = _journal(env, machine).get(name) or {}
    if "kind" in entry:
        snap = snap._replace(kind=SnapshotKind(entry["kind"]), quiesced=entry.get("quiesced"))
    return snap


def tree_rows(snaps: Sequence[Snapshot]) -> list[tuple[str, Snapshot]]:
    """Each snapshot with its label drawn as a tree (``├─``, ``└─``); ``*`` marks the current.

    ``snaps`` in the order :func:`list_snapshots` gives (parents before children); a parent
    not in ``snaps`` makes its child a root.
    """
    by_name = {s.name: s for s in snaps}
    kids: dict[str | None, list[Snapshot]] = {}
    for s in snaps:
        kids.setdefault(s.parent if s.parent in by_name else None, []).append(s)
    rows: list[tuple[str, Snapshot]] = []

    def walk(parent: str | None, prefix: str) -> None:
        items = kids.get(parent, [])
        for i, s in enumerate(items):
            last = i == len(items) - 1
            branch = "" if parent is None else ("└─ " if last else "├─ ")
            rows.append((f"{prefix}{branch}{s.name}{' *' if s.current else ''}", s))
            deeper = "" if parent is None else ("   " if last else "│  ")
            walk(s.name, prefix + deeper)

    walk(None, "")
    return rows


def _sizes(env: Env, machine: str) -> dict[str, int]:
    """Saved-state sizes: from QEMU while running, else ``qemu-img info -U`` on a local disk."""
    hv = env.hypervisor
    if hv.state(machine) in _LIVE:
        return hv.snapshot_state_sizes(machine)
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        return {}
    sizes: dict[str, int] = {}
    for disk in hv.domain_xml(machine, inactive=True).disks:
        path = disk.source_file
        if disk.source_pool and disk.source_volume:
            try:
                path = hv.volume(disk.source_pool, disk.source_volume).path
            except errors.KvmlabError:
                continue
        if not path or disk.driver_type != "qcow2" or not Path(path).is_file():
            continue  # a remote host's disk, or one this client cannot see
        done = subprocess.run(
            [qemu_img, "info", "-U", "--output=json", "--", path],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        if done.returncode != 0:
            continue
        for s in json.loads(done.stdout).get("snapshots") or []:
            sizes[s["name"]] = sizes.get(s["name"], 0) + int(s.get("vm-state-size", 0))
    return sizes


# -- revert and delete --------------------------------------------------------------------------
def revert_to_snapshot(env: Env, machine: str, name: str, start: bool = False) -> MachineState:
    """Go back to a snapshot; return the machine's state afterwards.

    A memory snapshot comes back running where it was taken (its guest agent reconnects a
    moment later; ``exec`` and ``cp`` wait for that, see :func:`agent.wait_connected`). A disk
    snapshot comes back stopped, or booted when ``start``.
    """
    validate_name(machine, "machine")
    with machine_lock(env.state_dir, env.uri, machine, "snapshot revert"):
        return _revert(env, machine, name, start)


def _revert(env: Env, machine: str, name: str, start: bool) -> MachineState:
    hv = env.hypervisor
    snap = _lookup(env, machine, name)
    if snap.location == "external":
        _refuse_external(machine, [snap])
    if snap.kind is SnapshotKind.MEMORY:
        # into the running QEMU when its hardware is the snapshot's (~0.15 s for 256 MiB);
        # otherwise, or if QEMU refuses, libvirt restarts QEMU from the snapshot (~1 s)
        if hv.load_snapshot_in_place(machine, name) is not None:
            hv.revert_to_snapshot(machine, name, run=True)
    elif snap.state in _TAKEN_LIVE:
        # a disk snapshot taken while running holds RAM too (see the module docstring):
        # load it paused, then drop the RAM; the disks stay as they were in the snapshot
        hv.revert_to_snapshot(machine, name, run=False)
        hv.destroy(machine)
        if start:
            hv.start(machine)
    else:
        hv.revert_to_snapshot(machine, name, run=True if start else None)
    return hv.state(machine)


def delete_snapshot(env: Env, machine: str, name: str) -> None:
    """Delete a snapshot; its children stay valid (they are re-parented to its parent)."""
    validate_name(machine, "machine")
    with machine_lock(env.state_dir, env.uri, machine, "snapshot delete"):
        _delete(env, machine, name)


def _delete(env: Env, machine: str, name: str) -> None:
    snap = _lookup(env, machine, name)
    if snap.location == "external":
        _refuse_external(machine, [snap])
    env.hypervisor.delete_snapshot(machine, name)
    _journal_drop(env, machine, name)


# -- try --------------------------------------------------------------------------------------
def try_command(
    env: Env,
    machine: str,
    argv: Sequence[str],
    check: str | None = None,
    keep: bool = False,
    timeout: float = 300.0,
) -> TryResult:
    """Checkpoint, run ``argv`` in the guest, check; revert on failure.

    Success is ``check`` (a shell command run in the guest) exiting 0, or without it
    ``argv`` exiting 0. On failure, or if the command does not finish (timeout, the agent
    went away), the machine goes back to the checkpoint. The checkpoint is deleted afterwards
    unless ``keep``.
    """
    from kvmlab.services.agent import exec_in_guest, wait_connected

    validate_name(machine, "machine")
    if not argv:
        raise errors.InvalidInput("no command given", hint="kvmlab try VM -- CMD ARGS...")
    with machine_lock(env.state_dir, env.uri, machine, "try"):
        state = env.hypervisor.state(machine)
        if state is not MachineState.RUNNING:
            raise errors.InvalidState(
                f"{machine} is {state.value}; try runs commands in running machines",
                hint=f"start it with `kvmlab vm start {machine}`",
            )
        wait_connected(env, machine)
        taken = {s.name for s in env.hypervisor.list_snapshots(machine)}
        checkpoint = base = _default_name().replace("snap-", "try-")
        n = 1
        while checkpoint in taken:  # two kept checkpoints within one second
            n += 1
            checkpoint = f"{base}-{n}"
        note = f"kvmlab try: {' '.join(argv)}"[:200]
        _create(env, machine, checkpoint, SnapshotKind.MEMORY, note)
        result: dict[str, Any] = {"exit_code": None, "stdout": b"", "stderr": b"", "error": None}
        check_rc: int | None = None
        try:
            done = exec_in_guest(env, machine, list(argv), timeout=timeout)
            result.update(exit_code=done.exit_code, stdout=done.stdout, stderr=done.stderr)
            if check is not None:
                check_rc = exec_in_guest(env, machine, ["/bin/sh", "-c", check], timeout).exit_code
        except errors.KvmlabError as e:
            result["error"] = e.message
        decider = check_rc if check is not None else result["exit_code"]
        succeeded = result["error"] is None and decider == 0
        if not succeeded:
            env.progress(f"the command failed; reverting {machine} to checkpoint {checkpoint}")
            try:
                _revert(env, machine, checkpoint, start=False)
            except errors.KvmlabError as e:
                e.hint = (
                    f"the checkpoint {checkpoint} is kept: retry with "
                    f"`kvmlab snap revert {machine} {checkpoint}`"
                )
                raise
        if not keep:
            _delete(env, machine, checkpoint)
        return TryResult(
            machine=machine, command=tuple(argv), exit_code=result["exit_code"],
            stdout=result["stdout"], stderr=result["stderr"], check=check,
            check_exit_code=check_rc, succeeded=succeeded, reverted=not succeeded,
            checkpoint=checkpoint, checkpoint_kept=keep,
            state=env.hypervisor.state(machine), error=result["error"],
        )  # fmt: skip


# -- the snapshot journal ---------------------------------------------------------------------
# What libvirt cannot hold: that a full snapshot of a running machine is a *disk* snapshot.
def _journal_path(env: Env, machine: str) -> Path:
    digest = hashlib.sha256(env.uri.encode()).hexdigest()[:12]
    return env.state_dir / "snapshots" / f"{digest}-{machine}.json"


def _journal(env: Env, machine: str) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_journal_path(env, machine).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _journal_set(env: Env, machine: str, name: str, entry: dict[str, Any]) -> None:
    data = _journal(env, machine)
    data[name] = entry
    _journal_write(env, machine, data)


def _journal_drop(env: Env, machine: str, name: str) -> None:
    data = _journal(env, machine)
    if data.pop(name, None) is not None:
        _journal_write(env, machine, data)


def _journal_write(env: Env, machine: str, data: dict[str, dict[str, Any]]) -> None:
    path = _journal_path(env, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
