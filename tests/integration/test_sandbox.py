"""The integration sandbox itself: isolation from the host, and nothing left behind."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.sandbox as sandbox_module
from tests.sandbox import Sandbox, SandboxError, cleanup_stale_sandboxes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

NAT_NETWORK = """
<network>
  <name>kvmlab-t0</name>
  <bridge name='kvbr-t0'/>
  <forward mode='nat'/>
  <ip address='10.213.0.1' netmask='255.255.255.0'>
    <dhcp><range start='10.213.0.100' end='10.213.0.200'/></dhcp>
  </ip>
</network>
"""

TINY_DOMAIN = """
<domain type='qemu'>
  <name>kvmlab-t-tiny</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='network'/></os>
  <devices><serial type='pty'/><console type='pty'/></devices>
</domain>
"""

HOST_LIBVIRT_DIRS = (
    "/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/run/libvirt",
)


# ---- helpers ----


def netns_of(pid: int) -> str:
    return subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def process_exists(pid: int) -> bool:
    """True while /proc/PID exists at all, zombies included."""
    return Path(f"/proc/{pid}").exists()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def pids_in_netns(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def root_firewall() -> dict[str, str]:
    """The root namespace's rulesets, without timestamps and packet counters (live traffic)."""
    rulesets = {}
    for argv in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        lines = [line for line in out.splitlines() if not line.startswith("#")]
        text = re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(lines))
        rulesets[argv[0]] = re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", text)
    return rulesets


def tree_snapshot(paths: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Every file and dir below ``paths`` with its size and mtime."""
    snapshot = {}
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    snapshot[path] = (st.st_size, st.st_mtime_ns)
        snapshot[top + " exists"] = (int(os.path.exists(top)), 0)
    return snapshot


def mounts_mentioning(path: Path) -> list[str]:
    out = subprocess.run(
        ["findmnt", "--raw", "--noheadings", "--output", "TARGET,SOURCE"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [line for line in out.splitlines() if str(path) in line]


def assert_gone(box: Sandbox, pids: list[int]) -> None:
    assert box.netns not in netns_names()
    assert not Path("/run/netns", box.netns).exists()
    assert not box.root.exists()
    assert mounts_mentioning(box.root) == []
    still = {pid: comm(pid) for pid in pids if process_exists(pid)}
    assert still == {}, f"processes left behind: {still}"


@contextlib.contextmanager
def network(conn: Any, xml: str = NAT_NETWORK) -> Iterator[Any]:
    net = conn.networkDefineXML(xml)
    net.create()
    try:
        yield net
    finally:
        net.destroy()
        net.undefine()


@contextlib.contextmanager
def running_domain(conn: Any, xml: str = TINY_DOMAIN) -> Iterator[Any]:
    dom = conn.defineXML(xml)
    dom.create()
    try:
        yield dom
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


@contextlib.contextmanager
def reaping_orphans() -> Iterator[list[int]]:
    """Make this process a child subreaper for the block; reap the PIDs listed in the yield.

    PID 1 on these machines does not reap, so the processes a killed test child leaves would
    stay zombies forever. Only the listed PIDs are reaped: other children keep their status.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    orphans: list[int] = []
    try:
        yield orphans
    finally:
        deadline = time.monotonic() + 20
        pending = set(orphans)
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # not ours, or reaped already
                    done = pid
                if done:
                    pending.discard(pid)
            time.sleep(0.05)
        libc.prctl(36, 0, 0, 0, 0)


def spawn_owner(prefix: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A child Python process that starts a Sandbox, reports it as JSON and sleeps."""
    code = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.sandbox import Sandbox
        box = Sandbox({prefix!r})
        box.start()
        print(json.dumps({{"netns": box.netns, "root": str(box.root),
                          "libvirtd": box.libvirtd_pid, "keeper": box._keeper.pid}}),
              flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    info = json.loads(child.stdout.readline())
    return child, info


@contextlib.contextmanager
def fake_host_daemon() -> Iterator[list[socket.socket]]:
    """Stand-ins for a host-level libvirtd and virtlogd in the host's /run.

    Locked pid files (libvirtd refuses to start while /run/libvirtd.pid is locked) and
    listening sockets where ``qemu:///system`` and libvirtd's virtlogd client would connect.
    Only called when none of these paths exists; removes exactly what it created.
    """
    created: list[Path] = []
    listeners: list[socket.socket] = []
    fds: list[int] = []
    try:
        run_libvirt = Path("/run/libvirt")
        run_libvirt.mkdir()
        created.append(run_libvirt)
        for name in ("libvirtd.pid", "virtlogd.pid"):
            path = Path("/run", name)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            created.append(path)
            fds.append(fd)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
        for name in ("libvirt-sock", "virtlogd-sock"):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(run_libvirt / name))
            created.append(run_libvirt / name)
            listener.listen()
            listener.setblocking(False)
            listeners.append(listener)
        yield listeners
    finally:
        for listener in listeners:
            listener.close()
        for fd in fds:
            os.close(fd)
        for path in reversed(created):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


def wait_until(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---- 1. the daemon ----


def test_daemon_answers_with_the_qemu_driver(sandbox: Sandbox, sandbox_conn: Any) -> None:
    assert sandbox_conn.getType() == "QEMU"
    caps = ET.fromstring(sandbox_conn.getCapabilities())
    qemu_x86 = [
        guest
        for guest in caps.findall("guest")
        if guest.findtext("os_type") == "hvm"
        and guest.find("arch") is not None
        and guest.find("arch").get("name") == "x86_64"  # type: ignore[union-attr]
        and any(d.get("type") == "qemu" for d in guest.findall("arch/domain"))
    ]
    assert qemu_x86, "capabilities list no qemu (TCG) domain type for x86_64"
    # The socket is the sandbox's own, and the daemon behind it runs in the namespace.
    assert str(sandbox.root) in sandbox.uri
    assert sandbox.libvirtd_pid is not None
    assert netns_of(sandbox.libvirtd_pid) == sandbox.netns


def test_no_default_network_inside(sandbox_conn: Any) -> None:
    assert [net.name() for net in sandbox_conn.listAllNetworks()] == []


def test_host_path_maps_private_dirs(sandbox: Sandbox) -> None:
    assert sandbox.host_path("/var/lib/libvirt/images/a.qcow2") == (
        sandbox.root / "lib" / "images" / "a.qcow2"
    )
    assert sandbox.host_path("/var/run/libvirtd.pid") == sandbox.root / "run" / "libvirtd.pid"
    assert sandbox.host_path("/run") == sandbox.root / "run"
    assert sandbox.host_path("/tmp/disk.img") == Path("/tmp/disk.img")
    assert sandbox.host_path("/var/lib/libvirtx") == Path("/var/lib/libvirtx")
    assert sandbox.host_path("/run/libvirtd.pid").exists()


# ---- 2. a NAT network stays in the namespace ----


def test_nat_network_lives_only_in_the_namespace(sandbox: Sandbox, sandbox_conn: Any) -> None:
    firewall_before = root_firewall()
    forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()

    with network(sandbox_conn) as net:
        assert net.isActive()
        inside = sandbox.run_in_netns(
            ["ip", "-4", "-o", "addr", "show", "dev", "kvbr-t0"], capture_output=True, text=True
        )
        assert inside.returncode == 0, inside.stderr
        assert "10.213.0.1/24" in inside.stdout
        host = subprocess.run(["ip", "link", "show", "kvbr-t0"], capture_output=True, text=True)
        assert host.returncode != 0, "the bridge leaked into the root namespace"

        dnsmasq = read_pid(sandbox.host_path("/run/libvirt/network/kvmlab-t0.pid"))
        assert comm(dnsmasq) == "dnsmasq"
        assert netns_of(dnsmasq) == sandbox.netns

        nat_rules = sandbox.run_in_netns(
            ["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True
        ).stdout
        assert "10.213.0.0/24" in nat_rules and "MASQUERADE" in nat_rules
        assert root_firewall() == firewall_before
        forward_inside = sandbox.run_in_netns(
            ["cat", "/proc/sys/net/ipv4/ip_forward"], capture_output=True, text=True
        ).stdout
        assert forward_inside.strip() == "1"

    assert root_firewall() == firewall_before
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward_before
    assert not process_exists(dnsmasq)


# ---- 3. a TCG guest runs in the namespace ----


def test_tcg_domain_runs_inside_the_namespace(sandbox: Sandbox, sandbox_conn: Any) -> None:
    import libvirt

    with running_domain(sandbox_conn) as dom:
        state, _ = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        qemu = read_pid(sandbox.host_path("/run/libvirt/qemu/kvmlab-t-tiny.pid"))
        assert comm(qemu).startswith("qemu-system")
        cmdline = Path(f"/proc/{qemu}/cmdline").read_bytes().split(b"\0")
        assert b"tcg" in b" ".join(cmdline)
        assert netns_of(qemu) == sandbox.netns
        assert sandbox.host_path("/var/log/libvirt/qemu/kvmlab-t-tiny.log").exists()
    assert wait_until(lambda: not process_exists(qemu), 10)


# ---- 4. teardown leaves nothing behind ----


def test_teardown_leaves_nothing_behind(sandbox: Sandbox) -> None:
    import libvirt

    host_before = tree_snapshot(HOST_LIBVIRT_DIRS)
    firewall_before = root_firewall()
    with Sandbox("kvmlab-tdown") as box:
        conn = libvirt.open(box.uri)
        conn.networkDefineXML(NAT_NETWORK).create()
        conn.defineXML(TINY_DOMAIN).create()
        conn.close()
        pids = pids_in_netns(box.netns)
        names = {comm(pid) for pid in pids}
        assert {"libvirtd", "virtlogd", "dnsmasq"} <= names
        assert any(name.startswith("qemu-system") for name in names)
        assert mounts_mentioning(box.root) == []  # the bind mounts are private to the keeper
    assert_gone(box, pids)
    assert tree_snapshot(HOST_LIBVIRT_DIRS) == host_before
    assert root_firewall() == firewall_before


def test_failure_keeps_logs_and_still_cleans_up(tmp_path: Path, sandbox: Sandbox) -> None:
    with pytest.raises(RuntimeError, match="boom"), Sandbox("kvmlab-tfail", tmp_path) as box:
        pids = pids_in_netns(box.netns)
        raise RuntimeError("boom")
    assert_gone(box, pids)
    kept = tmp_path / box.netns
    assert "libvirt version" in (kept / "log" / "libvirtd.log").read_text()
    assert (kept / "sandbox.json").exists()


def test_close_tolerates_partial_state(sandbox: Sandbox) -> None:
    never_started = Sandbox("kvmlab-tpart")
    never_started.close()
    never_started.close()
    assert not never_started.root.exists()

    with Sandbox("kvmlab-tpart") as box:
        pids = pids_in_netns(box.netns)
        assert box.libvirtd_pid is not None
        os.kill(box.libvirtd_pid, signal.SIGKILL)  # the daemon dies under the test
    assert_gone(box, pids)
    box.close()  # again: a no-op


def test_start_failure_reports_the_daemon_log(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sandbox_module._QEMU_CONF, "security_driver", '"no-such-driver"')
    box = Sandbox("kvmlab-tbad", start_timeout=10)
    with pytest.raises(SandboxError) as failure:
        box.start()
    assert "no-such-driver" in str(failure.value)
    assert_gone(box, [])


def test_a_host_daemon_is_neither_used_nor_disturbed(sandbox: Sandbox) -> None:
    import libvirt

    host_paths = ("/run/libvirt", "/run/libvirtd.pid", "/run/virtlogd.pid")
    real_daemon = any(Path(path).exists() for path in host_paths)
    with contextlib.ExitStack() as stack:
        listeners = [] if real_daemon else stack.enter_context(fake_host_daemon())
        before = tree_snapshot(host_paths)
        with Sandbox("kvmlab-thost") as box:
            conn = libvirt.open(box.uri)
            try:
                with running_domain(conn):  # talks to virtlogd
                    pass
            finally:
                conn.close()
        for listener in listeners:
            with pytest.raises(BlockingIOError):  # nobody connected to the host's sockets
                listener.accept()
        assert tree_snapshot(host_paths) == before


# ---- 5. two at once ----


def test_two_sandboxes_side_by_side(sandbox: Sandbox) -> None:
    import libvirt

    with Sandbox("kvmlab-ta") as one, Sandbox("kvmlab-tb") as two:
        assert one.uri != two.uri and one.netns != two.netns
        conns = [libvirt.open(box.uri) for box in (one, two)]
        try:
            # The same bridge name and subnet in both: each lives in its own namespace.
            with network(conns[0]), network(conns[1]):
                for box in (one, two):
                    shown = box.run_in_netns(["ip", "link", "show", "kvbr-t0"],
                                             capture_output=True)
                    assert shown.returncode == 0
            assert one.libvirtd_pid != two.libvirtd_pid
        finally:
            for conn in conns:
                conn.close()


# ---- interrupted runs ----


def test_sigterm_to_the_owner_cleans_up(sandbox: Sandbox) -> None:
    with reaping_orphans() as orphans:
        child, info = spawn_owner("kvmlab-tterm")
        orphans.append(info["keeper"])
        pids = pids_in_netns(info["netns"])
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM
    box = Sandbox("kvmlab-tterm")
    box.netns, box.root = info["netns"], Path(info["root"])
    assert_gone(box, pids)


def test_keeper_cleans_up_when_the_owner_is_killed(sandbox: Sandbox) -> None:
    with reaping_orphans() as orphans:
        child, info = spawn_owner("kvmlab-tkill")
        orphans.append(info["keeper"])
        pids = pids_in_netns(info["netns"])
        child.kill()
        child.wait()
        assert wait_until(lambda: not Path(info["root"]).exists())
    box = Sandbox("kvmlab-tkill")
    box.netns, box.root = info["netns"], Path(info["root"])
    assert_gone(box, pids)


def test_cleanup_stale_sandboxes_after_a_hard_crash(sandbox: Sandbox) -> None:
    with reaping_orphans() as orphans:
        child, info = spawn_owner("kvmlab-tstale")
        pids = pids_in_netns(info["netns"])
        orphans.extend(pids)
        os.kill(info["keeper"], signal.SIGKILL)  # no keeper to clean up either
        child.kill()
        child.wait()
        assert Path(info["root"]).exists() and info["netns"] in netns_names()
        assert cleanup_stale_sandboxes("kvmlab-tstale") == [info["netns"]]
    box = Sandbox("kvmlab-tstale")
    box.netns, box.root = info["netns"], Path(info["root"])
    assert_gone(box, pids)


def test_cleanup_stale_sandboxes_spares_live_ones(sandbox: Sandbox) -> None:
    assert sandbox.netns not in cleanup_stale_sandboxes("kvmlab-t")
    assert sandbox.netns in netns_names()
    assert sandbox.libvirtd_pid is not None
