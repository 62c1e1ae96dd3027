"""Bridged networks: machines plugged straight into the LAN through a Linux bridge.

``kvmlab net create lan --bridge br0 --nic eth0`` makes the virtual switch ``br0`` (if it is
not there), enslaves the physical NIC ``eth0`` to it and moves ``eth0``'s addresses and routes
to ``br0``: the host keeps its connection, now through the bridge, and machines on the
network get their addresses from the LAN's own router. No virtual router, no NAT.

Moving a NIC's addresses can cut the host off, so the move is checked (the gateway, or a
neighbour, must still answer ARP through the bridge) and undone step by step when the check
or any step fails. A NIC carrying the default route is only moved with ``yes=True``.

The host commands run through a :class:`~kvmlab.services.hostnet.HostNet`: the daemon's
network namespace; tests point it into their own namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.build import network_from_spec
from kvmlab.models import Address, Network
from kvmlab.services import hostnet
from kvmlab.services.hostnet import HostNet
from kvmlab.specs import NetworkSpec
from kvmlab.timestamps import utc_now

Check = Callable[[HostNet, str, str], bool]  # (host, bridge, address to reach) -> reachable

# ARP resolution of ``target`` out of ``dev``: works without ping/arping on the host (a UDP
# datagram makes the kernel resolve the neighbour; its state tells whether it answered).
_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[2].encode())
try:
    s.sendto(b"kvmlab", (sys.argv[1], 9))
except OSError:
    pass
"""


def arp_check(host: HostNet, bridge: str, target: str, timeout: float = 5.0) -> bool:
    """Whether ``target`` answers ARP through ``bridge`` within ``timeout`` seconds."""
    host.run(["ip", "neigh", "flush", "to", target, "dev", bridge], check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.run([sys.executable, "-c", _PROBE, target, bridge], check=False)
        time.sleep(0.3)
        res = host.run(["ip", "-j", "neigh", "show", "to", target, "dev", bridge], check=False)
        for n in json.loads(res.stdout or "[]"):
            if set(n.get("state", [])) & {"REACHABLE", "STALE", "DELAY", "PERMANENT"}:
                return True
    return False


def _routes(host: HostNet, dev: str) -> list[dict[str, Any]]:
    """The routes through ``dev`` that the kernel does not make itself from an address."""
    res = host.run(["ip", "-j", "-4", "route", "show", "dev", dev])
    return [r for r in json.loads(res.stdout or "[]") if r.get("protocol") != "kernel"]


def _route_argv(r: dict[str, Any], dev: str) -> list[str]:
    argv = [r.get("dst", "default")]
    if r.get("gateway"):
        argv += ["via", r["gateway"]]
    argv += ["dev", dev]
    if r.get("metric") is not None:
        argv += ["metric", str(r["metric"])]
    return argv


def _master(host: HostNet, dev: str) -> str | None:
    res = host.run(["ip", "-j", "link", "show", "dev", dev])
    links = json.loads(res.stdout or "[]")
    return links[0].get("master") if links else None


class _Undo:
    """Host changes done so far, undone in reverse order when a later step fails.

    ``after`` holds steps that only work once the others are undone (a route via a gateway
    needs its address back on the NIC first).
    """

    def __init__(self, host: HostNet) -> None:
        self.host = host
        self.steps: list[list[str]] = []
        self.after: list[list[str]] = []

    def do(self, argv: list[str], undo: list[str] | None) -> None:
        self.host.run(argv)
        if undo is not None:
            self.steps.append(undo)

    def plan(self) -> list[list[str]]:
        """The undo commands in the order they are to run."""
        return [*reversed(self.steps), *self.after]

    def rollback(self) -> list[str]:
        failed = []
        for argv in self.plan():
            res = self.host.run(argv, check=False)
            if res.returncode != 0:
                failed.append(" ".join(argv))
        self.steps.clear()
        self.after.clear()
        return failed


def _check_target(
    host: HostNet, routes: list[dict[str, Any]], addrs: list[ipaddress.IPv4Interface]
) -> str | None:
    """What must still answer after the move: the gateway, else a known neighbour."""
    for r in routes:
        if r.get("gateway"):
            return str(r["gateway"])
    if not addrs:
        return None
    res = host.run(["ip", "-j", "-4", "neigh", "show"], check=False)
    for n in json.loads(res.stdout or "[]"):
        dst = n.get("dst")
        states = set(n.get("state", []))
        if (
            dst
            and any(ipaddress.IPv4Address(dst) in a.network for a in addrs)
            and (states & {"REACHABLE", "STALE", "DELAY"})
        ):
            return str(dst)
    return None


def enslave(
    host: HostNet, bridge: str, nic: str | None, yes: bool = False, check: Check = arp_check
) -> list[list[str]]:
    """Make ``bridge`` (if missing) and move ``nic`` into it with its addresses and routes.

    Returns the commands that undo it, in order, so a later failure (libvirt refusing the
    network) can roll back too.
    """
    undo = _Undo(host)
    if nic is not None and not host.has_link(nic):
        raise errors.InvalidInput(f"no network interface {nic!r} on the daemon's host")
    if nic is not None and nic == bridge:
        raise errors.InvalidInput("--nic and --bridge must be different interfaces")
    addrs = host.addresses(nic) if nic else []
    routes = _routes(host, nic) if nic else []
    if nic and any(r.get("dst", "default") == "default" for r in routes) and not yes:
        raise errors.InvalidInput(
            f"{nic} carries the default route; moving it into {bridge} interrupts the host's "
            "connection for a moment (and cuts it if the bridge does not come up)",
            hint="pass --yes if you are sure (better from a console than over SSH)",
        )
    target = _check_target(host, routes, addrs) if nic else None
    try:
        if not host.has_link(bridge):
            undo.do(["ip", "link", "add", bridge, "type", "bridge"], ["ip", "link", "del", bridge])
            undo.do(["ip", "link", "set", bridge, "type", "bridge", "stp_state", "0"], None)
        undo.do(["ip", "link", "set", bridge, "up"], None)
        if nic is not None and _master(host, nic) != bridge:
            undo.do(
                ["ip", "link", "set", nic, "master", bridge], ["ip", "link", "set", nic, "nomaster"]
            )
            for a in addrs:
                undo.do(
                    ["ip", "addr", "del", str(a), "dev", nic],
                    ["ip", "addr", "add", str(a), "dev", nic],
                )
                undo.do(
                    ["ip", "addr", "add", str(a), "dev", bridge],
                    ["ip", "addr", "del", str(a), "dev", bridge],
                )
            for r in routes:
                # the routes went with the addresses; restore them on the NIC when undoing
                undo.after.append(["ip", "route", "replace", *_route_argv(r, nic)])
                undo.do(["ip", "route", "replace", *_route_argv(r, bridge)], None)
            if target and not check(host, bridge, target):
                raise errors.OperationFailed(
                    f"{target} does not answer through {bridge} after moving {nic} into it"
                )
    except errors.KvmlabError as e:
        failed = undo.rollback()
        extra = f"; could not undo: {'; '.join(failed)}" if failed else ""
        raise errors.OperationFailed(
            f"bridging {nic or bridge} failed and was rolled back: {e}{extra}",
            hint=f"check {nic}'s cable/LAN, or create {bridge} yourself and pass only --bridge",
        ) from e
    return undo.plan()


def create_bridged_network(
    env: Env,
    name: str,
    bridge: str,
    nic: str | None = None,
    yes: bool = False,
    host: HostNet | None = None,
    check: Check = arp_check,
) -> Network:
    """A libvirt network in bridge mode on ``bridge``, making the bridge (and moving ``nic``)
    on the daemon's host first; all of it undone if a step fails."""
    hv = env.hypervisor
    spec = NetworkSpec(name=name, mode="bridge", bridge=bridge)
    if hv.has_network(name):
        raise errors.AlreadyExists(
            f"a network named {name!r} exists already on {env.uri}",
            hint="`kvmlab net list` shows the networks",
        )
    xml = network_from_spec(spec, bridge=bridge, created=utc_now())
    runner = host or hostnet.for_uri(env.uri)
    undo_steps: list[list[str]] = []
    if runner is None:
        if nic is not None:
            raise errors.InvalidInput(
                f"--nic needs commands on the daemon's host, and {env.uri} is not local",
                hint=f"create {bridge} on that host, then pass only --bridge",
            )
    else:
        undo_steps = enslave(runner, bridge, nic, yes=yes, check=check)
    try:
        hv.define_network(xml)
        hv.start_network(name)
    except errors.KvmlabError:
        if hv.has_network(name):
            hv.undefine_network(name)
        if runner is not None:
            for step in undo_steps:
                runner.run(step, check=False)
        raise
    return hv.network(name)


def neighbour_addresses(env: Env, machine: str, macs: set[str]) -> list[Address]:
    """Addresses of a machine's bridged NICs (no libvirt lease exists for them): what its
    guest agent reports, else the daemon host's neighbour (ARP) table."""
    hv = env.hypervisor
    for source in ("agent", "arp"):
        found = [a for a in hv.interface_addresses(machine, source) if (a.mac or "") in macs]
        if found:
            return found
    return []
