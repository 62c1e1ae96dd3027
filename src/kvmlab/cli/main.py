"""The ``kvmlab`` command: global options, error-to-exit-code mapping, top-level commands.

The CLI is a thin skin over :mod:`kvmlab.services`; it parses, calls one service, shows the
result. Services are imported inside commands so ``kvmlab ls --json`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from kvmlab.env import DEFAULT_URI, Env
from kvmlab.errors import ExitStatus, KvmlabError

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What the global options set, passed to every command."""

    def __init__(self, env: Env | None = None, injected: bool = False) -> None:
        self.env = env or Env()
        self.json = False
        self.debug = False
        self.injected = injected  # env given by the caller (tests): keep its connection open


pass_state = click.make_pass_decorator(State)


def json_option(f: F) -> F:
    """``--json`` on a command: machine-readable output on stdout."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(State).json = True

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=callback,
        help="Print JSON instead of a table.",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--connect",
    "uri",
    envvar="KVMLAB_CONNECT",
    default=DEFAULT_URI,
    show_default=True,
    help="libvirt URI (env KVMLAB_CONNECT), e.g. qemu+ssh://host/system.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every command that shows).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option(
    "--accel",
    type=click.Choice(["kvm", "tcg"]),
    default=None,
    help="Accelerator for new machines (default: what `host check` measured).",
)
@click.version_option(package_name="kvmlab")
@click.pass_context
def cli(ctx: click.Context, uri: str, as_json: bool, debug: bool, accel: str | None) -> None:
    """kvmlab: KVM/QEMU virtual machines through libvirt."""
    state = ctx.ensure_object(State)
    if not state.injected:
        state.env = Env(uri=uri)
        ctx.call_on_close(state.env.close)
    env = state.env
    if accel:
        from kvmlab.specs import Accel

        env.accel = Accel(accel)
    state.debug = debug
    state.json = state.json or as_json
    if not state.json:
        from kvmlab.cli.output import say

        env.progress = lambda msg: say(f"… {msg}")


@cli.command("ls")
@json_option
@pass_state
def ls(state: State) -> None:
    """List machines with their state and IPs."""
    from kvmlab.cli.output import emit_json, machines_table
    from kvmlab.services.machines import list_machines

    machines = list_machines(state.env)
    if state.json:
        emit_json([m.to_dict() for m in machines])
    else:
        machines_table(machines)


@cli.command("quickstart")
@click.option("--network", default="kvmlab", show_default=True, help="Network to create/use.")
@click.option("--subnet", default=None, help="Subnet for the network (default: a free 10.x/24).")
@click.option("--count", default=2, show_default=True, help="How many machines.")
@click.option("--prefix", default="demo", show_default=True, help="Machine name prefix.")
@json_option
@pass_state
def quickstart(state: State, network: str, subnet: str | None, count: int, prefix: str) -> None:
    """The main job: image, NAT network, machines booted; print their IPs."""
    from kvmlab.cli.output import emit_json, machines_table
    from kvmlab.services.quickstart import run

    machines = run(state.env, network=network, subnet=subnet, count=count, prefix=prefix)
    if state.json:
        emit_json([m.to_dict() for m in machines])
    else:
        machines_table(machines)


def _register() -> None:
    from kvmlab.cli import host, image, net, vm

    cli.add_command(vm.vm)
    cli.add_command(vm.exec_command)
    cli.add_command(net.net)
    from kvmlab.cli import port  # issue 3

    cli.add_command(port.port)
    cli.add_command(host.host)
    cli.add_command(image.image)
    from kvmlab.cli import snap  # snapshots, try, cp (issue #4)

    cli.add_command(snap.snap)
    cli.add_command(snap.try_command)
    cli.add_command(snap.cp_command)
    from kvmlab.cli import clone  # clones and templates (issue #5)

    cli.add_command(clone.clone_command)
    cli.add_command(clone.template)
    from kvmlab.cli import access  # ssh, ssh-config, inventory (issue #6)

    cli.add_command(access.ssh_command)
    cli.add_command(access.ssh_config_command)
    cli.add_command(access.inventory_command)


_register()


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    """Run the CLI; map every error to one exit code, in this one place.

    ``env`` injects the environment (tests pass one whose connection outlives the call).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    obj = State(env=env, injected=True) if env is not None else State()
    try:
        rc = cli.main(args=args, prog_name="kvmlab", standalone_mode=False, obj=obj)
    except KvmlabError as e:
        from kvmlab.cli.output import report_error

        return report_error(e, debug)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return int(ExitStatus.INTERRUPTED)
    except click.ClickException as e:
        e.show()
        return int(ExitStatus.USAGE)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return int(ExitStatus.INTERRUPTED)
    except Exception as e:  # the last line of defence: no traceback without --debug
        from kvmlab.cli.output import report_unexpected

        return report_unexpected(e, debug)
    return rc if isinstance(rc, int) else int(ExitStatus.OK)
