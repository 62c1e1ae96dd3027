"""Networks on a real libvirtd + QEMU, all inside namespaces the test creates (issue 3).

NAT: two machines get leases in the subnet, ping each other and the router, and reach a
"remote" address in another test namespace behind the daemon's host. Isolated: they still
reach each other, but not that address. Subnet conflicts name what they overlap.

Topology (nothing in the root namespace):

    [VMs] -- virbrN -- (sandbox netns) kvh-<id> ==veth== kvp-<id> (peer netns, 10.213.50.1)
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.cli.main import main
from kvmlab.env import Env
from kvmlab.services import agent, images, machines, networks
from kvmlab.services.hostnet import HostNet
from kvmlab.specs import Accel, MachineSpec, NetworkSpec, NicSpec
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

NAT_SUBNET = "10.213.40.0/24"
ISOLATED_SUBNET = "10.213.41.0/24"
PEER_SUBNET = "10.213.50.0/24"
PEER_IP = "10.213.50.1"  # the "remote" address, in the peer namespace
PEER_HOST_SIDE = "10.213.50.2/24"  # the sandbox end of the veth


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@pytest.fixture()
def env(sandbox: Sandbox, tmp_path: Path, test_cache: Path) -> Iterator[Env]:
    e = Env(uri=sandbox.uri, state_dir=tmp_path / "state", cache_dir=test_cache, accel=Accel.TCG)
    yield e
    e.close()


@pytest.fixture()
def host(sandbox: Sandbox) -> HostNet:
    """Host commands (routes, nft, bridges) run in the sandbox's namespace."""
    return HostNet(sandbox.netns)


@pytest.fixture(scope="module")
def peer(sandbox: Sandbox) -> Iterator[str]:
    """A second test namespace holding PEER_IP, linked to the sandbox netns by a veth pair."""
    tag = secrets.token_hex(3)
    name, host_end, peer_end = f"{sandbox.netns}-p", f"kvh-{tag}", f"kvp-{tag}"
    _ip("netns", "add", name)
    try:
        # Created inside the peer netns, then one end moved: neither end ever is in the root ns.
        _ip("-n", name, "link", "add", peer_end, "type", "veth", "peer", "name", host_end)
        _ip("-n", name, "link", "set", host_end, "netns", sandbox.netns)
        _ip("-n", name, "addr", "add", f"{PEER_IP}/24", "dev", peer_end)
        _ip("-n", name, "link", "set", peer_end, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", sandbox.netns, "addr", "add", PEER_HOST_SIDE, "dev", host_end)
        _ip("-n", sandbox.netns, "link", "set", host_end, "up")
        yield name
    finally:
        subprocess.run(["ip", "-n", sandbox.netns, "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _exec(env: Env, capsys: pytest.CaptureFixture[str], vm: str, *argv: str) -> int:
    rc = main(["exec", vm, "--", *argv], env=env)
    capsys.readouterr()
    return rc


def _ping(env: Env, capsys: pytest.CaptureFixture[str], vm: str, ip: str) -> bool:
    """``kvmlab exec VM -- ping -c1 -W2 IP``, tried 3 times: on a loaded 2-core TCG host the
    first ARP exchange alone can take longer than 2 s."""
    return any(_exec(env, capsys, vm, "ping", "-c1", "-W2", ip) == 0 for _ in range(3))


def _wait_agent(env: Env, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not agent.ping(env, name):
        assert time.monotonic() < deadline, f"guest agent of {name} never answered"
        time.sleep(0.3)


def _boot_pair(env: Env, net: str, subnet: str) -> dict[str, str]:
    """Two tiny machines on ``net``, booted, each with its address in ``subnet``."""
    images.build_tiny(env)
    names = [f"{net}-a", f"{net}-b"]
    for n in names:
        machines.create(env, MachineSpec(name=n, image="tiny", nics=(NicSpec(net),)), start=True)
    ips = {}
    for n in names:
        addr = machines.wait_for_address(env, n, timeout=120)[0].ip
        assert ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(subnet)
        ips[n] = addr
        _wait_agent(env, n)
        _wait_configured(env, n, addr)
    return ips


def _wait_configured(env: Env, name: str, ip: str, timeout: float = 60) -> None:
    """Wait until the guest itself has ``ip`` on a NIC (the router's lease comes first)."""
    deadline = time.monotonic() + timeout
    while ip not in [a.ip for a in env.hypervisor.interface_addresses(name, "agent")]:
        assert time.monotonic() < deadline, f"{name} never configured its lease {ip}"
        time.sleep(0.3)


def _cleanup(env: Env, names: list[str], net: str) -> None:
    for n in names:
        if env.hypervisor.has_machine(n):
            machines.delete(env, n, force=True)
    if env.hypervisor.has_network(net):
        networks.delete_network(env, net, force=True)


def test_nat_network_two_machines_reach_each_other_and_the_outside(
    env: Env, host: HostNet, peer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    net = "t3-nat"
    try:
        rc = main(["net", "create", net, "--subnet", NAT_SUBNET], env=env)
        assert rc == 0, capsys.readouterr()
        capsys.readouterr()
        ips = _boot_pair(env, net, NAT_SUBNET)
        a, b = sorted(ips)
        router = str(next(ipaddress.IPv4Network(NAT_SUBNET).hosts()))

        assert _ping(env, capsys, a, ips[b])
        assert _ping(env, capsys, b, ips[a])
        assert _ping(env, capsys, a, router)
        assert _ping(env, capsys, a, PEER_IP), "NAT should lead out to the peer namespace"

        # both in `net leases`
        assert main(["net", "leases", net, "--json"], env=env) == 0
        leased = {le["ip"] for le in json.loads(capsys.readouterr().out)}
        assert set(ips.values()) <= leased

        # `net show`: router, switch, each machine's vnetN port, MAC and IP
        assert main(["net", "show", net, "--json"], env=env) == 0
        topo = json.loads(capsys.readouterr().out)
        assert topo["router"] == router and topo["forwards"] is True
        assert topo["switch"].startswith("virbr")
        ports = {p["machine"]: p for p in topo["ports"]}
        assert set(ports) == {a, b}
        for vm, p in ports.items():
            assert p["ip"] == ips[vm]
            assert p["port"].startswith("vnet")
            assert p["mac"] == env.hypervisor.machine(vm).nics[0].mac
        assert main(["net", "show", net], env=env) == 0
        picture = capsys.readouterr().out
        assert f"[router {router}]" in picture and f"[switch {topo['switch']}]" in picture
        for vm, p in ports.items():
            assert p["port"] in picture and ips[vm] in picture and vm in picture

        # deleting a network with machines on it is refused, naming them
        assert main(["net", "delete", net], env=env) != 0
        err = capsys.readouterr().err
        assert a in err and b in err and "--force" in err
        assert env.hypervisor.has_network(net)
    finally:
        _cleanup(env, [f"{net}-a", f"{net}-b"], net)


def test_isolated_network_machines_reach_each_other_but_not_out(
    env: Env, host: HostNet, peer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    net = "t3-iso"
    # the peer is reachable from the daemon's host itself: the failure below is the network's
    assert host.run(["busybox", "ping", "-c1", "-W2", PEER_IP], check=False).returncode == 0
    try:
        rc = main(["net", "create", net, "--isolated", "--subnet", ISOLATED_SUBNET], env=env)
        assert rc == 0, capsys.readouterr()
        capsys.readouterr()
        ips = _boot_pair(env, net, ISOLATED_SUBNET)
        a, b = sorted(ips)
        assert _ping(env, capsys, a, ips[b])
        assert _ping(env, capsys, b, ips[a])
        assert not _ping(env, capsys, a, PEER_IP), "an isolated network must not lead out"
        topo = networks.show_network(env, net)
        assert topo.forwards is False
        assert {p.machine for p in topo.ports} == {a, b}
    finally:
        _cleanup(env, [f"{net}-a", f"{net}-b"], net)


def test_subnet_conflicts_name_the_network_or_the_host_route(
    env: Env, host: HostNet, peer: str
) -> None:
    net = "t3-conf"
    try:
        networks.create_network(env, NetworkSpec(name=net, subnet="10.213.42.0/24"), host=host)
        with pytest.raises(errors.Conflict) as e1:
            networks.create_network(
                env, NetworkSpec(name="t3-conf2", subnet="10.213.42.0/25"), host=host
            )
        assert f"network {net} (10.213.42.0/24)" in str(e1.value)
        # the veth to the peer namespace gives the daemon's host a route to PEER_SUBNET
        with pytest.raises(errors.Conflict) as e2:
            networks.create_network(
                env, NetworkSpec(name="t3-conf2", subnet="10.213.50.0/24"), host=host
            )
        assert f"host route {PEER_SUBNET} dev kvh-" in str(e2.value)
        assert not env.hypervisor.has_network("t3-conf2")
    finally:
        _cleanup(env, [], net)


def _fetch(peer: str, url: str) -> str | None:
    """GET ``url`` from the peer namespace (the client); None when it cannot connect."""
    # python, not busybox wget: the static busybox's wget crashes on Debian 12
    get = (
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3)"
        ".read().decode(), end='')"
    )
    res = subprocess.run(
        ["ip", "netns", "exec", peer, sys.executable, "-c", get, url],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    return res.stdout if res.returncode == 0 else None


def _serve(env: Env, vm: str) -> None:
    script = "mkdir -p /www && echo hello-from-vm > /www/index.html && httpd -p 8080 -h /www"
    res = agent.exec_in_guest(env, vm, ["/bin/sh", "-c", script], timeout=30)
    assert res.exit_code == 0, res


def _nft_table(netns: str | None) -> str | None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run(
        [*prefix, "nft", "list", "table", "ip", "kvmlab"], capture_output=True, text=True
    )
    return res.stdout if res.returncode == 0 else None


def test_port_forward_from_a_client_namespace_to_a_machine(
    env: Env, sandbox: Sandbox, peer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmlab.services import hostnet

    # kvmlab finds the daemon's namespace by itself: its host commands run there, not here
    runner = hostnet.for_uri(env.uri)
    assert runner is not None and runner.pid is not None
    assert (
        os.stat(f"/proc/{runner.pid}/ns/net").st_ino
        == os.stat(f"/run/netns/{sandbox.netns}").st_ino
    )
    assert _nft_table(None) is None, "a kvmlab table in the root namespace before the test"

    net, vm = "t3-pf", "t3-pf-a"
    url = f"http://{PEER_HOST_SIDE.split('/')[0]}:18080/"
    try:
        networks.create_network(env, NetworkSpec(name=net, subnet="10.213.43.0/24"))
        images.build_tiny(env)
        machines.create(env, MachineSpec(name=vm, image="tiny", nics=(NicSpec(net),)), start=True)
        ip = machines.wait_for_address(env, vm, timeout=120)[0].ip
        _wait_agent(env, vm)
        _serve(env, vm)
        assert _fetch(peer, url) is None

        host_ip = PEER_HOST_SIDE.split("/")[0]
        rc = main(["port", "add", vm, "18080:8080", "--host-ip", host_ip], env=env)
        assert rc == 0, capsys.readouterr()
        assert f"-> {vm} {ip}:8080" in capsys.readouterr().out
        assert _fetch(peer, url) == "hello-from-vm\n"

        # a taken host port is refused, naming the machine that has it ...
        assert main(["port", "add", vm, "18080:22"], env=env) != 0
        assert f"forwarded to {vm} already" in capsys.readouterr().err
        # ... and so is a port a service of the daemon's host listens on
        listen = (
            "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 18081)); "
            "s.listen(); print('up', flush=True); time.sleep(60)"
        )
        with subprocess.Popen(
            ["ip", "netns", "exec", sandbox.netns, sys.executable, "-c", listen],
            stdout=subprocess.PIPE, text=True,
        ) as server:  # fmt: skip
            try:
                assert server.stdout is not None and server.stdout.readline() == "up\n"
                assert main(["port", "add", vm, "18081:8080"], env=env) != 0
                assert "18081/tcp is in use on the daemon's host" in capsys.readouterr().err
            finally:
                server.kill()
        assert main(["port", "list", "--json"], env=env) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(f["host_port"], f["guest_ip"], f["guest_port"]) for f in listed] == [
            (18080, ip, 8080)
        ]

        # still works after the machine reboots (its address is pinned by a reservation)
        machines.reboot(env, vm)
        time.sleep(2)
        _wait_agent(env, vm)
        assert machines.wait_for_address(env, vm, timeout=120)[0].ip == ip
        _serve(env, vm)
        assert _fetch(peer, url) == "hello-from-vm\n"

        # gone after `port rm`
        assert main(["port", "rm", vm, "18080"], env=env) == 0
        capsys.readouterr()
        assert _fetch(peer, url) is None

        # gone with the machine
        assert main(["port", "add", vm, "18080:8080"], env=env) == 0
        capsys.readouterr()
        assert _fetch(peer, url) == "hello-from-vm\n"
        machines.delete(env, vm, force=True)
        assert _fetch(peer, url) is None
        assert "dnat" not in (_nft_table(sandbox.netns) or "")
    finally:
        _cleanup(env, [vm], net)
        if runner is not None:
            subprocess.run(runner.argv(["nft", "delete", "table", "ip", "kvmlab"]),
                           capture_output=True)  # fmt: skip
    assert _nft_table(None) is None, "kvmlab touched the root namespace's firewall"


LAN_SUBNET = "10.213.60.0/24"
LAN_ROUTER = "10.213.60.1"
LAN_HOST = "10.213.60.2/24"  # the "physical NIC"'s address before it is bridged


@pytest.fixture()
def lan(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A LAN in test namespaces: a "physical router" netns running its own dnsmasq DHCP, and
    the sandbox's "physical NIC" (one end of a veth) carrying the default route to it.

    Yields (router netns, NIC name, bridge name to use); removes all of it afterwards.
    """
    tag = secrets.token_hex(3)
    router_ns, nic, rtr, bridge = f"{sandbox.netns}-r", f"kvn-{tag}", f"kvr-{tag}", f"kvb-{tag}"
    dnsmasq: subprocess.Popen[bytes] | None = None
    _ip("netns", "add", router_ns)
    try:
        _ip("-n", router_ns, "link", "add", rtr, "type", "veth", "peer", "name", nic)
        _ip("-n", router_ns, "link", "set", nic, "netns", sandbox.netns)
        _ip("-n", router_ns, "addr", "add", f"{LAN_ROUTER}/24", "dev", rtr)
        _ip("-n", router_ns, "link", "set", rtr, "up")
        _ip("-n", router_ns, "link", "set", "lo", "up")
        _ip("-n", sandbox.netns, "addr", "add", LAN_HOST, "dev", nic)
        _ip("-n", sandbox.netns, "link", "set", nic, "up")
        _ip("-n", sandbox.netns, "route", "add", "default", "via", LAN_ROUTER, "dev", nic)
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", router_ns, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--port=0", f"--interface={rtr}", "--bind-interfaces",
             "--dhcp-range=10.213.60.100,10.213.60.150,255.255.255.0,1h",
             f"--dhcp-leasefile={tmp_path / 'lan.leases'}", f"--pid-file={tmp_path / 'lan.pid'}",
             "--dhcp-authoritative", "--user=root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield router_ns, nic, bridge
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        for dev in (bridge, nic):
            subprocess.run(["ip", "-n", sandbox.netns, "link", "del", dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", router_ns], capture_output=True)


def _addrs(netns: str, dev: str) -> list[str]:
    res = subprocess.run(
        ["ip", "-n", netns, "-j", "-4", "addr", "show", "dev", dev], capture_output=True, text=True
    )
    if res.returncode != 0:
        return []
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(res.stdout)
        for a in link["addr_info"]
    ]


def _default_dev(netns: str) -> str | None:
    res = subprocess.run(
        ["ip", "-n", netns, "-j", "-4", "route", "show", "default"], capture_output=True, text=True
    )
    routes = json.loads(res.stdout or "[]")
    return routes[0].get("dev") if routes else None


def test_bridged_network_on_a_lan_with_its_own_router(
    env: Env,
    sandbox: Sandbox,
    lan: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    router_ns, nic, bridge = lan
    net, vm = "t3-lan", "t3-lan-a"
    ns = sandbox.netns
    try:
        # the NIC has the default route: refused without --yes, nothing changed
        rc = main(["net", "create", net, "--bridge", bridge, "--nic", nic], env=env)
        assert rc != 0
        assert "default route" in capsys.readouterr().err
        assert _addrs(ns, nic) == [LAN_HOST] and _default_dev(ns) == nic

        # the router does not answer: the move is rolled back, the NIC keeps its address
        _ip("-n", router_ns, "link", "set", f"kvr-{nic[4:]}", "down")
        rc = main(["net", "create", net, "--bridge", bridge, "--nic", nic, "--yes"], env=env)
        assert rc != 0
        assert "rolled back" in capsys.readouterr().err
        assert _addrs(ns, nic) == [LAN_HOST] and _default_dev(ns) == nic
        assert _addrs(ns, bridge) == [] and not env.hypervisor.has_network(net)
        assert (
            subprocess.run(["ip", "-n", ns, "link", "show", bridge], capture_output=True).returncode
            != 0
        )
        _ip("-n", router_ns, "link", "set", f"kvr-{nic[4:]}", "up")

        # now it works: the NIC is in the bridge, its address and default route moved there
        rc = main(["net", "create", net, "--bridge", bridge, "--nic", nic, "--yes"], env=env)
        assert rc == 0, capsys.readouterr()
        capsys.readouterr()
        assert _addrs(ns, bridge) == [LAN_HOST] and _addrs(ns, nic) == []
        assert _default_dev(ns) == bridge
        assert env.hypervisor.network(net).mode == "bridge"

        # a machine on it gets its address from the LAN's router, and `kvmlab ls` shows it
        images.build_tiny(env)
        machines.create(env, MachineSpec(name=vm, image="tiny", nics=(NicSpec(net),)), start=True)
        ip = machines.wait_for_address(env, vm, timeout=120)[0].ip
        assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(LAN_SUBNET)
        assert 100 <= int(ip.rsplit(".", 1)[1]) <= 150, "not from the LAN router's DHCP range"
        assert main(["ls", "--json"], env=env) == 0
        listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
        assert ip in [a["ip"] for a in listed[vm]["addresses"]]
        _wait_agent(env, vm)
        assert _ping(env, capsys, vm, LAN_ROUTER)
    finally:
        _cleanup(env, [vm], net)


def test_reserved_address_is_what_the_machine_gets(env: Env) -> None:
    net, vm = "t3-res", "t3-res-a"
    try:
        networks.create_network(env, NetworkSpec(name=net, subnet="10.213.44.0/24"))
        nic, ip = networks.parse_nic_option(f"{net},ip=10.213.44.77")
        assert ip == "10.213.44.77" and nic.mac is not None
        networks.reserve_address(env, net, nic.mac, ip, vm)
        networks.reserve_address(env, net, nic.mac, ip, vm)  # the same again: nothing to do
        with pytest.raises(errors.Conflict, match=r"reserves 10\.213\.44\.77"):
            networks.reserve_address(env, net, "52:54:00:aa:bb:cc", ip)
        with pytest.raises(errors.InvalidInput, match="not a host address"):
            networks.reserve_address(env, net, "52:54:00:aa:bb:cc", "10.213.45.3")
        images.build_tiny(env)
        machines.create(env, MachineSpec(name=vm, image="tiny", nics=(nic,)), start=True)
        assert machines.wait_for_address(env, vm, timeout=120)[0].ip == "10.213.44.77"
    finally:
        _cleanup(env, [vm], net)
