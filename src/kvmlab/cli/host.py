"""``kvmlab host ...``: is this host ready, and make it ready."""

from __future__ import annotations

import click

from kvmlab.cli.main import State, json_option, pass_state
from kvmlab.errors import ExitStatus


@click.group("host")
def host() -> None:
    """Host readiness: check and set up."""


@host.command("check")
@click.option("--no-probe", is_flag=True, help="Skip the KVM-vs-TCG boot probe (uses the cache).")
@json_option
@pass_state
def check(state: State, no_probe: bool) -> None:
    """Check virtualization support, KVM usability, QEMU, libvirt and networking."""
    from kvmlab.cli.output import emit_json, table
    from kvmlab.models import CheckStatus
    from kvmlab.services import host as host_service

    checks = host_service.check(state.env, run_probe=not no_probe)
    if state.json:
        emit_json([c.to_dict() for c in checks])
    else:
        marks = {CheckStatus.OK: "ok", CheckStatus.WARN: "warn", CheckStatus.FAIL: "FAIL"}
        table(
            None,
            ["", "CHECK", "DETAIL"],
            [(marks[c.status], c.name, c.detail + (f"\n  fix: {c.fix}" if c.fix else ""))
             for c in checks],
        )
    if any(c.status is CheckStatus.FAIL for c in checks):
        click.get_current_context().exit(int(ExitStatus.UNAVAILABLE))


@host.command("setup")
@pass_state
def setup(state: State) -> None:
    """Install QEMU and libvirt with the package manager and start the daemon."""
    from kvmlab.services import host as host_service

    done = host_service.setup(state.env)
    click.echo("\n".join(done) if done else "nothing to do: the stack is installed and running")
