"""``kvmlab vm ...`` and ``kvmlab exec``: machines."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kvmlab.cli.main import State, json_option, pass_state

F = TypeVar("F", bound=Callable[..., Any])


def _cloud_init_options(f: F) -> F:
    """Issue 6: options that make the NoCloud seed's user-data and network-config."""
    path = click.Path(dir_okay=False, path_type=Path)
    for opt in reversed([
        click.option("--user", default=None, help="Create this user (sudo, your SSH key)."),
        click.option("--ssh-key", type=path, default=None,
                     help="Public key to install (default: ~/.ssh/id_*.pub if present)."),
        click.option("--password-hash", default=None,
                     help="Password hash for the user (e.g. from `mkpasswd -m sha-512`)."),
        click.option("--packages", default=None, help="Packages to install, comma separated."),
        click.option("--run", "run_cmds", multiple=True, help="Command to run at first boot."),
        click.option("--user-data", type=path, default=None,
                     help="Your own cloud-init user-data (replaces the generated one)."),
        click.option("--network-config", type=path, default=None,
                     help="cloud-init network-config YAML for the seed."),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _install_media_options(f: F) -> F:
    """Issue 6: booting an installer ISO or a kernel from the image pool."""
    for opt in reversed([
        click.option("--cdrom", default=None,
                     help="ISO image to boot first; the disk starts empty (needs --disk)."),
        click.option("--kernel", default=None, help="Kernel image (image-pool volume) to boot."),
        click.option("--initrd", default=None, help="Initrd image (image-pool volume)."),
        click.option("--cmdline", default=None, help="Kernel command line."),
    ]):  # fmt: skip
        f = opt(f)
    return f


@click.group("vm")
def vm() -> None:
    """Create, run, stop and delete machines."""


@vm.command("create")
@click.argument("name")
@click.option("--image", "-i", default=None,
              help="Image to start from (`kvmlab image list`); required unless --cdrom.")
@click.option("--cpus", default=1, show_default=True, type=int)
@click.option("--memory", "-m", default="256M", show_default=True, help="RAM, e.g. 256M, 2G.")
@click.option("--disk", default=None, help="Disk size (default: the image's size), e.g. 2G.")
@click.option("--net", "nets", multiple=True,
              help="Network to attach: NET[,mac=MAC][,ip=ADDR] (repeat for more NICs).")
@click.option("--full", is_flag=True, help="Copy the image instead of a qcow2 overlay on it.")
@click.option("--hostname", default=None, help="Guest hostname (default: the name).")
@click.option("--start", is_flag=True, help="Boot it once created.")
@_cloud_init_options  # issue 6
@_install_media_options  # issue 6
@json_option
@pass_state
def create(
    state: State,
    /,
    name: str,
    image: str | None,
    cpus: int,
    memory: str,
    disk: str | None,
    nets: tuple[str, ...],
    full: bool,
    hostname: str | None,
    start: bool,
    **extra: Any,
) -> None:
    """Create machine NAME from an image (or an installer ISO with --cdrom)."""
    from kvmlab.services import machines, networks
    from kvmlab.specs import MachineSpec, parse_size

    image = image or extra["cdrom"]
    if not image:
        raise click.UsageError("give --image (or --cdrom to install from an ISO image)")
    seed = _seed_from_options(extra)
    parsed_nets = [networks.parse_nic_option(n) for n in nets]  # issue 3: NET[,mac=,ip=]
    spec = MachineSpec(
        name=name,
        image=image,
        cpus=cpus,
        memory=parse_size(memory, "--memory"),
        disk_size=parse_size(disk, "--disk", default_unit="G") if disk else None,
        nics=tuple(nic for nic, _ in parsed_nets),
        full_copy=full,
        hostname=hostname,
        cdrom=extra["cdrom"],
        kernel=extra["kernel"],
        initrd=extra["initrd"],
        cmdline=extra["cmdline"],
    )
    with networks.reservations(state.env, name, parsed_nets):  # issue 3: ip= reserved
        m = machines.create(state.env, spec, start=start, **seed)
    _show(state, m, f"created {m.name} ({m.state.value}, {m.accel})")


def _seed_from_options(extra: dict[str, Any]) -> dict[str, str | None]:
    from kvmlab.services import cloudinit

    packages = tuple(p.strip() for p in (extra["packages"] or "").split(",") if p.strip())
    user_data = cloudinit.user_data_for(
        home=Path.home(), user=extra["user"], ssh_key=extra["ssh_key"],
        password_hash=extra["password_hash"], packages=packages, run=extra["run_cmds"],
        user_data=extra["user_data"],
    )  # fmt: skip
    net = extra["network_config"]
    return {
        "user_data": user_data,
        "network_config": cloudinit.load_network_config(net) if net else None,
    }


def _show(state: State, m: object, text: str) -> None:
    from kvmlab.cli.output import emit_json
    from kvmlab.models import Machine

    if state.json and isinstance(m, Machine):
        emit_json(m.to_dict())
    else:
        click.echo(text)


def _simple(verb: str, doc: str) -> None:
    """Register ``vm VERB NAME`` for a service function of the same name."""

    @vm.command(verb, help=doc)
    @click.argument("name")
    @pass_state
    def command(state: State, name: str) -> None:
        from kvmlab.services import machines

        func = {"pause": machines.pause, "resume": machines.resume, "reboot": machines.reboot,
                "kill": machines.kill}[verb]  # fmt: skip
        func(state.env, name)
        click.echo(f"{verb}: {name}")


_simple("kill", "Force machine NAME off at once (like pulling the plug).")
_simple("reboot", "Ask machine NAME to reboot.")
_simple("pause", "Freeze machine NAME's CPUs (memory is kept).")
_simple("resume", "Let a paused machine run again.")


@vm.command("start")
@click.argument("name")
@json_option
@pass_state
def start(state: State, name: str) -> None:
    """Boot machine NAME."""
    from kvmlab.services import machines

    m = machines.start(state.env, name)
    _show(state, m, f"started {name}")


@vm.command("stop")
@click.argument("name")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds before forcing off.")
@pass_state
def stop(state: State, name: str, timeout: float) -> None:
    """Shut machine NAME down (ACPI), forcing it off after --timeout."""
    from kvmlab.services import machines

    forced = machines.stop(state.env, name, timeout=timeout)
    click.echo(f"stopped {name}" + (" (forced off)" if forced else ""))


@vm.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Power it off first if it runs.")
@click.option("--cascade", is_flag=True, help="Also delete its linked clones, deepest first.")
@json_option
@pass_state
def delete(state: State, name: str, force: bool, cascade: bool) -> None:
    """Delete machine NAME and the volumes it owns (never its image)."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services import machines

    if cascade:  # issue 5: the machines whose disks are overlays on NAME's go first
        from kvmlab.services.clones import delete_with_dependents

        removed = delete_with_dependents(state.env, name, force=force)
    else:
        removed = machines.delete(state.env, name, force=force)
    if state.json:
        emit_json({"deleted": name, "volumes": removed})
    else:
        click.echo(f"deleted {name}" + (f" and {', '.join(removed)}" if removed else ""))


@vm.command("info")
@click.argument("name")
@json_option
@pass_state
def info(state: State, name: str) -> None:
    """Show machine NAME: state, resources, disks, NICs, addresses."""
    from kvmlab.cli.output import emit_json, machine_ips, table
    from kvmlab.services import machines
    from kvmlab.specs import format_size

    m = machines.get_machine(state.env, name)
    if state.json:
        emit_json(m.to_dict())
        return
    rows = [
        ("name", m.name), ("state", m.state.value), ("uuid", m.uuid), ("cpus", m.cpus),
        ("memory", format_size(m.memory)), ("image", m.image or "-"),
        ("accelerator", m.accel or "-"), ("hostname", m.hostname or "-"),
        ("disks", ", ".join(m.disks) or "-"), ("ip", machine_ips(m)),
        ("created", m.created or "-"),
    ]  # fmt: skip
    rows += [
        (f"nic {i}", f"{n.mac} on {n.network or n.bridge}" + (f" via {n.port}" if n.port else ""))
        for i, n in enumerate(m.nics)
    ]
    table(None, ["", ""], rows)


@vm.command("ip")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait until the machine has an address.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@json_option
@pass_state
def ip(state: State, name: str, wait: bool, timeout: float) -> None:
    """Print machine NAME's IP addresses."""
    from kvmlab.cli.output import emit_json
    from kvmlab.errors import NotFound
    from kvmlab.services import machines

    if wait:
        addrs = machines.wait_for_address(state.env, name, timeout)
    else:
        addrs = list(machines.get_machine(state.env, name).addresses)
    if state.json:
        emit_json([{"ip": a.ip, "mac": a.mac, "source": a.source} for a in addrs])
        return
    if not addrs:
        raise NotFound(f"{name} has no address yet", hint=f"`kvmlab vm ip {name} --wait`")
    for ip_ in dict.fromkeys(a.ip for a in addrs):
        click.echo(ip_)


@vm.command("console")
@click.argument("name")
@pass_state
def console(state: State, name: str) -> None:
    """Attach to machine NAME's serial console (leave with Ctrl-])."""
    from kvmlab.services.console import attach

    click.echo(f"Connected to {name}'s console; press Ctrl-] to leave.", err=True)
    attach(state.env, name, sys.stdin.fileno(), sys.stdout.fileno())
    click.echo("\nleft the console", err=True)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for it.")
@json_option
@pass_state
def exec_command(state: State, name: str, argv: tuple[str, ...], timeout: float) -> None:
    """Run a command in machine NAME through the guest agent: kvmlab exec NAME -- CMD ARGS..."""
    from kvmlab.cli.output import emit_json
    from kvmlab.services.agent import exec_in_guest

    result = exec_in_guest(state.env, name, list(argv), timeout=timeout)
    if state.json:
        emit_json(result.to_dict())
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
    click.get_current_context().exit(result.exit_code)
