"""Talking to a machine through the QEMU guest agent."""

from __future__ import annotations

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import ExecResult, MachineState
from kvmlab.names import validate_name


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
    try:
        return env.hypervisor.guest_exec(name, argv, input_data=input_data, timeout=timeout)
    except (errors.AgentUnavailable, errors.OperationFailed):
        from kvmlab.services.guestfiles import require_agent

        require_agent(env, name)  # no agent at all: raise what says how to get one
        raise


def ping(env: Env, name: str) -> bool:
    """Whether the guest agent answers."""
    try:
        env.hypervisor.agent_command(name, {"execute": "guest-ping"}, timeout=2)
    except errors.AgentUnavailable:
        return False
    return True
