"""``kvmlab net create`` of a NAT or isolated network, without click.

The click command (:mod:`kvmlab.cli.net`) and the console script's fast path
(:mod:`kvmlab.cli.fast`) both run this one function, so they print the same bytes and raise
the same errors.
"""

from __future__ import annotations

from kvmlab.env import Env


def create_routed_network(
    env: Env,
    name: str,
    mode: str,
    subnet: str | None,
    dhcp_range: str | None,
    domain: str | None,
    as_json: bool,
) -> None:
    """Create and start network ``name`` (``mode`` ``nat`` or ``isolated``) and show it."""
    from kvmlab.cli.output import echo, emit_json
    from kvmlab.errors import InvalidInput
    from kvmlab.services import networks
    from kvmlab.specs import NetworkSpec

    rng = None
    if dhcp_range:
        parts = dhcp_range.split("-")
        if len(parts) != 2:
            raise InvalidInput(f"--dhcp-range {dhcp_range!r} is not FIRST-LAST")
        rng = (parts[0].strip(), parts[1].strip())
    spec = NetworkSpec(
        name=name,
        mode=mode,  # type: ignore[arg-type]
        subnet=subnet or networks.free_subnet(env),
        domain=domain,
        dhcp_range=rng,
    )
    n = networks.create_network(env, spec)
    if as_json:
        emit_json(n.to_dict())
    else:
        echo(f"created {mode} network {n.name}: {n.subnet} on switch {n.bridge}")
