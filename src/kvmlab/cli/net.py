"""``kvmlab net ...``: virtual networks."""

from __future__ import annotations

import click

from kvmlab.cli.main import State, json_option, pass_state


@click.group("net")
def net() -> None:
    """NAT and isolated virtual networks."""


@net.command("create")
@click.argument("name")
@click.option("--nat", "mode", flag_value="nat", default=True, help="Router with NAT (default).")
@click.option("--isolated", "mode", flag_value="isolated", help="Switch with DHCP, no way out.")
@click.option("--subnet", default=None, help="e.g. 10.70.0.0/24 (default: a free 10.N.0.0/24).")
@click.option("--dhcp-range", default=None, help="FIRST-LAST addresses handed out by DHCP.")
@click.option("--domain", default=None, help="DNS domain of the network, e.g. lab.")
@click.option(
    "--bridge", default=None, help="Bridged: plug VMs into host bridge BR (made if missing)."
)
@click.option("--nic", default=None, help="With --bridge: enslave this host NIC (moves its IPs).")
@click.option("--yes", is_flag=True, help="With --nic: move it even if it has the default route.")
@json_option
@pass_state
def create(
    state: State,
    name: str,
    mode: str,
    subnet: str | None,
    dhcp_range: str | None,
    domain: str | None,
    bridge: str | None,
    nic: str | None,
    yes: bool,
) -> None:
    """Create and start network NAME (NAT, isolated, or bridged to the LAN)."""
    from kvmlab.cli.output import emit_json
    from kvmlab.errors import InvalidInput

    if bridge is not None:
        from kvmlab.services import bridges

        if mode == "isolated" or subnet or dhcp_range or domain:
            raise InvalidInput(
                "--bridge takes no --isolated, --subnet, --dhcp-range or --domain",
                hint="on a bridged network the LAN's router decides addresses",
            )
        n = bridges.create_bridged_network(state.env, name, bridge, nic=nic, yes=yes)
        if state.json:
            emit_json(n.to_dict())
        else:
            via = f" (with {nic} moved into it)" if nic else ""
            click.echo(f"created bridged network {n.name} on bridge {n.bridge}{via}")
        return
    if nic is not None or yes:
        raise InvalidInput("--nic and --yes go with --bridge", hint="e.g. --bridge br0 --nic eth0")
    from kvmlab.cli.netcreate import create_routed_network

    create_routed_network(state.env, name, mode, subnet, dhcp_range, domain, state.json)


@net.command("list")
@json_option
@pass_state
def list_(state: State) -> None:
    """List networks."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services import networks

    nets = networks.list_networks(state.env)
    if state.json:
        emit_json([n.to_dict() for n in nets])
        return
    table(
        None,
        ["NAME", "MODE", "ACTIVE", "SUBNET", "ROUTER", "SWITCH", "AUTOSTART"],
        [
            (
                n.name,
                n.mode,
                "yes" if n.active else "no",
                n.subnet or "-",
                n.gateway or "-",
                n.bridge or "-",
                "yes" if n.autostart else "no",
            )
            for n in nets
        ],
    )


@net.command("info")
@click.argument("name")
@json_option
@pass_state
def info(state: State, name: str) -> None:
    """Show network NAME."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services import networks

    n = networks.get_network(state.env, name)
    if state.json:
        emit_json(n.to_dict())
        return
    table(None, ["", ""], list(n.to_dict().items()))


@net.command("start")
@click.argument("name")
@pass_state
def start(state: State, name: str) -> None:
    """Start network NAME."""
    from kvmlab.services import networks

    networks.start_network(state.env, name)
    click.echo(f"started network {name}")


@net.command("stop")
@click.argument("name")
@pass_state
def stop(state: State, name: str) -> None:
    """Stop network NAME."""
    from kvmlab.services import networks

    networks.stop_network(state.env, name)
    click.echo(f"stopped network {name}")


@net.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even with machines attached (says which).")
@pass_state
def delete(state: State, name: str, force: bool) -> None:
    """Delete network NAME."""
    from kvmlab.services import networks

    detached = networks.delete_network(state.env, name, force=force)
    if detached:
        click.echo(f"detached from {name}: {', '.join(detached)}", err=True)
    click.echo(f"deleted network {name}")


@net.command("leases")
@click.argument("name")
@json_option
@pass_state
def leases(state: State, name: str) -> None:
    """Show the DHCP leases of network NAME."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services import networks

    found = networks.leases(state.env, name)
    if state.json:
        emit_json([le.to_dict() for le in found])
        return
    table(None, ["IP", "MAC", "HOSTNAME"], [(le.ip, le.mac, le.hostname or "-") for le in found])


@net.command("show")
@click.argument("name")
@json_option
@pass_state
def show(state: State, name: str) -> None:
    """Draw network NAME: its router, its switch, and each VM's port, MAC and IP."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services import networks

    topo = networks.show_network(state.env, name)
    if state.json:
        emit_json(topo.to_dict())
        return
    from kvmlab.cli.netdraw import topology_lines

    for line in topology_lines(topo):
        click.echo(line)
