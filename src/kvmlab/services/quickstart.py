"""The main job: from a ready host to running machines with IPs, idempotently.

Builds the tiny image if missing, creates a NAT network (virtual router + switch) on a free
subnet, creates and boots ``count`` machines on it and waits for their DHCP leases. Running it
again reuses what exists.
"""

from __future__ import annotations

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import Machine, MachineState
from kvmlab.services import images, machines, networks
from kvmlab.specs import MachineSpec, NetworkSpec, NicSpec


def run(
    env: Env,
    network: str = "kvmlab",
    subnet: str | None = None,
    count: int = 2,
    prefix: str = "demo",
    timeout: float = 180.0,
) -> list[Machine]:
    """Make sure ``count`` machines run on a NAT network and have IPs; return them."""
    if not 1 <= count <= 50:
        raise errors.InvalidInput(f"--count must be between 1 and 50, not {count}")
    hv = env.hypervisor
    env.progress("making sure the built-in tiny image is in the image pool")
    images.build_tiny(env)  # idempotent: reuses the local build and the uploaded volume
    if hv.has_network(network):
        networks.start_network(env, network)
    else:
        spec = NetworkSpec(name=network, mode="nat", subnet=subnet or networks.free_subnet(env))
        env.progress(f"creating NAT network {network} ({spec.subnet})")
        networks.create_network(env, spec)
    names = [f"{prefix}-{i}" for i in range(1, count + 1)]
    for name in names:
        if not hv.has_machine(name):
            env.progress(f"creating {name}")
            machines.create(
                env,
                MachineSpec(name=name, image="tiny", nics=(NicSpec(network),)),
                start=True,
            )
        elif hv.state(name) is not MachineState.RUNNING:
            machines.start(env, name)
    for name in names:
        env.progress(f"waiting for {name}'s address")
        machines.wait_for_address(env, name, timeout)
    wanted = set(names)
    return [m for m in machines.list_machines(env) if m.name in wanted]
