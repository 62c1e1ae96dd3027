"""``kvmlab ssh``, ``kvmlab ssh-config``, ``kvmlab inventory``: reaching machines (issue 6)."""

from __future__ import annotations

import click

from kvmlab.cli.main import State, pass_state


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--user", "-l", default=None, help="Log in as this user.")
@click.option(
    "--identity", "-i", default=None, type=click.Path(dir_okay=False), help="Private key file."
)
@pass_state
def ssh_command(
    state: State, name: str, command: tuple[str, ...], user: str | None, identity: str | None
) -> None:
    """Log into machine NAME with ssh: kvmlab ssh NAME [-- CMD ARGS...]."""
    import os
    from pathlib import Path

    from kvmlab.services.access import ssh_argv

    argv = ssh_argv(
        state.env, name, list(command), user=user, identity=Path(identity) if identity else None
    )
    state.env.close()
    os.execv(argv[0], argv)  # ssh takes over the terminal; its exit code is ours


@click.command("ssh-config")
@click.option("--user", "-l", default=None, help="User for every host.")
@pass_state
def ssh_config_command(state: State, user: str | None) -> None:
    """Print ssh_config entries for the machines (Include the output in ~/.ssh/config)."""
    from kvmlab.services.access import render_ssh_config, running_with_addresses

    click.echo(render_ssh_config(state.env, running_with_addresses(state.env), user), nl=False)


@click.command("inventory")
@click.option("--yaml", "as_yaml", is_flag=True, help="YAML instead of JSON.")
@click.option("--user", "-l", default=None, help="ansible_user for every host.")
@pass_state
def inventory_command(state: State, as_yaml: bool, user: str | None) -> None:
    """Print an Ansible inventory of the machines with addresses."""
    from kvmlab.services.access import render_inventory, running_with_addresses

    click.echo(render_inventory(running_with_addresses(state.env), as_yaml, user), nl=False)
