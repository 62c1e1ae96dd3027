"""Machines: create, run, stop and delete virtual machines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import Address, Machine, MachineState
from kvmlab.names import validate_name
from kvmlab.services.storage import MACHINE_POOL
from kvmlab.timestamps import utc_now

if TYPE_CHECKING:
    from kvmlab.specs import Accel, MachineSpec

# Creating machines needs the XML builders, the image service and the accelerator probe;
# they are imported inside create() so `kvmlab ls` does not pay for them at start-up.

STOP_TIMEOUT = 60.0


def list_machines(env: Env, with_addresses: bool = True) -> list[Machine]:
    """Every machine on the connection; running kvmlab machines with their DHCP addresses."""
    from kvmlab.services.journal import recover_if_pending  # issue 5: crashed clones

    recover_if_pending(env)
    machines = env.hypervisor.list_machines()
    if not with_addresses:
        return machines
    leases: dict[str, dict[str, str]] = {}
    modes: dict[str, str] = {}
    out = []
    for m in machines:
        if m.state is not MachineState.RUNNING or not m.nics:
            out.append(m)
            continue
        addrs = []
        for nic in m.nics:
            if nic.network is None:
                continue
            if nic.network not in leases:
                try:
                    leases[nic.network] = {
                        le.mac: le.ip for le in env.hypervisor.leases(nic.network)
                    }
                except errors.KvmlabError:
                    leases[nic.network] = {}
            ip = leases[nic.network].get(nic.mac)
            if ip:
                addrs.append(Address(ip, None, nic.mac, "lease", nic.port))
        addrs += _bridged_addresses(env, m, {a.mac for a in addrs}, modes)  # issue 3
        out.append(_with_addresses(m, addrs))
    return out


def _bridged_addresses(
    env: Env, m: Machine, found: set[str | None], modes: dict[str, str]
) -> list[Address]:
    """Bridged NICs have no libvirt lease: ask the guest agent, then the neighbour table."""
    from kvmlab.services.bridges import neighbour_addresses

    macs = set()
    for nic in m.nics:
        if nic.network is None or nic.mac in found:
            continue
        if nic.network not in modes:
            try:
                modes[nic.network] = env.hypervisor.network(nic.network).mode
            except errors.KvmlabError:
                modes[nic.network] = "?"
        if modes[nic.network] == "bridge":
            macs.add(nic.mac)
    return neighbour_addresses(env, m.name, macs) if macs else []


def _with_addresses(m: Machine, addrs: list[Address]) -> Machine:
    return m._replace(addresses=tuple(addrs))


def get_machine(env: Env, name: str) -> Machine:
    """One machine with its addresses from every source kvmlab knows."""
    validate_name(name, "machine")
    m = env.hypervisor.machine(name)
    if m.state is MachineState.RUNNING:
        m = _with_addresses(m, addresses(env, name))
    return m


def addresses(env: Env, name: str) -> list[Address]:
    """The machine's IPv4 addresses: DHCP leases first, then what the guest agent reports."""
    hv = env.hypervisor
    found = hv.interface_addresses(name, "lease")
    seen = {a.ip for a in found}
    for a in hv.interface_addresses(name, "agent"):
        if a.ip not in seen:
            found.append(a)
            seen.add(a.ip)
    return found


def wait_for_address(env: Env, name: str, timeout: float = 120.0) -> list[Address]:
    """Wait until the machine has an address; raise :class:`Timeout` naming what to check."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        state = env.hypervisor.state(name)
        if state is not MachineState.RUNNING:
            raise errors.InvalidState(
                f"{name} is {state.value}, so it has no address",
                hint=f"start it with `kvmlab vm start {name}`",
            )
        found = addresses(env, name)
        if found:
            return found
        if time.monotonic() > deadline:
            raise errors.Timeout(
                f"{name} got no address within {timeout:.0f} s",
                hint=f"look at its boot with `kvmlab vm console {name}`; is its network's DHCP on?",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


@contextmanager
def _undo_on_error() -> Iterator[list[Callable[[], None]]]:
    """Collect clean-up steps; run them in reverse if the block fails."""
    steps: list[Callable[[], None]] = []
    try:
        yield steps
    except BaseException:
        for step in reversed(steps):
            with suppress(errors.KvmlabError):  # keep the original error
                step()
        raise


def resolve_accel(env: Env) -> Accel:
    """The accelerator for new machines: ``--accel``, the cached probe, or probe now."""
    from kvmlab.services import accel as accel_service

    if env.accel is not None:
        return env.accel
    caps = env.hypervisor.capabilities()
    has_kvm = "<domain type='kvm'" in caps or '<domain type="kvm"' in caps
    if has_kvm and accel_service.cached_probe(env) is None and _is_local(env.uri):
        try:
            from kvmlab.services.images import build_tiny_local

            tiny = build_tiny_local(env)
            env.progress("checking whether KVM is faster than software emulation here")
            accel_service.probe(env, tiny.kernel, tiny.initrd)
        except errors.KvmlabError:
            pass  # no probe possible: fall back to what libvirt offers
    return accel_service.choose_accel(env, has_kvm)


def _is_local(uri: str) -> bool:
    base = uri.split("?")[0]
    return base in ("qemu:///system", "qemu:///session")


def create(
    env: Env,
    spec: MachineSpec,
    start: bool = False,
    *,
    user_data: str | None = None,
    network_config: str | None = None,
    console_log: str | None = None,
) -> Machine:
    """Create a machine from an image: disk volume, NoCloud seed, domain; optionally boot it.

    Everything is checked before anything is made, and whatever was made is removed again
    if a later step fails. ``user_data``/``network_config`` go into the NoCloud seed
    (:mod:`kvmlab.services.cloudinit` makes them); ``console_log`` is a file on the daemon's
    host receiving the serial console; ``spec.cdrom`` boots an ISO image before an empty disk,
    ``spec.kernel`` boots a kernel from the image pool directly.
    """
    from kvmlab.image.seed import make_nocloud_seed
    from kvmlab.libvirt.build import (
        add_install_media,
        domain_from_spec,
        qcow2_volume,
        random_mac,
        raw_volume,
    )
    from kvmlab.services.images import get_image
    from kvmlab.services.storage import ensure_pools

    hv = env.hypervisor
    if hv.has_machine(spec.name):
        raise errors.AlreadyExists(
            f"a VM named {spec.name!r} exists already on {env.uri}",
            hint="pick another name, or delete it with `kvmlab vm delete`",
        )
    image = get_image(env, spec.image)
    boot_files = {k: get_image(env, v).path for k, v in  # issue 6: direct kernel boot
                  (("kernel", spec.kernel), ("initrd", spec.initrd)) if v}  # fmt: skip
    cdrom = get_image(env, spec.cdrom) if spec.cdrom else None
    for nic in spec.nics:
        hv.network(nic.network)  # raises NetworkNotFound with a hint
    disk_name, seed_name = f"{spec.name}.qcow2", f"{spec.name}-seed.iso"
    for vol in (disk_name, seed_name):
        if hv.has_volume(MACHINE_POOL, vol):
            raise errors.AlreadyExists(
                f"volume {vol!r} exists already in pool {MACHINE_POOL} (left from an earlier "
                "machine?)",
                hint=f"remove it with `virsh vol-delete {vol} --pool {MACHINE_POOL}`",
            )
    accel = resolve_accel(env)
    ensure_pools(env)
    capacity = max(spec.disk_size or 0, image.capacity)
    instance_id = str(uuid.uuid4())
    with _undo_on_error() as undo:
        env.progress(f"creating disk {disk_name}")
        if cdrom:  # issue 6: an empty disk to install onto
            hv.create_volume(MACHINE_POOL, qcow2_volume(disk_name, spec.disk_size or capacity))
        elif spec.full_copy:
            hv.clone_volume(
                MACHINE_POOL, qcow2_volume(disk_name, capacity), image.name, image.pool
            )
        else:
            hv.create_volume(
                MACHINE_POOL, qcow2_volume(disk_name, capacity, backing=(image.path, "qcow2"))
            )
        undo.append(lambda: hv.delete_volume(MACHINE_POOL, disk_name))
        seed = make_nocloud_seed(
            instance_id, spec.effective_hostname, user_data, network_config
        )
        hv.create_volume(MACHINE_POOL, raw_volume(seed_name, len(seed)))
        undo.append(lambda: hv.delete_volume(MACHINE_POOL, seed_name))
        hv.upload_volume(MACHINE_POOL, seed_name, seed)
        xml = domain_from_spec(
            spec,
            accel=accel,
            pool=MACHINE_POOL,
            disk_volume=disk_name,
            seed_volume=seed_name,
            macs=[nic.mac or random_mac() for nic in spec.nics],
            created=utc_now(),
            console_log=console_log,
        )
        add_install_media(  # issue 6
            xml,
            cdrom=(cdrom.pool, cdrom.name) if cdrom else None,
            kernel=boot_files.get("kernel"),
            initrd=boot_files.get("initrd"),
            cmdline=spec.cmdline,
        )
        hv.define_machine(xml)
        undo.append(lambda: hv.undefine(spec.name))
        if start:
            env.progress(f"starting {spec.name}")
            hv.start(spec.name)
    return hv.machine(spec.name)


def start(env: Env, name: str) -> Machine:
    """Boot a stopped machine (resume a paused one)."""
    validate_name(name, "machine")
    from kvmlab.services.clones import refuse_start  # issue 5: templates, bases of clones

    refuse_start(env, name)
    state = env.hypervisor.state(name)
    if state is MachineState.RUNNING:
        raise errors.InvalidState(f"{name} is running already")
    if state is MachineState.PAUSED:
        env.hypervisor.resume(name)
    else:
        env.hypervisor.start(name)
    return env.hypervisor.machine(name)


def stop(env: Env, name: str, timeout: float = STOP_TIMEOUT) -> bool:
    """Shut a machine down gracefully (ACPI power button); force it off after ``timeout``.

    Returns True if it had to be forced.
    """
    validate_name(name, "machine")
    hv = env.hypervisor
    state = hv.state(name)
    if state is MachineState.STOPPED:
        raise errors.InvalidState(f"{name} is stopped already")
    if state is MachineState.PAUSED:
        hv.destroy(name)  # a paused guest cannot react to the power button
        return True
    hv.shutdown(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hv.state(name) is MachineState.STOPPED:
            return False
        time.sleep(0.2)
    env.progress(f"{name} did not power off within {timeout:.0f} s; forcing it off")
    try:
        hv.destroy(name)
    except errors.InvalidState:
        return False  # it stopped just now
    return True


def kill(env: Env, name: str) -> None:
    """Force a machine off at once (like pulling the plug)."""
    validate_name(name, "machine")
    if env.hypervisor.state(name) is MachineState.STOPPED:
        raise errors.InvalidState(f"{name} is stopped already")
    env.hypervisor.destroy(name)


def reboot(env: Env, name: str) -> None:
    """Ask the guest to reboot."""
    validate_name(name, "machine")
    _require_running(env, name, "reboot")
    env.hypervisor.reboot(name)


def pause(env: Env, name: str) -> None:
    """Freeze the guest's CPUs (it keeps its memory)."""
    validate_name(name, "machine")
    _require_running(env, name, "pause")
    env.hypervisor.suspend(name)


def resume(env: Env, name: str) -> None:
    """Let a paused guest run again."""
    validate_name(name, "machine")
    if env.hypervisor.state(name) is not MachineState.PAUSED:
        raise errors.InvalidState(f"{name} is not paused")
    env.hypervisor.resume(name)


def _require_running(env: Env, name: str, verb: str) -> None:
    state = env.hypervisor.state(name)
    if state is not MachineState.RUNNING:
        raise errors.InvalidState(
            f"cannot {verb} {name}: it is {state.value}",
            hint=f"start it with `kvmlab vm start {name}`",
        )


def delete(env: Env, name: str, force: bool = False) -> list[str]:
    """Delete a machine and the volumes it owns (never its image). Returns the volumes removed.

    A running machine is refused unless ``force``, which powers it off first.
    """
    validate_name(name, "machine")
    from kvmlab.services.clones import refuse_if_base  # issue 5: bases of linked clones

    refuse_if_base(env, name)
    hv = env.hypervisor
    m = hv.machine(name)
    if m.state is not MachineState.STOPPED:
        if not force:
            raise errors.InvalidState(
                f"{name} is {m.state.value}; stop it first",
                hint=f"`kvmlab vm stop {name}`, or `kvmlab vm delete {name} --force`",
            )
        hv.destroy(name)
    from kvmlab.services import portforward  # issue 3: forwards go with the machine

    had_ports = portforward.has_ports(env, name)
    hv.undefine(name)
    if had_ports:
        portforward.forget_machine(env)
    removed = []
    for pool, vol in m.owned_volumes:
        hv.delete_volume(pool, vol)
        removed.append(f"{pool}/{vol}")
    return removed
