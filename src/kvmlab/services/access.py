"""Reaching machines over SSH: ``kvmlab ssh``, an ssh_config block, an Ansible inventory.

Host keys are remembered per machine, not per IP: every entry carries
``HostKeyAlias kvmlab-<uuid>`` and a kvmlab-owned known_hosts file, so a new machine that
gets a deleted one's DHCP address does not trip over the old key, and a changed key of the
same machine is still caught (``StrictHostKeyChecking accept-new``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import Machine, MachineState


def known_hosts(env: Env) -> Path:
    """kvmlab's own known_hosts file (in the state directory)."""
    return env.state_dir / "ssh" / "known_hosts"


def _ip(m: Machine) -> str | None:
    return m.addresses[0].ip if m.addresses else None


def _options(env: Env, m: Machine) -> list[tuple[str, str]]:
    return [
        ("HostKeyAlias", f"kvmlab-{m.uuid}"),
        ("StrictHostKeyChecking", "accept-new"),
        ("UserKnownHostsFile", str(known_hosts(env))),
    ]


def ssh_argv(
    env: Env,
    name: str,
    command: Sequence[str] = (),
    user: str | None = None,
    identity: Path | None = None,
) -> list[str]:
    """The ``ssh`` command line that logs into machine ``name`` (running, with an address)."""
    from kvmlab.services.machines import get_machine

    m = get_machine(env, name)
    if m.state is not MachineState.RUNNING:
        raise errors.InvalidState(
            f"{name} is {m.state.value}", hint=f"start it with `kvmlab vm start {name}`"
        )
    ip = _ip(m)
    if ip is None:
        raise errors.NotFound(
            f"{name} has no address yet", hint=f"wait for one with `kvmlab vm ip {name} --wait`"
        )
    ssh = shutil.which("ssh")
    if ssh is None:
        raise errors.HostNotReady("no ssh client", hint="apt install openssh-client")
    known_hosts(env).parent.mkdir(parents=True, exist_ok=True)
    argv = [ssh]
    for key, value in _options(env, m):
        argv += ["-o", f"{key}={value}"]
    if user:
        argv += ["-l", user]
    if identity is not None:
        if not identity.is_file():
            raise errors.InvalidInput(f"no key file {identity}", hint="give a private key file")
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    return [*argv, "--", ip, *command]


def running_with_addresses(env: Env) -> list[Machine]:
    """kvmlab's machines; running ones with their addresses (DHCP lease, else the agent's)."""
    from kvmlab.services.machines import addresses, list_machines

    out = []
    for m in list_machines(env):
        if not m.kvmlab:
            continue
        if m.state is MachineState.RUNNING and not m.addresses:
            m = m._replace(addresses=tuple(addresses(env, m.name)))
        out.append(m)
    return out


def render_ssh_config(env: Env, machines: Sequence[Machine], user: str | None = None) -> str:
    """An ssh_config block per machine with an address (``Include`` it from ~/.ssh/config)."""
    out = [f"# kvmlab machines on {env.uri}; regenerate with `kvmlab ssh-config`"]
    for m in machines:
        ip = _ip(m)
        if ip is None:
            out.append(f"# {m.name}: {m.state.value}, no address")
            continue
        out += ["", f"Host {m.name}", f"    HostName {ip}"]
        if user:
            out.append(f"    User {user}")
        out += [f"    {key} {value}" for key, value in _options(env, m)]
    return "\n".join(out) + "\n"


def inventory(machines: Sequence[Machine], user: str | None = None) -> dict[str, Any]:
    """An Ansible YAML/JSON inventory: every machine with an address under ``all``, grouped
    by network (``net_<name>``) and image (``image_<name>``)."""
    hosts: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for m in machines:
        ip = _ip(m)
        if ip is None:
            continue
        hosts[m.name] = {"ansible_host": ip} | ({"ansible_user": user} if user else {})
        names = [f"net_{n.network}" for n in m.nics if n.network]
        names += [f"image_{m.image}"] if m.image else []
        for g in names:
            group = groups.setdefault(_group_name(g), {"hosts": {}})
            group["hosts"][m.name] = None
    doc: dict[str, Any] = {"hosts": hosts}
    if groups:
        doc["children"] = dict(sorted(groups.items()))
    return {"all": doc}


def _group_name(name: str) -> str:
    # Ansible group names: letters, digits and underscores
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def render_inventory(machines: Sequence[Machine], as_yaml: bool, user: str | None = None) -> str:
    """The inventory as YAML or JSON text."""
    doc = inventory(machines, user)
    if as_yaml:
        import yaml

        return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    import json

    return json.dumps(doc, indent=2) + "\n"
