"""Clones and templates on a real libvirtd + QEMU, inside the test's own network namespace.

Five linked clones boot at once, each its own machine (hostname, MAC, IP, instance-id, disk);
the base volume does not change; a full clone outlives its source; refusals make nothing; a
``kvmlab clone --count 10`` killed half-way leaves only whole clones after the next command.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import MachineState
from kvmlab.services import agent, clones, images, machines, networks, templates
from kvmlab.services.storage import MACHINE_POOL
from kvmlab.specs import Accel, MachineSpec, NetworkSpec, NicSpec
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

SUBNET = "10.213.31.0/24"
NET = "t-clones"
KVMLAB = Path(sys.executable).parent / "kvmlab"


@pytest.fixture()
def env(sandbox: Sandbox, tmp_path: Path, test_cache: Path) -> Iterator[Env]:
    e = Env(uri=sandbox.uri, state_dir=tmp_path / "state", cache_dir=test_cache, accel=Accel.TCG)
    images.build_tiny(e)
    made_net = not e.hypervisor.has_network(NET)
    if made_net:
        networks.create_network(e, NetworkSpec(name=NET, mode="nat", subnet=SUBNET))
    before = e.hypervisor.machine_names()
    yield e
    for name in sorted(e.hypervisor.machine_names() - before):  # leave the sandbox as it was
        if e.hypervisor.has_machine(name):
            clones.delete_with_dependents(e, name, force=True)
    if made_net:
        networks.delete_network(e, NET, force=True)
    e.close()


def _wait_agent(env: Env, name: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not agent.ping(env, name):
        assert time.monotonic() < deadline, f"guest agent of {name} never answered"
        time.sleep(0.5)


def _sh(env: Env, name: str, script: str) -> str:
    res = agent.exec_in_guest(env, name, ["/bin/sh", "-c", script], timeout=120)
    assert res.exit_code == 0, res
    return res.stdout.decode().strip()


def _stop(env: Env, name: str) -> None:
    machines.stop(env, name, timeout=60)
    deadline = time.monotonic() + 60
    while env.hypervisor.state(name) is not MachineState.STOPPED:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _snapshot(env: Env) -> tuple[list[str], list[str]]:
    """Domain and volume names: what a refusal must leave unchanged."""
    hv = env.hypervisor
    return (
        sorted(m.name for m in hv.list_machines()),
        sorted(v.name for v in hv.list_volumes(MACHINE_POOL)),
    )


def _make_base(env: Env, name: str = "base", marker: str | None = None) -> None:
    """A stopped machine; with ``marker``, booted once to write /data/marker first."""
    machines.create(env, MachineSpec(name=name, image="tiny", nics=(NicSpec(NET),)))
    if marker is None:
        return
    machines.start(env, name)
    _wait_agent(env, name)
    _sh(env, name, f"echo {marker} > /data/marker && sync")
    _stop(env, name)


def test_five_linked_clones_boot_each_with_its_own_identity(env: Env, sandbox: Sandbox) -> None:
    _make_base(env, marker="from-base")
    hv = env.hypervisor
    base_vol = hv.volume(MACHINE_POOL, "base.qcow2")
    base_file = sandbox.host_path(base_vol.path)
    base_sum = _sha256(base_file)

    made = clones.clone(env, "base", "web", count=5, linked=True, start=True)
    names = [f"web-{i}" for i in range(1, 6)]
    assert [m.name for m in made] == names
    for n in names:  # overlays on the base volume, each with its own new seed
        disk = hv.volume(MACHINE_POOL, f"{n}.qcow2")
        assert disk.backing == base_vol.path
        assert hv.has_volume(MACHINE_POOL, f"{n}-seed.iso")
    assert len({m.uuid for m in made} | {hv.machine("base").uuid}) == 6

    for n in names:
        _wait_agent(env, n)
    hostnames = {n: _sh(env, n, "hostname") for n in names}
    assert hostnames == {n: n for n in names}
    ids = {_sh(env, n, "cat /run/instance-id") for n in names}
    assert len(ids) == 5
    macs = {m.nics[0].mac for m in made} | {hv.machine("base").nics[0].mac}
    assert len(macs) == 6
    ips = set()
    for n in names:
        ip = machines.wait_for_address(env, n, timeout=180)[0].ip
        assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(SUBNET)
        ips.add(ip)
    assert len(ips) == 5

    # every clone sees the base's data; what one writes, its siblings do not see
    assert {_sh(env, n, "cat /data/marker") for n in names} == {"from-base"}
    _sh(env, "web-1", "echo mine > /data/only-web-1 && sync")
    assert _sh(env, "web-1", "cat /data/only-web-1") == "mine"
    for n in names[1:]:
        assert _sh(env, n, "test -e /data/only-web-1 && echo yes || echo no") == "no"

    # ... nor the base: its volume did not change by a byte, and it may not run
    assert _sha256(base_file) == base_sum
    with pytest.raises(errors.HasDependents, match="web-1, web-2, web-3, web-4, web-5"):
        machines.start(env, "base")

    # deleting the base is refused, listing its clones, and nothing is touched
    before = _snapshot(env)
    with pytest.raises(errors.HasDependents) as refused:
        machines.delete(env, "base", force=True)
    assert refused.value.dependents == names
    assert "--cascade" in str(refused.value)
    assert _snapshot(env) == before

    # deleting a clone never touches its base
    removed = machines.delete(env, "web-5", force=True)
    assert sorted(removed) == [f"{MACHINE_POOL}/web-5-seed.iso", f"{MACHINE_POOL}/web-5.qcow2"]
    assert _sha256(base_file) == base_sum

    # --cascade: the clones, then the base
    removed = clones.delete_with_dependents(env, "base", force=True)
    assert f"{MACHINE_POOL}/base.qcow2" in removed
    assert hv.list_machines() == [] and hv.list_volumes(MACHINE_POOL) == []


def test_full_clone_boots_after_its_source_is_deleted(env: Env) -> None:
    _make_base(env, "src", marker="copied")
    (full,) = clones.clone(env, "src", "fullc", linked=False)
    assert full.image == "tiny" and full.hostname == "fullc"
    hv = env.hypervisor
    assert hv.volume(MACHINE_POOL, "fullc.qcow2").backing is None  # a copy, not an overlay
    machines.delete(env, "src")  # no dependents: allowed
    assert not hv.has_volume(MACHINE_POOL, "src.qcow2")
    machines.start(env, "fullc")
    _wait_agent(env, "fullc")
    assert _sh(env, "fullc", "hostname; cat /data/marker") == "fullc\ncopied"
    machines.delete(env, "fullc", force=True)


def test_refusals_make_nothing(env: Env) -> None:
    _make_base(env)
    clones.clone(env, "base", "taken", linked=True)
    before = _snapshot(env)

    with pytest.raises(errors.AlreadyExists, match="taken"):
        clones.clone(env, "base", "taken", linked=True)
    clones.clone(env, "base", "many", count=2, linked=True)
    before = _snapshot(env)
    with pytest.raises(errors.AlreadyExists, match="many-2"):  # one of NEW-1..N exists
        clones.clone(env, "base", "many", count=3, linked=True)
    with pytest.raises(errors.InvalidInput, match="--count must be at least 1"):
        clones.clone(env, "base", "zero", count=0)
    with pytest.raises(errors.InvalidInput, match="free"):  # more than the pool can hold
        clones.clone(env, "base", "huge", count=10_000_000, linked=True)
    with pytest.raises(errors.InvalidInput, match="free"):  # ~17 TB of full copies
        clones.clone(env, "base", "hugefull", count=1_000_000, linked=False)
    with pytest.raises(errors.InvalidInput, match="name"):
        clones.clone(env, "base", "bad/name")
    with pytest.raises(errors.InvalidInput, match="more than 64"):
        clones.clone(env, "base", "n" * 62, count=10)  # n...-10 is too long
    with pytest.raises(errors.MachineNotFound):
        clones.clone(env, "ghost", "x")
    machines.start(env, "many-1")
    with pytest.raises(errors.InvalidState, match="stopped"):
        clones.clone(env, "many-1", "x")
    assert _snapshot(env) == before


def test_template_is_frozen_and_cloned_linked(env: Env) -> None:
    _make_base(env, "tpl")
    t = templates.make_template(env, "tpl")
    assert (t.name, t.dependents) == ("tpl", ())
    with pytest.raises(errors.InvalidState, match="template"):
        machines.start(env, "tpl")
    made = clones.clone(env, "tpl", "fromtpl", count=2)  # from a template: linked by default
    tpl_path = env.hypervisor.volume(MACHINE_POOL, "tpl.qcow2").path
    for m in made:
        assert env.hypervisor.volume(MACHINE_POOL, f"{m.name}.qcow2").backing == tpl_path
    (listed,) = templates.list_templates(env)
    assert listed.dependents == ("fromtpl-1", "fromtpl-2")
    machines.start(env, "fromtpl-1")  # a template's clone runs
    with pytest.raises(errors.HasDependents):
        machines.delete(env, "tpl")


def test_killed_clone_leaves_only_whole_clones(env: Env, sandbox: Sandbox) -> None:
    _make_base(env)
    hv = env.hypervisor
    argv = [str(KVMLAB), "-c", sandbox.uri, "--accel", "tcg"]
    proc = subprocess.Popen(
        [*argv, "clone", "base", "crash", "--count", "10", "--full", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while sum(n.startswith("crash-") for n in hv.machine_names()) < 3:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "clones did not appear"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    made_before = sum(n.startswith("crash-") for n in hv.machine_names())
    assert 3 <= made_before < 10, f"{made_before} clones: the kill came too late"

    # the next kvmlab command (`ls`, a separate process, like a user's) cleans up
    ls = subprocess.run([*argv, "ls", "--json"], capture_output=True, text=True, check=False)
    assert ls.returncode == 0, ls.stderr

    defined = sorted(n for n in hv.machine_names() if n.startswith("crash-"))
    assert len(defined) == made_before
    owned = {ref for m in hv.list_machines() for ref in m.owned_volumes}
    for n in defined:  # every defined clone is whole
        assert {(MACHINE_POOL, f"{n}.qcow2"), (MACHINE_POOL, f"{n}-seed.iso")} <= owned
        assert hv.has_volume(MACHINE_POOL, f"{n}.qcow2")
        assert hv.has_volume(MACHINE_POOL, f"{n}-seed.iso")
    orphans = [v.name for v in hv.list_volumes(MACHINE_POOL) if (v.pool, v.name) not in owned]
    assert orphans == []
    for n in defined:  # each one left boots, as itself (all at once: TCG boots are slow)
        machines.start(env, n)
    for n in defined:
        _wait_agent(env, n)
        assert _sh(env, n, "hostname") == n
