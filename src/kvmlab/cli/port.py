"""``kvmlab port ...``: host ports forwarded to machines on NAT networks."""

from __future__ import annotations

import click

from kvmlab.cli.main import State, json_option, pass_state


@click.group("port")
def port() -> None:
    """Forward ports of the host to machines on NAT networks."""


@port.command("add")
@click.argument("machine")
@click.argument("forward", metavar="HOSTPORT:GUESTPORT[/tcp|/udp]")
@click.option("--host-ip", default=None, help="Only this address of the host (default: all).")
@json_option
@pass_state
def add(state: State, machine: str, forward: str, host_ip: str | None) -> None:
    """Forward a host port to a port of MACHINE."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services import portforward

    f = portforward.add_port(state.env, machine, forward, host_ip=host_ip)
    if state.json:
        emit_json(f.to_dict())
    else:
        click.echo(
            f"{f.host_ip or '*'}:{f.host_port}/{f.proto} -> {f.machine} {f.guest_ip}:{f.guest_port}"
        )


@port.command("list")
@click.argument("machine", required=False)
@json_option
@pass_state
def list_(state: State, machine: str | None) -> None:
    """List port forwards (of MACHINE, or all)."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.services import portforward

    found = portforward.list_ports(state.env, machine)
    if state.json:
        emit_json([f.to_dict() for f in found])
        return
    table(
        None,
        ["HOST", "PROTO", "MACHINE", "GUEST", "NETWORK"],
        [
            (
                f"{f.host_ip or '*'}:{f.host_port}",
                f.proto,
                f.machine,
                f"{f.guest_ip}:{f.guest_port}",
                f.network,
            )
            for f in found
        ],
    )


@port.command("rm")
@click.argument("machine")
@click.argument("host_port", metavar="HOSTPORT[/tcp|/udp]")
@pass_state
def rm(state: State, machine: str, host_port: str) -> None:
    """Stop forwarding HOSTPORT to MACHINE."""
    from kvmlab.errors import InvalidInput
    from kvmlab.services import portforward

    number, _, proto = host_port.partition("/")
    if not number.isdigit() or proto not in ("", "tcp", "udp"):
        raise InvalidInput(f"{host_port!r} is not HOSTPORT[/tcp|/udp]", hint="e.g. 8080/tcp")
    f = portforward.remove_port(state.env, machine, int(number), proto or "tcp")
    click.echo(f"removed {f.host_ip or '*'}:{f.host_port}/{f.proto} -> {f.machine}")


@port.command("sync")
@pass_state
def sync(state: State) -> None:
    """Re-apply every recorded forward to the host firewall (e.g. after a host reboot)."""
    from kvmlab.services import portforward

    found = portforward.sync(state.env)
    click.echo(f"{len(found)} port forward(s) applied")
