"""Port forwarding: a port of the daemon's host leads to a port of a machine on a NAT network.

How it works (docs/networks.md):

* Each machine's forwards are kept in its libvirt metadata (:mod:`kvmlab.libvirt.ports`), so
  libvirt stays the source of truth; the host firewall is derived from them by :func:`sync`.
* The machine's address is pinned with a DHCP reservation on its network, so a reboot (or a
  lease expiring) cannot move it away from the forward.
* :func:`sync` rewrites the kvmlab-owned nftables table ``ip kvmlab`` atomically (DNAT in a
  prerouting chain for traffic from outside and an output chain for the host's own), and
  one ``iptables`` ACCEPT per forward at the top of ``FORWARD``: libvirt 9.0 puts its
  guest-protecting REJECT rules in iptables, and an nftables ``accept`` in another table
  cannot overrule a reject there.
* :func:`sync` runs after every ``port add/rm``, ``vm delete`` and ``net start``, and on its
  own as ``kvmlab port sync`` (e.g. from a libvirt network hook after a host reboot).

Every host command runs through a :class:`~kvmlab.services.hostnet.HostNet` (the daemon's
network namespace); remote URIs are refused.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt.ports import PORTS_KEY, PORTS_NS, PortsXML, PortXML
from kvmlab.models import MachineState, PortForward
from kvmlab.names import validate_name
from kvmlab.services import hostnet
from kvmlab.services.hostnet import HostNet

TABLE = "kvmlab"
RULE_COMMENT = "kvmlab-port"
_SPEC_RE = re.compile(r"^(\d+):(\d+)(?:/(tcp|udp))?$")


def parse_forward(text: str) -> tuple[int, int, str]:
    """``HOSTPORT:GUESTPORT[/tcp|/udp]`` as (host port, guest port, protocol)."""
    m = _SPEC_RE.match(text.strip().lower())
    if not m:
        raise errors.InvalidInput(
            f"port forward {text!r} is not HOSTPORT:GUESTPORT[/tcp|/udp]",
            hint="write it like 8080:80 or 5353:53/udp",
        )
    host_port, guest_port = int(m.group(1)), int(m.group(2))
    for port in (host_port, guest_port):
        if not 1 <= port <= 65535:
            raise errors.InvalidInput(f"port {port} is not between 1 and 65535")
    return host_port, guest_port, m.group(3) or "tcp"


def _parse_host_ip(host_ip: str | None) -> str | None:
    if host_ip is None:
        return None
    try:
        return str(ipaddress.IPv4Address(host_ip))
    except ValueError as e:
        raise errors.InvalidInput(
            f"--host-ip {host_ip!r} is not an IPv4 address", hint="e.g. --host-ip 192.0.2.10"
        ) from e


def _read(env: Env, machine: str) -> PortsXML:
    xml = env.hypervisor.machine_metadata(machine, PORTS_NS)
    return PortsXML.from_metadata_xml(xml) if xml else PortsXML()


def _write(env: Env, machine: str, ports: PortsXML) -> None:
    xml = ports.to_metadata_xml() if len(ports.ports) else None
    env.hypervisor.set_machine_metadata(machine, PORTS_KEY, PORTS_NS, xml)


def _forward(machine: str, p: PortXML) -> PortForward:
    return PortForward(
        machine=machine,
        proto=p.proto or "tcp",
        host_ip=p.host_ip or None,
        host_port=p.host_port or 0,
        guest_ip=p.guest_ip or "",
        guest_port=p.guest_port or 0,
        network=p.network or "",
    )


def list_ports(env: Env, machine: str | None = None) -> list[PortForward]:
    """Every port forward (of one machine when ``machine`` is given)."""
    if machine is not None:
        validate_name(machine, "machine")
        names = [env.hypervisor.machine(machine).name]
    else:
        names = [m.name for m in env.hypervisor.list_machines() if m.kvmlab]
    out = []
    for name in names:
        out += [_forward(name, p) for p in _read(env, name).ports]
    return sorted(out, key=lambda f: (f.host_port, f.proto, f.host_ip or ""))


def _guest_address(env: Env, machine: str) -> tuple[str, str, str]:
    """(network, MAC, IP) of the machine's first NIC on a NAT network."""
    hv = env.hypervisor
    m = hv.machine(machine)
    nat = {n.name for n in hv.list_networks() if n.mode == "nat"}
    nic = next((n for n in m.nics if n.network in nat), None)
    if nic is None or nic.network is None:
        raise errors.InvalidInput(
            f"{machine} has no NIC on a NAT network; ports are forwarded to NAT networks only",
            hint="a machine on a bridged network is reachable on the LAN directly",
        )
    reserved = {(h.mac or "").lower(): h.ip for h in hv.network_xml(nic.network).dhcp_hosts if h.ip}
    ip = reserved.get(nic.mac)
    if ip is None and m.state is MachineState.RUNNING:
        ip = next((le.ip for le in hv.leases(nic.network) if le.mac.lower() == nic.mac), None)
    if ip is None:
        raise errors.InvalidState(
            f"{machine} has no address on {nic.network} yet",
            hint=f"start it and wait for its address: `kvmlab vm ip {machine} --wait`",
        )
    if nic.mac not in reserved:
        # pin the address so a reboot or an expired lease cannot move it from the forward
        hv.add_dhcp_host(nic.network, nic.mac, m.hostname or machine, ip)
    return nic.network, nic.mac, ip


def add_port(
    env: Env, machine: str, forward: str, host_ip: str | None = None, host: HostNet | None = None
) -> PortForward:
    """Forward a host port to ``machine`` (``forward`` is ``HOSTPORT:GUESTPORT[/proto]``).

    Refused when another forward already has that host port (same protocol and address).
    """
    validate_name(machine, "machine")
    host_port, guest_port, proto = parse_forward(forward)
    addr = _parse_host_ip(host_ip)
    runner = hostnet.require(env.uri, host, "port forwarding")
    for other in list_ports(env):
        same_ip = other.host_ip is None or addr is None or other.host_ip == addr
        if other.proto == proto and other.host_port == host_port and same_ip:
            where = other.host_ip or "every host address"
            raise errors.Conflict(
                f"host port {host_port}/{proto} ({where}) is forwarded to {other.machine} already",
                hint=f"pick another port, or `kvmlab port rm {other.machine} {host_port}`",
            )
    _refuse_listening(runner, proto, host_port, addr)
    network, mac, ip = _guest_address(env, machine)
    ports = _read(env, machine)
    p = PortXML()
    p.proto, p.host_ip, p.host_port = proto, addr, host_port
    p.guest_ip, p.guest_port, p.network, p.mac = ip, guest_port, network, mac
    ports.ports.add(p)
    _write(env, machine, ports)
    sync(env, runner)
    return _forward(machine, p)


def _refuse_listening(host: HostNet, proto: str, port: int, addr: str | None) -> None:
    """A service of the host itself on that port would be shadowed by the forward."""
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    res = host.run(["ss", flag, f"( sport = :{port} )"], check=False)
    for line in res.stdout.splitlines():
        fields = line.split()
        local = fields[3] if len(fields) > 3 else ""
        bound = local.rsplit(":", 1)[0].strip("[]")
        if addr is None or bound in (addr, "0.0.0.0", "*", "::"):
            raise errors.Conflict(
                f"host port {port}/{proto} is in use on the daemon's host ({local} listening)",
                hint="pick another host port",
            )


def remove_port(
    env: Env, machine: str, host_port: int, proto: str = "tcp", host: HostNet | None = None
) -> PortForward:
    """Stop forwarding ``host_port`` to ``machine``."""
    validate_name(machine, "machine")
    runner = hostnet.require(env.uri, host, "port forwarding")
    ports = _read(env, machine)
    for p in ports.ports:
        if p.host_port == host_port and (p.proto or "tcp") == proto:
            ports.ports.remove(p)
            _write(env, machine, ports)
            sync(env, runner)
            return _forward(machine, p)
    raise errors.NotFound(
        f"{machine} has no forward of host port {host_port}/{proto}",
        hint=f"`kvmlab port list {machine}` shows its forwards",
    )


def nft_script(forwards: list[PortForward]) -> str:
    """The nftables script that makes table ``ip kvmlab`` hold exactly ``forwards``."""
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}"]
    if not forwards:
        return "\n".join(lines) + "\n"
    rules = []
    for f in forwards:
        match = f"ip daddr {f.host_ip}" if f.host_ip else "fib daddr type local"
        rules.append(
            f"    {match} {f.proto} dport {f.host_port} counter dnat to {f.guest_ip}:{f.guest_port}"
        )
    lines += [
        f"table ip {TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *rules,
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        *rules,
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _forward_rules(f: PortForward) -> list[str]:
    return [
        "FORWARD", "-d", f"{f.guest_ip}/32", "-p", f.proto, "--dport", str(f.guest_port),
        "-m", "conntrack", "--ctstate", "DNAT",
        "-m", "comment", "--comment", RULE_COMMENT, "-j", "ACCEPT",
    ]  # fmt: skip


def sync(env: Env, host: HostNet | None = None) -> list[PortForward]:
    """Make the host firewall match the forwards recorded in libvirt; return them."""
    runner = hostnet.require(env.uri, host, "port forwarding")
    forwards = list_ports(env)
    runner.run(["nft", "-f", "-"], input_text=nft_script(forwards))
    listed = runner.run(["iptables", "-w", "-S", "FORWARD"], check=False)
    for line in listed.stdout.splitlines():
        if RULE_COMMENT in line and line.startswith("-A "):
            runner.run(["iptables", "-w", "-D", *shlex.split(line)[1:]], check=False)
    if listed.returncode == 0:
        for f in forwards:
            runner.run(["iptables", "-w", "-I", *_forward_rules(f)])
    return forwards


def has_ports(env: Env, machine: str) -> bool:
    """Whether the machine has port forwards (read it before the machine goes)."""
    try:
        return env.hypervisor.machine_metadata(machine, PORTS_NS) is not None
    except errors.OperationFailed:
        return False  # a driver without metadata support has no forwards either


def forget_machine(env: Env, host: HostNet | None = None) -> None:
    """After a machine with forwards was deleted: drop its rules (its metadata went with it).

    On a remote URI there is nothing kvmlab can do from here; ``kvmlab port sync`` on the
    daemon's host cleans up.
    """
    runner = host or hostnet.for_uri(env.uri)
    if runner is not None:
        sync(env, runner)
