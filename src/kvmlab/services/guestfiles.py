"""Files in and out of a guest through the QEMU guest agent (``kvmlab cp``).

The agent's ``guest-file-open/read/write/close`` carry the bytes base64-encoded in JSON, so
a file goes in chunks; no network, ssh or shared folder is needed, and it works over remote
URIs like everything else that goes through libvirt.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.domain import GUEST_AGENT_CHANNEL
from kvmlab.models import MachineState
from kvmlab.names import validate_name

# Raw bytes per agent call. 512 KiB chunks (~700 KiB of JSON) broke the agent connection on
# libvirt 9.0 + qemu-ga 7.2 (the write, then the close, failed with "Guest agent not
# available for now"); 48 KiB works and moves ~1 MB/s on a TCG guest.
CHUNK = 48 * 1024

Progress = Callable[[int], None]


def require_agent(env: Env, machine: str, ping: bool = True) -> None:
    """Raise :class:`AgentUnavailable` saying how to get an agent, if ``machine`` has none.

    Two cases: the domain has no agent channel at all (libvirt then says "QEMU guest agent is
    not configured"), or (checked with ``ping``) the channel is there but no agent answers in
    the guest (yet).
    """
    dom = env.hypervisor.domain_xml(machine)
    channels = [c for c in dom.channels if c.target_name == GUEST_AGENT_CHANNEL]
    if not channels:
        raise errors.AgentUnavailable(
            f"{machine} has no QEMU guest agent channel, so kvmlab cannot run commands or "
            "copy files in it",
            hint=f"add one (`virt-xml {machine} --add-device --channel unix,"
            f"target.type=virtio,target.name={GUEST_AGENT_CHANNEL}`), install "
            "qemu-guest-agent in the guest and restart it; machines kvmlab creates have both",
        )
    if not ping:
        return
    try:
        env.hypervisor.agent_command(machine, {"execute": "guest-ping"}, timeout=5)
    except errors.KvmlabError as e:
        raise errors.AgentUnavailable(
            f"the guest agent of {machine} is not connected (still booting, or qemu-guest-agent "
            "is not installed or not running in the guest)",
            hint="wait a few seconds after boot; otherwise install and start qemu-guest-agent "
            "in the guest (the built-in tiny image has it)",
        ) from e


def _running_with_agent(env: Env, machine: str) -> None:
    validate_name(machine, "machine")
    state = env.hypervisor.state(machine)
    if state is not MachineState.RUNNING:
        raise errors.InvalidState(
            f"{machine} is {state.value}; files are copied only to and from running machines",
            hint=f"start it with `kvmlab vm start {machine}`",
        )
    from kvmlab.services.agent import wait_connected

    wait_connected(env, machine)


def _agent(env: Env, machine: str, command: str, **arguments: Any) -> Any:
    return env.hypervisor.agent_command(
        machine, {"execute": command, "arguments": arguments}, timeout=60
    )


def copy_to_guest(
    env: Env, machine: str, source: Path, dest: str, progress: Progress | None = None
) -> int:
    """Copy local file ``source`` to ``dest`` in the guest (a directory if it ends in /).

    Returns the number of bytes written.
    """
    _running_with_agent(env, machine)
    if dest.endswith("/"):
        dest += source.name
    done = 0
    with source.open("rb") as f:
        handle = _agent(env, machine, "guest-file-open", path=dest, mode="wb")
        try:
            while chunk := f.read(CHUNK):
                _agent(env, machine, "guest-file-write", handle=handle,
                       **{"buf-b64": base64.b64encode(chunk).decode()})  # fmt: skip
                done += len(chunk)
                if progress:
                    progress(done)
        finally:
            _agent(env, machine, "guest-file-close", handle=handle)
    return done


def copy_from_guest(
    env: Env, machine: str, source: str, dest: Path, progress: Progress | None = None
) -> int:
    """Copy ``source`` in the guest to local ``dest`` (into it, if it is a directory).

    Returns the number of bytes read.
    """
    _running_with_agent(env, machine)
    if dest.is_dir():
        dest = dest / Path(source).name
    done = 0
    handle = _agent(env, machine, "guest-file-open", path=source, mode="rb")
    try:
        with dest.open("wb") as f:
            while True:
                got = _agent(env, machine, "guest-file-read", handle=handle, count=CHUNK)
                data = base64.b64decode(got.get("buf-b64", ""))
                f.write(data)
                done += len(data)
                if progress and data:
                    progress(done)
                if got.get("eof") or not data:
                    break
    finally:
        _agent(env, machine, "guest-file-close", handle=handle)
    return done
