"""Networks: NAT (a virtual router with DHCP/DNS behind a virtual switch) and isolated."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.build import network_from_spec
from kvmlab.models import Lease, MachineState, Network, NetworkPort, NetworkTopology
from kvmlab.names import validate_name
from kvmlab.services import hostnet
from kvmlab.services.hostnet import HostNet
from kvmlab.specs import NetworkSpec, NicSpec
from kvmlab.timestamps import utc_now


def list_networks(env: Env) -> list[Network]:
    """Every libvirt network on the connection."""
    return env.hypervisor.list_networks()


def get_network(env: Env, name: str) -> Network:
    """One network by name."""
    validate_name(name, "network")
    return env.hypervisor.network(name)


def free_bridge_name(
    env: Env, known: list[Network] | None = None, host: HostNet | None = None
) -> str:
    """The first ``virbrN`` used neither by a libvirt network nor by an interface of the
    daemon's host (when local; see :mod:`hostnet`)."""
    nets = known if known is not None else env.hypervisor.list_networks()
    used = {n.bridge for n in nets if n.bridge}
    runner = host or hostnet.for_uri(env.uri)
    if runner is not None:
        used |= runner.interfaces()
    n = 0
    while f"virbr{n}" in used:
        n += 1
    return f"virbr{n}"


def free_subnet(env: Env, candidates: range = range(70, 250)) -> str:
    """The first ``10.N.0.0/24`` free of libvirt networks and the daemon host's routes."""
    taken = [ipaddress.IPv4Network(n.subnet) for n in env.hypervisor.list_networks() if n.subnet]
    host = hostnet.for_uri(env.uri)  # the daemon's host routes (None: a remote daemon)
    if host is not None:
        taken += [r.destination for r in host.routes()]
    for n in candidates:
        net = ipaddress.IPv4Network(f"10.{n}.0.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise errors.Conflict("no free 10.N.0.0/24 subnet found", hint="give one with --subnet")


def subnet_conflicts(
    env: Env, subnet: str, host: HostNet | None = None, known: list[Network] | None = None
) -> list[str]:
    """What overlaps ``subnet``: libvirt networks, and the routes of the daemon's host.

    Routes are read through ``host`` (default: the local host for a local URI; a remote
    host's routes are not visible to kvmlab, so only its libvirt networks are checked).
    Routes through a libvirt network's own bridge are that network, named once.
    """
    net = ipaddress.IPv4Network(subnet)
    found = []
    bridges = set()
    for other in known if known is not None else env.hypervisor.list_networks():
        if other.bridge:
            bridges.add(other.bridge)
        if other.subnet and ipaddress.IPv4Network(other.subnet, strict=False).overlaps(net):
            found.append(f"network {other.name} ({other.subnet})")
    runner = host or hostnet.for_uri(env.uri)
    for route in runner.routes() if runner else []:
        if route.device in bridges or not route.destination.overlaps(net):
            continue
        found.append(f"host route {route.destination} dev {route.device or '?'}")
    return found


def create_network(
    env: Env, spec: NetworkSpec, start: bool = True, host: HostNet | None = None
) -> Network:
    """Define a NAT or isolated network, and start it (with autostart on).

    ``host`` runs commands on the daemon's host (to read its routes); see :mod:`hostnet`.
    """
    hv = env.hypervisor
    if spec.mode == "bridge":
        from kvmlab.services import bridges

        if not spec.bridge:
            raise errors.InvalidInput("a bridged network needs --bridge BR", hint="e.g. br0")
        return bridges.create_bridged_network(env, spec.name, spec.bridge, host=host)
    if hv.has_network(spec.name):
        raise errors.AlreadyExists(
            f"a network named {spec.name!r} exists already on {env.uri}",
            hint="`kvmlab net list` shows the networks",
        )
    known = hv.list_networks()
    runner = host or hostnet.for_uri(env.uri)
    conflicts = subnet_conflicts(env, spec.subnet, runner, known)
    if conflicts:
        raise errors.Conflict(
            f"subnet {spec.subnet} overlaps {', '.join(conflicts)}",
            hint="pick another --subnet",
        )
    xml = network_from_spec(
        spec,
        bridge=spec.bridge or free_bridge_name(env, known, runner),
        created=utc_now(),
    )
    hv.define_network(xml)
    if start:
        try:
            hv.start_network(spec.name)
        except errors.KvmlabError:
            hv.undefine_network(spec.name)
            raise
    return hv.network(spec.name)


def start_network(env: Env, name: str) -> Network:
    """Start a stopped network."""
    validate_name(name, "network")
    env.hypervisor.start_network(name)
    _resync_ports(env)
    return env.hypervisor.network(name)


def _resync_ports(env: Env) -> None:
    """Starting a network makes libvirt insert its firewall rules again, above kvmlab's."""
    from kvmlab.services import portforward

    runner = hostnet.for_uri(env.uri)
    if runner is not None and portforward.list_ports(env):
        portforward.sync(env, runner)


def stop_network(env: Env, name: str) -> None:
    """Stop a network (its machines lose their link)."""
    validate_name(name, "network")
    env.hypervisor.stop_network(name)


def delete_network(env: Env, name: str, force: bool = False) -> list[str]:
    """Delete a network; refused while machines are attached unless ``force``.

    Returns the machines that were attached (they keep a NIC pointing at a missing network).
    """
    validate_name(name, "network")
    hv = env.hypervisor
    hv.network(name)
    attached = sorted(
        m.name for m in hv.list_machines() if any(nic.network == name for nic in m.nics)
    )
    if attached and not force:
        raise errors.Conflict(
            f"network {name!r} has machines attached: {', '.join(attached)}",
            hint="delete or move them first, or pass --force to detach them",
        )
    hv.undefine_network(name)
    return attached


def leases(env: Env, name: str) -> list[Lease]:
    """The DHCP leases the network's virtual router handed out."""
    validate_name(name, "network")
    return env.hypervisor.leases(name)


def show_network(env: Env, name: str) -> NetworkTopology:
    """The network as router, switch and the machines plugged into it (with port, MAC, IP).

    IPs come from the router's DHCP leases; for a running machine without a lease (a
    bridged NIC, a static address) from the guest agent.
    """
    validate_name(name, "network")
    hv = env.hypervisor
    net = hv.network(name)
    by_mac: dict[str, str] = {}
    if net.active:
        # a driver without DHCP leases (the test driver): IPs from the agent only
        with suppress(errors.KvmlabError):
            by_mac = {le.mac.lower(): le.ip for le in hv.leases(name)}
    ports = []
    for m in hv.list_machines():
        nics = [n for n in m.nics if n.network == name]
        if not nics:
            continue
        agent: dict[str, str] = {}
        running = m.state is MachineState.RUNNING
        if running and any(n.mac not in by_mac for n in nics):
            agent = {
                (a.mac or "").lower(): a.ip for a in hv.interface_addresses(m.name, "agent")
            }
        for nic in nics:
            ip, source = by_mac.get(nic.mac), "lease"
            if ip is None and running:
                ip, source = agent.get(nic.mac), "agent"
            ports.append(
                NetworkPort(
                    machine=m.name,
                    state=m.state,
                    mac=nic.mac,
                    port=nic.port if running else None,
                    ip=ip,
                    source=source if ip else None,
                )
            )
    return NetworkTopology(
        network=net,
        router=net.gateway,
        forwards=net.mode in ("nat", "route", "bridge"),
        switch=net.bridge,
        ports=tuple(sorted(ports, key=lambda p: (p.port or "~", p.machine))),
    )


def parse_nic_option(text: str) -> tuple[NicSpec, str | None]:
    """``--net NET[,mac=MAC][,ip=ADDR]`` as a NIC and the address to reserve for it.

    With ``ip=`` and no ``mac=`` a MAC is chosen now: the reservation needs it before boot.
    Unknown keys are refused.
    """
    from kvmlab.libvirt.build import random_mac

    name, *pairs = [p.strip() for p in text.split(",")]
    opts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("mac", "ip") or key in opts or not value:
            raise errors.InvalidInput(
                f"--net {text!r}: {pair!r} is not mac=MAC or ip=ADDR (once each)",
                hint="write it like --net lab,mac=52:54:00:12:34:56,ip=10.70.0.50",
            )
        opts[key] = value
    ip = opts.get("ip")
    if ip is not None:
        try:
            ip = str(ipaddress.IPv4Address(ip))
        except ValueError as e:
            raise errors.InvalidInput(f"--net {text!r}: {ip!r} is not an IPv4 address") from e
    mac = opts.get("mac") or (random_mac() if ip else None)
    return NicSpec(name, mac=mac), ip


def reserve_address(
    env: Env, network: str, mac: str, ip: str, hostname: str | None = None
) -> None:
    """Make the network's DHCP server always give ``ip`` to ``mac`` (``virNetworkUpdate``,
    live and persistent). Refused outside the subnet, on the router's address, or when
    the address or MAC is reserved for something else already."""
    validate_name(network, "network")
    hv = env.hypervisor
    net = hv.network(network)
    if not net.subnet or net.mode == "bridge":
        raise errors.InvalidInput(
            f"network {network} has no DHCP of kvmlab's to reserve {ip} in",
            hint="on a bridged network the LAN's router hands out addresses",
        )
    subnet = ipaddress.IPv4Network(net.subnet)
    addr = ipaddress.IPv4Address(ip)
    if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
        raise errors.InvalidInput(f"{ip} is not a host address of {network} ({net.subnet})")
    if ip == net.gateway:
        raise errors.Conflict(f"{ip} is the router of {network}", hint="pick another ip=")
    mac = mac.lower()
    for h in hv.network_xml(network).dhcp_hosts:
        same_mac, same_ip = (h.mac or "").lower() == mac, h.ip == ip
        if same_mac and same_ip:
            return
        if same_mac or same_ip:
            raise errors.Conflict(
                f"{network} reserves {h.ip} for {h.mac} ({h.name or 'no name'}) already",
                hint="pick another ip= or mac=",
            )
    hv.add_dhcp_host(network, mac, hostname, ip)


@contextmanager
def reservations(
    env: Env, machine: str, wanted: Sequence[tuple[NicSpec, str | None]]
) -> Iterator[None]:
    """Reserve each NIC's ``ip`` (from :func:`parse_nic_option`) for the block that creates
    the machine; if the block fails, the reservations made here are dropped again."""
    made: list[tuple[str, str, str]] = []
    for nic, ip in wanted:
        if ip is None or nic.mac is None:
            continue
        before = len(env.hypervisor.network_xml(nic.network).dhcp_hosts)
        reserve_address(env, nic.network, nic.mac, ip, machine)
        if len(env.hypervisor.network_xml(nic.network).dhcp_hosts) > before:
            made.append((nic.network, nic.mac, ip))
    try:
        yield
    except BaseException:
        for network, mac, ip in reversed(made):
            with suppress(errors.KvmlabError):
                env.hypervisor.remove_dhcp_host(network, mac, ip)
        raise
