"""Talking to a machine through the QEMU guest agent."""

from __future__ import annotations

import time

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import ExecResult, MachineState
from kvmlab.names import validate_name

AGENT_WAIT = 3.0
"""Seconds exec and cp wait for an agent whose channel is not connected yet: after a memory
snapshot is loaded the guest's agent port reconnects 30-140 ms later (measured on TCG), so a
command right after ``snap revert`` or ``try`` must not fail."""


def wait_connected(env: Env, name: str, timeout: float = AGENT_WAIT) -> None:
    """Return once the guest agent answers a ping; wait up to ``timeout`` for it to connect.

    A machine without an agent channel fails at once, and one whose agent stays silent fails
    after ``timeout``, each with what to do (:func:`guestfiles.require_agent`).
    """
    from kvmlab.services.guestfiles import require_agent

    deadline = time.monotonic() + timeout
    channel_checked = False
    while True:
        try:
            env.hypervisor.agent_command(name, {"execute": "guest-ping"}, timeout=1)
            return
        except (errors.AgentUnavailable, errors.OperationFailed):
            if not channel_checked:  # no channel at all: say how to get one, without waiting
                require_agent(env, name, ping=False)
                channel_checked = True
            if time.monotonic() >= deadline:
                require_agent(env, name)
                raise
            time.sleep(0.02)


def exec_in_guest(
    env: Env, name: str, argv: list[str], timeout: float = 300.0, input_data: bytes | None = None
) -> ExecResult:
    """Run ``argv`` in the guest and return its exit code and output."""
    validate_name(name, "machine")
    if not argv:
        raise errors.InvalidInput("no command given", hint="kvmlab exec VM -- CMD ARGS...")
    state = env.hypervisor.state(name)
    if state is not MachineState.RUNNING:
        raise errors.InvalidState(
            f"{name} is {state.value}; commands run only in running machines",
            hint=f"start it with `kvmlab vm start {name}`",
        )
    wait_connected(env, name)
    return env.hypervisor.guest_exec(name, argv, input_data=input_data, timeout=timeout)


def ping(env: Env, name: str) -> bool:
    """Whether the guest agent answers."""
    try:
        env.hypervisor.agent_command(name, {"execute": "guest-ping"}, timeout=2)
    except errors.AgentUnavailable:
        return False
    return True
