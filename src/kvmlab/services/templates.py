"""Templates: stopped machines frozen as read-only bases that clones are made from.

A template is an ordinary kvmlab machine whose metadata says ``<kvmlab:template>true``; its
disks are marked read-only in its definition and ``vm start`` refuses it, so its volumes
never change under the linked clones made from it (``kvmlab clone TEMPLATE NEW``).
"""

from __future__ import annotations

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.clonexml import SEED_ROLE
from kvmlab.models import MachineState, Template
from kvmlab.names import validate_name
from kvmlab.services import clones, journal


def make_template(env: Env, name: str) -> Template:
    """Freeze stopped machine ``name`` as a template (idempotent)."""
    from kvmlab.libvirt.clonexml import template_domain

    validate_name(name, "machine")
    hv = env.hypervisor
    state = hv.state(name)
    if state is not MachineState.STOPPED:
        raise errors.InvalidState(
            f"{name} is {state.value}; only a stopped machine can become a template",
            hint=f"`kvmlab vm stop {name}` first",
        )
    xml = hv.domain_xml(name, inactive=True)
    if xml.kvmlab is not None and not xml.kvmlab.template:
        hv.define_machine(template_domain(xml))
    elif xml.kvmlab is None:
        template_domain(xml)  # raises: not kvmlab's
    return get_template(env, name)


def get_template(env: Env, name: str) -> Template:
    """One template with the machines that depend on it."""
    validate_name(name, "machine")
    found = next((t for t in list_templates(env) if t.name == name), None)
    if found is None:
        env.hypervisor.machine(name)  # MachineNotFound if it does not exist at all
        raise errors.InvalidInput(
            f"{name} is not a template", hint=f"make it one with `kvmlab template make {name}`"
        )
    return found


def list_templates(env: Env) -> list[Template]:
    """Every template, with how many machines depend on it (overlays at any depth)."""
    journal.recover_if_pending(env)
    hv = env.hypervisor
    machines = hv.list_machines()
    bases: dict[str, tuple[str, ...]] = {}  # template -> its disk volumes (not the seed)
    for m in machines:
        if not m.kvmlab:
            continue
        meta = hv.domain_xml(m.name, inactive=True).kvmlab
        if meta is not None and meta.template:
            bases[m.name] = tuple(f"{v.pool}/{v.name}" for v in meta.volumes if v.role != SEED_ROLE)
    if not bases:
        return []
    volumes = clones.pool_volumes(env)
    owners = clones.volume_owners(machines, volumes)
    out = []
    for m in machines:
        if m.name in bases:
            deps = clones.dependents_of(clones.machine_paths(m, volumes), volumes, owners)
            out.append(
                Template(m.name, m.image, bases[m.name], tuple(sorted(deps.machines)), m.created)
            )
    return out
