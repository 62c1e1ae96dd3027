"""Pure parts of issue 3: port-forward parsing, the nftables script, host runners, the
``net show`` picture, and subnet conflicts against injected host routes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.cli.netdraw import topology_lines
from kvmlab.env import Env
from kvmlab.libvirt.ports import PortsXML, PortXML
from kvmlab.models import MachineState, Network, NetworkPort, NetworkTopology, PortForward
from kvmlab.services import hostnet, networks
from kvmlab.services.hostnet import HostNet, Route
from kvmlab.services.portforward import nft_script, parse_forward

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", (8080, 80, "tcp")),
        ("53:5353/udp", (53, 5353, "udp")),
        (" 22:22/TCP", (22, 22, "tcp")),
    ],
)
def test_forwards_parse(text: str, expected: tuple[int, int, str]) -> None:
    assert parse_forward(text) == expected


@pytest.mark.parametrize("text", ["8080", "80:80/icmp", "0:80", "80:70000", "a:b", "80-81:80", ""])
def test_bad_forwards_are_refused_with_the_form(text: str) -> None:
    with pytest.raises(errors.InvalidInput, match=r"HOSTPORT:GUESTPORT|between 1 and 65535"):
        parse_forward(text)


def test_nft_script_replaces_the_whole_kvmlab_table() -> None:
    fwd = [
        PortForward("web", "tcp", None, 8080, "10.70.0.5", 80, "lab"),
        PortForward("dns", "udp", "192.0.2.2", 5353, "10.70.0.6", 53, "lab"),
    ]
    script = nft_script(fwd)
    # create-then-delete first: works whether or not the table exists, atomically with the rest
    assert script.startswith("table ip kvmlab\ndelete table ip kvmlab\ntable ip kvmlab {")
    assert "fib daddr type local tcp dport 8080 counter dnat to 10.70.0.5:80" in script
    assert "ip daddr 192.0.2.2 udp dport 5353 counter dnat to 10.70.0.6:53" in script
    assert script.count("dnat to") == 4  # prerouting (from outside) + output (the host's own)
    assert nft_script([]) == "table ip kvmlab\ndelete table ip kvmlab\n"


def test_ports_metadata_round_trips_without_namespace() -> None:
    ports = PortsXML()
    p = PortXML()
    p.proto, p.host_port, p.guest_ip, p.guest_port, p.network = "tcp", 8080, "10.70.0.5", 80, "lab"
    ports.ports.add(p)
    again = PortsXML.from_metadata_xml(ports.to_metadata_xml())
    assert [(x.proto, x.host_port, x.guest_ip, x.guest_port) for x in again.ports] == [
        ("tcp", 8080, "10.70.0.5", 80)
    ]
    assert "xmlns" not in ports.to_metadata_xml()  # virDomainSetMetadata adds it


def test_host_commands_enter_the_daemons_namespace() -> None:
    assert HostNet().argv(["nft", "-f", "-"]) == ["nft", "-f", "-"]
    assert HostNet("lab").argv(["ip", "route"]) == ["ip", "netns", "exec", "lab", "ip", "route"]
    assert HostNet(pid=42).argv(["ip", "route"]) == [
        "nsenter", "--net=/proc/42/ns/net", "--", "ip", "route",
    ]  # fmt: skip
    assert hostnet.for_uri("qemu+ssh://host/system") is None
    assert hostnet._socket_path("qemu:///system?socket=/x/sock") == "/x/sock"
    assert hostnet._socket_path("qemu:///system") == "/var/run/libvirt/libvirt-sock"


def test_remote_uris_refuse_host_commands() -> None:
    with pytest.raises(errors.InvalidInput, match="not a local daemon"):
        hostnet.require("qemu+ssh://h/system", None, "port forwarding")


class _Routes(HostNet):
    def __init__(self, routes: list[Route]) -> None:
        super().__init__()
        self._routes = routes

    def routes(self) -> list[Route]:
        return self._routes


def test_subnet_conflicts_name_networks_and_host_routes(tmp_path: Path) -> None:
    env = Env(uri=f"test://{NODE}", state_dir=tmp_path)
    try:
        host = _Routes(
            [
                Route(ipaddress.IPv4Network("192.168.1.0/24"), "eth0"),
                Route(ipaddress.IPv4Network("10.70.0.0/24"), "virbr3"),  # network lab's own
            ]
        )
        assert networks.subnet_conflicts(env, "10.70.0.0/25", host) == [
            "network lab (10.70.0.0/24)"
        ]
        assert networks.subnet_conflicts(env, "192.168.0.0/16", host) == [
            "host route 192.168.1.0/24 dev eth0"
        ]
        assert networks.subnet_conflicts(env, "10.99.0.0/24", host) == []
    finally:
        env.close()


def test_topology_picture_shows_router_switch_and_ports() -> None:
    net = Network("lab", True, True, "nat", "virbr3", "10.70.0.0/24", "10.70.0.1",
                  ("10.70.0.2", "10.70.0.254"), True)  # fmt: skip
    topo = NetworkTopology(
        net,
        "10.70.0.1",
        True,
        "virbr3",
        (
            NetworkPort(
                "a", MachineState.RUNNING, "52:54:00:00:00:01", "vnet0", "10.70.0.5", "lease"
            ),
            NetworkPort("b", MachineState.STOPPED, "52:54:00:00:00:02", None, None, None),
        ),
    )
    lines = topology_lines(topo)
    assert lines[0] == "network lab  (nat, 10.70.0.0/24, active)"
    assert "[router 10.70.0.1]  NAT to the host's uplink, DHCP 10.70.0.2-10.70.0.254" in lines[1]
    assert "[switch virbr3]" in lines[3]
    assert "|-- vnet0" in lines[4] and "10.70.0.5" in lines[4] and "a (running)" in lines[4]
    assert "`-- (down)" in lines[5] and "b (stopped)" in lines[5]
    iso = topology_lines(topo._replace(forwards=False, network=net._replace(mode="isolated")))
    assert "no way out: isolated" in iso[1]


def test_nic_option_with_mac_and_ip() -> None:
    nic, ip = networks.parse_nic_option("lab,mac=52:54:00:12:34:56,ip=10.70.0.50")
    assert (nic.network, nic.mac, ip) == ("lab", "52:54:00:12:34:56", "10.70.0.50")
    nic, ip = networks.parse_nic_option("lab")
    assert (nic.network, nic.mac, ip) == ("lab", None, None)
    nic, ip = networks.parse_nic_option("lab,ip=10.70.0.9")
    assert nic.mac is not None and nic.mac.startswith(
        "52:54:00:"
    )  # chosen now, for the reservation


@pytest.mark.parametrize(
    "text",
    ["lab,ip=10.70.0.300", "lab,speed=1G", "lab,ip=1.2.3.4,ip=1.2.3.5", "lab,mac", "lab,mac=zz"],
)
def test_bad_nic_options_are_refused(text: str) -> None:
    with pytest.raises(errors.InvalidInput):
        networks.parse_nic_option(text)
