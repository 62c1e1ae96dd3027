"""A real machine's life on a real libvirtd + QEMU, inside the test's own network namespace.

Build the tiny image, create a VM on a NAT network, it gets a DHCP lease in the subnet, a
command runs in it through the guest agent, a file written to its disk survives a reboot,
stop, delete; afterwards nothing of the test is left on the daemon.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import MachineState
from kvmlab.services import agent, images, machines, networks, quickstart
from kvmlab.services.storage import IMAGE_POOL, MACHINE_POOL
from kvmlab.specs import Accel, MachineSpec, NetworkSpec, NicSpec

pytestmark = pytest.mark.integration

SUBNET = "10.213.7.0/24"


@pytest.fixture()
def env(sandbox, tmp_path: Path, test_cache: Path):  # type: ignore[no-untyped-def]
    e = Env(uri=sandbox.uri, state_dir=tmp_path / "state", cache_dir=test_cache, accel=Accel.TCG)
    yield e
    e.close()


def _wait_agent(env: Env, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not agent.ping(env, name):
        assert time.monotonic() < deadline, f"guest agent of {name} never answered"
        time.sleep(0.3)


def _wait_stopped(env: Env, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while env.hypervisor.state(name) is not MachineState.STOPPED:
        assert time.monotonic() < deadline, f"{name} did not stop"
        time.sleep(0.2)


def test_machine_lifecycle_on_nat_network(env: Env) -> None:
    images.build_tiny(env)
    assert [v.name for v in images.list_images(env)] == ["tiny"]
    networks.create_network(env, NetworkSpec(name="t-nat", mode="nat", subnet=SUBNET))
    spec = MachineSpec(name="t-vm", image="tiny", nics=(NicSpec("t-nat"),))
    m = machines.create(env, spec, start=True)
    assert m.state is MachineState.RUNNING
    assert m.accel == "tcg"
    assert m.image == "tiny"

    # a DHCP lease inside the subnet, seen by kvmlab and by the network's router
    addrs = machines.wait_for_address(env, "t-vm", timeout=90)
    ip = ipaddress.IPv4Address(addrs[0].ip)
    assert ip in ipaddress.IPv4Network(SUBNET)
    assert any(le.ip == str(ip) for le in networks.leases(env, "t-nat"))
    listed = {x.name: x for x in machines.list_machines(env)}
    assert str(ip) in [a.ip for a in listed["t-vm"].addresses]

    # a command through the guest agent; the hostname came from the NoCloud seed
    _wait_agent(env, "t-vm")
    res = agent.exec_in_guest(env, "t-vm", ["/bin/sh", "-c", "hostname; echo err >&2; exit 3"])
    assert (res.exit_code, res.stdout.strip(), res.stderr.strip()) == (3, b"t-vm", b"err")

    # a file written to the disk survives a reboot
    w = agent.exec_in_guest(env, "t-vm", ["/bin/sh", "-c", "echo kept > /data/proof && sync"])
    assert w.exit_code == 0
    machines.reboot(env, "t-vm")
    time.sleep(2)
    _wait_agent(env, "t-vm", timeout=90)
    r = agent.exec_in_guest(env, "t-vm", ["/bin/cat", "/data/proof"])
    assert r.stdout == b"kept\n"

    # graceful stop (ACPI), then delete: the image stays, the machine's volumes go
    forced = machines.stop(env, "t-vm", timeout=60)
    assert forced is False
    assert env.hypervisor.state("t-vm") is MachineState.STOPPED
    removed = machines.delete(env, "t-vm")
    assert sorted(removed) == [f"{MACHINE_POOL}/t-vm-seed.iso", f"{MACHINE_POOL}/t-vm.qcow2"]
    assert env.hypervisor.list_machines() == []
    assert env.hypervisor.list_volumes(MACHINE_POOL) == []
    assert [v.name for v in env.hypervisor.list_volumes(IMAGE_POOL)] == ["tiny"]
    networks.delete_network(env, "t-nat")
    assert all(n.name != "t-nat" for n in env.hypervisor.list_networks())


def test_bad_input_leaves_nothing_behind(env: Env) -> None:
    images.build_tiny(env)
    before = (env.hypervisor.list_machines(), env.hypervisor.list_volumes(MACHINE_POOL))
    with pytest.raises(errors.ImageNotFound) as err:
        machines.create(env, MachineSpec(name="x", image="nosuch"))
    assert str(err.value).startswith(f"no image named 'nosuch' on {env.uri}")
    with pytest.raises(errors.NetworkNotFound) as nerr:
        machines.create(env, MachineSpec(name="x", image="tiny", nics=(NicSpec("nonet"),)))
    assert "kvmlab net list" in str(nerr.value)
    with pytest.raises(errors.MachineNotFound) as merr:
        machines.start(env, "ghost")
    assert str(merr.value).startswith(f"no VM named 'ghost' on {env.uri}")
    after = (env.hypervisor.list_machines(), env.hypervisor.list_volumes(MACHINE_POOL))
    assert before == after


def test_quickstart_main_job(env: Env) -> None:
    """The main job (command 1 of the README) against the sandboxed daemon."""
    ms = quickstart.run(env, network="qs", subnet="10.213.9.0/24", count=2, prefix="qs")
    assert [m.name for m in ms] == ["qs-1", "qs-2"]
    for m in ms:
        assert m.state is MachineState.RUNNING
        assert m.addresses, f"{m.name} has no IP"
        assert ipaddress.IPv4Address(m.addresses[0].ip) in ipaddress.IPv4Network("10.213.9.0/24")
    again = quickstart.run(env, network="qs", subnet="10.213.9.0/24", count=2, prefix="qs")
    assert [m.uuid for m in again] == [m.uuid for m in ms]  # idempotent: nothing re-made
    for m in ms:
        machines.delete(env, m.name, force=True)
    networks.delete_network(env, "qs")
