"""Snapshots, ``try`` and ``cp`` on a real tiny guest in the sandboxed libvirtd.

One machine (``snap-vm``) serves most checks, in file order: every boot costs seconds of TCG.
What is asserted is what a user sees: a file's content and a RAM-only value after revert,
the machine's state, the snapshot tree, ``qemu-img check`` on the disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import MachineState, SnapshotKind
from kvmlab.services import agent, guestfiles, images, machines, snapshots
from kvmlab.services.locks import lock_path
from kvmlab.services.storage import MACHINE_POOL
from kvmlab.specs import Accel, MachineSpec

pytestmark = pytest.mark.integration

VM = "snap-vm"


@pytest.fixture(scope="module")
def env(sandbox: Any, tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Iterator[Env]:
    state = tmp_path_factory.mktemp("snap-state")
    e = Env(uri=sandbox.uri, state_dir=state, cache_dir=test_cache, accel=Accel.TCG)
    yield e
    e.close()


@pytest.fixture(scope="module")
def vm(env: Env) -> Iterator[str]:
    images.build_tiny(env)
    machines.create(env, MachineSpec(name=VM, image="tiny"), start=True)
    _wait_agent(env, VM)
    yield VM
    machines.delete(env, VM, force=True)


def _wait_agent(env: Env, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not agent.ping(env, name):
        assert time.monotonic() < deadline, f"guest agent of {name} never answered"
        time.sleep(0.3)


def _sh(env: Env, script: str, name: str = VM) -> str:
    r = agent.exec_in_guest(env, name, ["/bin/sh", "-c", script], timeout=120)
    assert r.exit_code == 0, (script, r)
    return r.stdout.decode()


def _disk(env: Env, sandbox: Any) -> str:
    """The machine's overlay alone: its snapshots and their refcounts all live in it."""
    return str(sandbox.qcow2_alone(env.hypervisor.volume(MACHINE_POOL, f"{VM}.qcow2").path))


def _img_info(disk: str) -> dict[str, Any]:
    done = subprocess.run(["qemu-img", "info", "--output=json", disk],
                          capture_output=True, text=True, check=True)  # fmt: skip
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _assert_checks_clean(disk: str) -> None:
    check = subprocess.run(["qemu-img", "check", "--", disk], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout


def _names(env: Env) -> list[str]:
    return [s.name for s in snapshots.list_snapshots(env, VM)]


def _qemu_run(sandbox: Any, name: str) -> int:
    """libvirt's id of the machine's current QEMU process (a new one after every start)."""
    conn = libvirt.open(sandbox.uri)
    try:
        return int(conn.lookupByName(name).ID())
    finally:
        conn.close()


def test_disk_and_memory_snapshots_come_back(env: Env, vm: str, sandbox: Any) -> None:
    _sh(env, "echo A > /data/f && sync")
    s1 = snapshots.create_snapshot(env, vm, "s1", SnapshotKind.DISK, "disk only")
    assert (s1.kind, s1.state, s1.location) == (SnapshotKind.DISK, "running", "internal")
    info = env.hypervisor.agent_command(vm, {"execute": "guest-info"})
    can_freeze = any(
        c["name"] == "guest-fsfreeze-freeze" and c["enabled"] for c in info["supported_commands"]
    )
    assert s1.quiesced is can_freeze  # frozen if the agent can, else said so
    print(f"tiny's qemu-ga can freeze filesystems: {can_freeze}")
    assert env.hypervisor.state(vm) is MachineState.RUNNING
    _sh(env, "echo B > /data/f && sync && echo 42 > /run/x")  # /run is tmpfs: RAM only
    s2 = snapshots.create_snapshot(env, vm, "s2")  # running: memory by default
    assert s2.kind is SnapshotKind.MEMORY and s2.parent == "s1"
    _sh(env, "echo C > /data/f && sync && echo 0 > /run/x")

    # a disk snapshot comes back stopped, with the disk as it was
    assert snapshots.revert_to_snapshot(env, vm, "s1") is MachineState.STOPPED
    assert snapshots.revert_to_snapshot(env, vm, "s1", start=True) is MachineState.RUNNING
    _wait_agent(env, vm)
    assert _sh(env, "cat /data/f") == "A\n"
    assert _sh(env, "cat /run/x 2>/dev/null || echo none") == "none\n"

    # a memory snapshot comes back running, with RAM and disk as they were, loaded into the
    # running QEMU (same process; this QEMU was started after s2 was taken, same hardware)
    before = _qemu_run(sandbox, vm)
    t0 = time.monotonic()
    assert snapshots.revert_to_snapshot(env, vm, "s2") is MachineState.RUNNING
    revert_s = time.monotonic() - t0
    assert _qemu_run(sandbox, vm) == before
    assert _sh(env, "cat /data/f /run/x") == "B\n42\n"
    # the disk too, not only the guest's page cache that came back with its RAM
    assert _sh(env, "echo 3 > /proc/sys/vm/drop_caches; cat /data/f") == "B\n"

    listed = {s.name: s for s in snapshots.list_snapshots(env, vm)}
    assert listed["s2"].current and not listed["s1"].current
    assert listed["s1"].children == ("s2",)
    assert (listed["s2"].vm_state_size or 0) > 0
    rows = [label for label, _ in snapshots.tree_rows(list(listed.values()))]
    assert rows == ["s1", "└─ s2 *"]
    print(f"memory revert of a running 256 MiB guest: {revert_s:.2f} s")


def test_three_level_tree_survives_deleting_the_middle(env: Env, vm: str, sandbox: Any) -> None:
    for name, text in (("root", "R"), ("mid", "M"), ("leaf", "L")):
        _sh(env, f"echo {text} > /data/tree && sync")
        snapshots.create_snapshot(env, vm, name)
    _sh(env, "echo X > /data/tree && sync")
    snapshots.delete_snapshot(env, vm, "mid")
    listed = {s.name: s for s in snapshots.list_snapshots(env, vm)}
    assert "mid" not in listed
    assert listed["leaf"].parent == "root"
    snapshots.revert_to_snapshot(env, vm, "leaf")
    assert _sh(env, "cat /data/tree") == "L\n"
    snapshots.revert_to_snapshot(env, vm, "root")
    assert _sh(env, "cat /data/tree") == "R\n"
    snapshots.revert_to_snapshot(env, vm, "leaf")
    assert _sh(env, "cat /data/tree") == "L\n"

    for name in ("root", "leaf", "s1", "s2"):
        snapshots.delete_snapshot(env, vm, name)
    assert _names(env) == []
    assert _sh(env, "cat /data/tree") == "L\n"  # deleting snapshots leaves the live state
    # the overlay has lazy refcounts (see kvmlab.libvirt.build.qcow2_volume): its counts on
    # disk are complete once QEMU has closed it, so it is checked stopped (SIGTERM: QEMU
    # closes its images), then the machine is booted again for the tests after this one
    disk = _disk(env, sandbox)
    env.hypervisor.destroy(vm)
    try:
        info = _img_info(disk)
        specific = info["format-specific"]["data"]
        assert (specific["compat"], specific["lazy-refcounts"]) == ("1.1", True)
        assert info["dirty-flag"] is False
        _assert_checks_clean(disk)
    finally:
        env.hypervisor.start(vm)
    _wait_agent(env, vm)
    assert _sh(env, "cat /data/tree") == "L\n"


def test_try_reverts_a_breaking_command_and_keeps_a_good_one(env: Env, vm: str) -> None:
    _sh(env, "mkdir -p /data/bin-copy && cp /bin/busybox /data/bin-copy/ && sync")
    bad = snapshots.try_command(
        env, vm, ["/bin/sh", "-c", "rm -rf /data/bin-copy && echo gone && exit 3"]
    )
    assert (bad.exit_code, bad.stdout, bad.succeeded, bad.reverted) == (3, b"gone\n", False, True)
    assert bad.state is MachineState.RUNNING
    assert _sh(env, "ls /data/bin-copy") == "busybox\n"  # back as before, and the agent answers
    assert _names(env) == []

    good = snapshots.try_command(
        env, vm, ["/bin/sh", "-c", "echo v2 > /data/app"], check="grep -q v2 /data/app"
    )
    assert (good.succeeded, good.reverted, good.check_exit_code) == (True, False, 0)
    assert _sh(env, "cat /data/app") == "v2\n"
    assert _names(env) == []  # the checkpoint is gone

    # the check decides, not the command's exit code; --keep keeps the checkpoint
    from kvmlab.cli.main import main

    rc = main(["--json", "try", vm, "--keep", "--check", "false", "--", "touch", "/data/t"], env)
    assert rc == 1
    assert _sh(env, "ls /data/t 2>/dev/null || echo absent") == "absent\n"
    kept = _names(env)
    assert len(kept) == 1 and kept[0].startswith("try-")
    snapshots.delete_snapshot(env, vm, kept[0])


def test_two_operations_at_once_one_is_busy(env: Env, vm: str) -> None:
    other = Env(uri=env.uri, state_dir=env.state_dir, cache_dir=env.cache_dir)
    done: dict[str, Any] = {}

    def hold() -> None:
        done["result"] = snapshots.try_command(other, vm, ["/bin/sleep", "6"])

    t = threading.Thread(target=hold)
    t.start()
    try:
        lock = lock_path(env.state_dir, env.uri, vm)
        deadline = time.monotonic() + 30
        while "try by pid" not in (lock.read_text() if lock.exists() else ""):
            assert time.monotonic() < deadline, "the try never took the lock"
            time.sleep(0.05)
        with pytest.raises(errors.Busy) as err:
            snapshots.create_snapshot(env, vm, "clash")
        msg = str(err.value)
        assert msg.startswith(f"VM {vm} is busy: try by pid {os.getpid()} since ")
        since = msg.split(" since ")[1].split()[0]
        assert abs((datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds()) < 60
    finally:
        t.join(timeout=120)
        other.close()
    assert done["result"].succeeded
    assert _names(env) == []


def test_unknown_snapshot_is_named_with_a_hint(env: Env, vm: str) -> None:
    for op in (snapshots.revert_to_snapshot, snapshots.delete_snapshot):
        with pytest.raises(errors.SnapshotNotFound) as err:
            op(env, vm, "nosuch")
        assert err.value.message == f"no snapshot named 'nosuch' of VM '{vm}' on {env.uri}"
        assert err.value.hint is not None and f"kvmlab snap list {vm}" in err.value.hint


def test_revert_after_a_hot_plug_restarts_qemu_from_the_snapshot(
    env: Env, vm: str, sandbox: Any
) -> None:
    """Hardware added since the snapshot: its RAM image would not fit the running QEMU, so
    libvirt restarts QEMU from the snapshot's definition (the added device is gone)."""
    _sh(env, "echo 7 > /run/hw && echo H > /data/hw && sync")
    snapshots.create_snapshot(env, vm, "hw")
    _sh(env, "echo 8 > /run/hw && echo I > /data/hw && sync")
    conn = libvirt.open(sandbox.uri)
    try:
        dom = conn.lookupByName(vm)
        rng = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
        dom.attachDeviceFlags(rng, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert dom.XMLDesc(0).count("<rng ") == 2
        before = dom.ID()
        assert snapshots.revert_to_snapshot(env, vm, "hw") is MachineState.RUNNING
        dom = conn.lookupByName(vm)
        assert dom.ID() != before  # a new QEMU
        assert dom.XMLDesc(0).count("<rng ") == 1
        assert [s.name for s in snapshots.list_snapshots(env, vm) if s.current] == ["hw"]
    finally:
        conn.close()
    assert _sh(env, "cat /run/hw /data/hw") == "7\nH\n"
    snapshots.delete_snapshot(env, vm, "hw")


def test_revert_of_a_paused_machine_comes_back_running_in_the_same_qemu(
    env: Env, vm: str, sandbox: Any
) -> None:
    _sh(env, "echo 3 > /run/p")
    snapshots.create_snapshot(env, vm, "p")
    _sh(env, "echo 4 > /run/p")
    env.hypervisor.suspend(vm)
    before = _qemu_run(sandbox, vm)
    assert snapshots.revert_to_snapshot(env, vm, "p") is MachineState.RUNNING
    assert _qemu_run(sandbox, vm) == before
    assert _sh(env, "cat /run/p") == "3\n"
    snapshots.delete_snapshot(env, vm, "p")


def test_revert_falls_back_to_libvirt_when_qemu_refuses_the_load(
    env: Env, vm: str, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU failing ``loadvm`` leaves its machine paused (and may have reverted the disks):
    libvirt's revert then restarts QEMU from the snapshot, and the user gets the snapshot."""
    import libvirt_qemu

    _sh(env, "echo 5 > /run/q && echo Q > /data/q && sync")
    snapshots.create_snapshot(env, vm, "q")
    _sh(env, "echo 6 > /run/q && echo R > /data/q && sync")
    real = libvirt_qemu.qemuMonitorCommand
    sent: list[str] = []

    def wrong_name(dom: Any, cmd: str, flags: int) -> str:
        sent.append(cmd)
        return str(real(dom, cmd.replace("loadvm q", "loadvm no-such"), flags))

    monkeypatch.setattr(libvirt_qemu, "qemuMonitorCommand", wrong_name)
    before = _qemu_run(sandbox, vm)
    assert snapshots.revert_to_snapshot(env, vm, "q") is MachineState.RUNNING
    assert sent == ["loadvm q"]
    assert _qemu_run(sandbox, vm) != before
    monkeypatch.undo()
    assert _sh(env, "cat /run/q /data/q") == "5\nQ\n"
    snapshots.delete_snapshot(env, vm, "q")


def test_cp_in_and_out(env: Env, vm: str, tmp_path: Path) -> None:
    data = os.urandom(1_300_000)  # three chunks
    src = tmp_path / "blob"
    src.write_bytes(data)
    assert guestfiles.copy_to_guest(env, vm, src, "/data/") == len(data)
    assert _sh(env, "wc -c < /data/blob").strip() == str(len(data))
    out = tmp_path / "back"
    assert guestfiles.copy_from_guest(env, vm, "/data/blob", out) == len(data)
    assert out.read_bytes() == data
    from kvmlab.cli.main import main

    assert main(["cp", f"{vm}:/etc/hostname", str(tmp_path)], env) == 0
    assert (tmp_path / "hostname").read_text().strip() == vm


def test_stopped_machine_disk_snapshot(env: Env, vm: str) -> None:
    _sh(env, "echo D1 > /data/stopped && sync")
    machines.stop(env, vm, timeout=60)
    with pytest.raises(errors.InvalidState) as err:
        snapshots.create_snapshot(env, vm, "m", SnapshotKind.MEMORY)
    assert "no memory to snapshot" in str(err.value)
    s = snapshots.create_snapshot(env, vm, "off")
    assert (s.kind, s.state) == (SnapshotKind.DISK, "shutoff")
    machines.start(env, vm)
    with pytest.raises(errors.AgentUnavailable) as aerr:  # booting: the agent is not up yet
        agent.exec_in_guest(env, vm, ["/bin/true"])
    assert "qemu-guest-agent" in str(aerr.value)
    _wait_agent(env, vm)
    _sh(env, "echo D2 > /data/stopped && sync")
    assert snapshots.revert_to_snapshot(env, vm, "off", start=True) is MachineState.RUNNING
    _wait_agent(env, vm)
    assert _sh(env, "cat /data/stopped") == "D1\n"
    snapshots.delete_snapshot(env, vm, "off")
    assert _names(env) == []


def test_raw_disk_is_refused_and_exec_without_agent_says_how(env: Env, vm: str) -> None:
    from kvmlab.libvirt.build import domain_from_spec, raw_volume

    hv = env.hypervisor
    name = "snap-raw"
    hv.create_volume(MACHINE_POOL, raw_volume(f"{name}.img", 16 * 1024**2))
    xml = domain_from_spec(
        MachineSpec(name=name, image="tiny", memory=64 * 1024**2),
        accel=Accel.TCG, pool=MACHINE_POOL, disk_volume=f"{name}.img", seed_volume=None,
        macs=[], created=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    xml.disks[0].driver_type = "raw"
    xml.channels.clear()  # no guest agent channel
    hv.define_machine(xml)
    try:
        hv.start(name)  # SeaBIOS finds nothing to boot and keeps trying: running, no agent
        with pytest.raises(errors.SnapshotUnsupported) as err:
            snapshots.create_snapshot(env, name, "x")
        msg = str(err.value)
        assert "disk vda" in msg and f"{name}.img" in msg and "raw" in msg and "qcow2" in msg
        assert hv.list_snapshots(name) == []
        with pytest.raises(errors.AgentUnavailable) as aerr:
            agent.exec_in_guest(env, name, ["/bin/true"])
        assert "no QEMU guest agent channel" in str(aerr.value)
        assert "virt-xml" in str(aerr.value) and "qemu-guest-agent" in str(aerr.value)
    finally:
        hv.destroy(name)
        hv.undefine(name)
        hv.delete_volume(MACHINE_POOL, f"{name}.img")


def test_a_killed_qemu_loses_nothing_of_a_lazy_refcount_disk(
    env: Env, vm: str, sandbox: Any
) -> None:
    """kvmlab's disks have lazy refcounts (docs/snapshots.md): after QEMU dies without closing
    the disk (SIGKILL, as a host crash), the next start repairs the counts; what the guest had
    synced and the snapshots are all there, and the stopped disk checks clean."""
    import signal

    _sh(env, "echo K1 > /data/crash && sync")
    snapshots.create_snapshot(env, vm, "before-crash")
    _sh(
        env,
        "echo K2 > /data/crash && dd if=/dev/urandom of=/data/crash-blob bs=64k count=64 && sync",
    )
    blob = _sh(env, "md5sum /data/crash-blob")
    pid = int(sandbox.host_path("/run/libvirt/qemu/" + vm + ".pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while env.hypervisor.state(vm) is not MachineState.STOPPED:
        assert time.monotonic() < deadline, "libvirt never saw QEMU die"
        time.sleep(0.1)
    disk = _disk(env, sandbox)
    info = _img_info(disk)
    assert info["dirty-flag"] is True  # the counts on disk were not complete

    machines.start(env, vm)
    _wait_agent(env, vm)
    assert _sh(env, "cat /data/crash") == "K2\n"
    assert _sh(env, "md5sum /data/crash-blob") == blob
    assert snapshots.revert_to_snapshot(env, vm, "before-crash") is MachineState.RUNNING
    drop = "echo 3 > /proc/sys/vm/drop_caches"  # read from the disk, not the restored RAM
    got = _sh(env, f"{drop}; cat /data/crash; ls /data/crash-blob 2>/dev/null || echo no-blob")
    assert got == "K1\nno-blob\n"
    snapshots.delete_snapshot(env, vm, "before-crash")
    env.hypervisor.destroy(vm)  # SIGTERM: QEMU closes the disk
    _assert_checks_clean(disk)
