"""``kvmlab net show``, ``net create --bridge`` and ``kvmlab port`` in-process on the test
driver (a per-test copy of tests/data/cli/node.xml): output, exit codes, errors with hints.

The test driver is not a local daemon, so nothing here runs a host command.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.cli.main import main
from kvmlab.env import Env
from kvmlab.errors import ExitStatus

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"
URI = f"test://{NODE}"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(uri=URI, state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    yield e
    e.close()


def run(capsys: pytest.CaptureFixture[str], env: Env, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv), env=env)
    out, err = capsys.readouterr()
    return rc, out, err


def test_net_show_draws_router_switch_and_ports(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "net", "show", "lab")
    assert rc == ExitStatus.OK
    lines = out.splitlines()
    assert lines[0] == "network lab  (nat, 10.70.0.0/24, active)"
    assert "[router 10.70.0.1]" in lines[1] and "[switch virbr3]" in out
    assert any("52:54:00:00:00:01" in line and "web (running)" in line for line in lines)


def test_net_show_json_is_the_same_as_data(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "net", "show", "lab", "--json")
    assert rc == 0
    topo = json.loads(out)
    assert (topo["router"], topo["switch"], topo["forwards"]) == ("10.70.0.1", "virbr3", True)
    web = next(p for p in topo["ports"] if p["machine"] == "web")
    assert web["mac"] == "52:54:00:00:00:01" and web["state"] == "running"


def test_net_show_unknown_network_hints_at_list(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "net", "show", "nope")
    assert rc == ExitStatus.NOT_FOUND
    assert "kvmlab net list" in err and "Traceback" not in err


def test_bridged_network_on_an_existing_bridge(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = run(capsys, env, "net", "create", "lan", "--bridge", "br0")
    assert rc == 0, err
    assert "created bridged network lan on bridge br0" in out
    rc, out, _ = run(capsys, env, "net", "list", "--json")
    lan = next(n for n in json.loads(out) if n["name"] == "lan")
    assert (lan["mode"], lan["bridge"], lan["subnet"]) == ("bridge", "br0", None)


def test_bridge_options_are_checked(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "net", "create", "x", "--nic", "eth0")
    assert rc == ExitStatus.USAGE and "--bridge" in err
    rc, _, err = run(
        capsys, env, "net", "create", "x", "--bridge", "br0", "--subnet", "10.1.0.0/24"
    )
    assert rc == ExitStatus.USAGE and "LAN's router" in err
    # moving a NIC needs commands on the daemon's host; a non-local URI cannot
    rc, _, err = run(capsys, env, "net", "create", "x", "--bridge", "br0", "--nic", "eth0")
    assert rc == ExitStatus.USAGE and "not local" in err
    rc, _, err = run(capsys, env, "net", "create", "x", "--bridge", "bad/name")
    assert rc == ExitStatus.USAGE and "not a valid interface name" in err


def test_port_forward_errors_are_clear(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "port", "add", "web", "8080")
    assert rc == ExitStatus.USAGE and "HOSTPORT:GUESTPORT" in err
    rc, _, err = run(capsys, env, "port", "add", "web", "8080:80", "--host-ip", "300.1.1.1")
    assert rc == ExitStatus.USAGE and "not an IPv4 address" in err
    rc, _, err = run(capsys, env, "port", "add", "web", "8080:80")
    assert rc == ExitStatus.USAGE and "not a local daemon" in err
    rc, _, err = run(capsys, env, "port", "rm", "web", "http")
    assert rc == ExitStatus.USAGE and "HOSTPORT" in err


def test_port_list_is_empty_without_forwards(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "port", "list", "--json")
    assert rc == 0 and json.loads(out) == []


def _reserved(env: Env) -> list[tuple[str | None, str | None]]:
    return [(h.mac, h.ip) for h in env.hypervisor.network_xml("lab").dhcp_hosts]


def test_reservations_are_made_and_dropped_with_a_failed_create(env) -> None:  # type: ignore[no-untyped-def]
    from kvmlab.services import networks

    networks.reserve_address(env, "lab", "52:54:00:00:00:50", "10.70.0.50", "app")
    assert ("52:54:00:00:00:50", "10.70.0.50") in _reserved(env)
    wanted = [networks.parse_nic_option("lab,mac=52:54:00:00:00:51,ip=10.70.0.51")]
    with pytest.raises(RuntimeError), networks.reservations(env, "app2", wanted):
        assert ("52:54:00:00:00:51", "10.70.0.51") in _reserved(env)
        raise RuntimeError("machine creation failed")
    assert ("52:54:00:00:00:51", "10.70.0.51") not in _reserved(env)
    assert ("52:54:00:00:00:50", "10.70.0.50") in _reserved(env)


def test_failed_vm_create_drops_its_reservation(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "web", "--image", "tiny",
                     "--net", "lab,ip=10.70.0.51")  # fmt: skip
    assert rc != 0 and "exists already" in err
    assert all(ip != "10.70.0.51" for _, ip in _reserved(env))
    rc, _, err = run(
        capsys, env, "vm", "create", "x", "--image", "tiny", "--net", "lab,ip=10.80.0.1"
    )
    assert rc == ExitStatus.USAGE and "not a host address of lab" in err
    rc, _, err = run(capsys, env, "vm", "create", "x", "--image", "tiny", "--net", "lab,speed=1")
    assert rc == ExitStatus.USAGE and "mac=MAC or ip=ADDR" in err
    assert not env.hypervisor.has_machine("x")
