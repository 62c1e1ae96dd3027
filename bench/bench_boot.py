"""Create + start a tiny VM until its DHCP lease: kvmlab against a bare ``qemu-system-x86_64``.

The issue's target: ``kvmlab vm create --start`` of the tiny image gets the guest to a DHCP
lease within 1.1x of booting the same disk with a bare QEMU command to the same point.

Everything happens inside one ``tests.sandbox.Sandbox`` (a private libvirtd in its own network
namespace): the tiny image is built and uploaded with ``kvmlab.services.images.build_tiny``,
a NAT network is made with ``kvmlab.services.networks.create_network``, and both contenders
put their guest on that network's bridge, so the same dnsmasq hands out both leases.

"The point" is the moment the guest's MAC shows up with an IP in the network's lease status
file (``/var/lib/libvirt/dnsmasq/<bridge>.status`` as the daemon sees it, written by libvirt's
lease helper when dnsmasq acks); the file is polled every 5 ms.

a) kvmlab: wall time from launching ``kvmlab -c URI --accel tcg vm create bN --image tiny
   --net NET --start`` (the console script) until the lease. Split, from what is visible from
   outside the process: CLI start (launch until the disk volume's file appears: interpreter,
   imports, connection, checks), create (until libvirt's DEFINED event: disk and seed volumes,
   define), start (until the STARTED event), boot to lease; and when the CLI exited.
b) bare QEMU: a tap on the same bridge (made untimed, inside the namespace), a qcow2 overlay
   on the same image volume file, then wall time from launching ``qemu-system-x86_64 -accel tcg
   -m 256 -nodefaults -display none -serial file:... -drive file=OVERLAY,if=virtio -netdev
   tap,... -device virtio-net-pci,...`` (through ``ip netns exec``) until the lease.

The two alternate (a b a b ...), 8 timed runs each (``$BENCH_RUNS``) after a warm-up; every
guest is deleted before the next run (``kvmlab vm delete --force``; kill QEMU, remove the tap).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    KVMLAB,
    SANDBOX_PREFIX,
    BenchError,
    Ratio,
    Stats,
    python_env,
    report,
    runs_from_env,
)
from tests.sandbox import Sandbox, cleanup_stale_sandboxes

NETWORK = "benchnet"
SUBNET = "10.213.7.0/24"
POLL = 0.005
BOOT_TIMEOUT = 180.0
CACHE = Path(os.environ.get("KVMLAB_TEST_CACHE", "/var/cache/kvmlab-test"))


# ------------------------------------------------------------------------------------------
# What the bench watches: the lease status file, libvirt's lifecycle events
# ------------------------------------------------------------------------------------------


class LeaseWatch:
    """When each MAC first appeared with an IP in a dnsmasq status file (perf_counter time)."""

    def __init__(self, status_file: Path) -> None:
        self.path = status_file
        self.first_seen: dict[str, float] = {}
        self._signature: tuple[int, int, int] | None = None

    def poll(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return
        now = time.perf_counter()
        try:
            leases = json.loads(self.path.read_text() or "[]")
        except (OSError, ValueError):
            return  # caught it mid-write: read again next tick
        self._signature = signature
        for lease in leases:
            mac = str(lease.get("mac-address", "")).lower()
            if mac and lease.get("ip-address"):
                self.first_seen.setdefault(mac, now)


class DomainEvents:
    """libvirt lifecycle events (DEFINED, STARTED) of every domain, with their arrival time."""

    def __init__(self, uri: str) -> None:
        import libvirt

        self._libvirt = libvirt
        libvirt.virEventRegisterDefaultImpl()  # before the connection is opened
        threading.Thread(target=self._loop, name="libvirt-events", daemon=True).start()
        self.conn = libvirt.open(uri)
        self.seen: dict[str, dict[str, float]] = {}
        self._names = {
            libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
            libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
        }
        self._callback = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )

    def _loop(self) -> None:
        while True:
            self._libvirt.virEventRunDefaultImpl()

    def _on_event(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        now = time.perf_counter()
        name = self._names.get(event)
        if name:
            self.seen.setdefault(dom.name(), {}).setdefault(name, now)

    def mac_of(self, domain: str) -> str:
        xml = self.conn.lookupByName(domain).XMLDesc(0)
        match = re.search(r"<mac address=['\"]([0-9a-fA-F:]{17})['\"]", xml)
        if not match:
            raise BenchError(f"{domain} has no MAC address in its XML")
        return match.group(1).lower()

    def close(self) -> None:
        self.conn.domainEventDeregisterAny(self._callback)
        self.conn.close()


# ------------------------------------------------------------------------------------------
# The two contenders
# ------------------------------------------------------------------------------------------


@dataclass
class Setup:
    sb: Sandbox
    tmp: Path
    image_path: Path  # the tiny image volume's file, as this host sees it
    machine_dir: Path  # kvmlab's machine pool directory, as this host sees it
    bridge: str
    leases: LeaseWatch
    events: DomainEvents
    splits: dict[str, list[float]] = field(default_factory=dict)
    runs: int = 0


def _wait_for_lease(setup: Setup, mac: str, deadline: float, what: str, log: Path | None) -> float:
    while True:
        setup.leases.poll()
        if mac in setup.leases.first_seen:
            return setup.leases.first_seen[mac]
        if time.perf_counter() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise BenchError(f"{what}: no DHCP lease for {mac} in time\n{tail}")
        time.sleep(POLL)


def kvmlab_boot(setup: Setup) -> float:
    """``kvmlab vm create --start`` until the lease; records the split; deletes the VM."""
    setup.runs += 1
    name = f"kb{setup.runs}"
    disk = setup.machine_dir / f"{name}.qcow2"
    argv = [
        str(KVMLAB), "-c", setup.sb.uri, "--accel", "tcg",
        "vm", "create", name, "--image", "tiny", "--net", NETWORK, "--start",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=python_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    t_disk = t_exit = None
    deadline = t0 + BOOT_TIMEOUT
    try:
        while t_exit is None:
            now = time.perf_counter()
            if t_disk is None and disk.exists():
                t_disk = now
            if proc.poll() is not None:
                t_exit = now
            elif now > deadline:
                raise BenchError(f"{' '.join(argv)} did not finish in time")
            else:
                time.sleep(POLL)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(argv)} exited {proc.returncode}:\n{out}\n{err}")
        mac = setup.events.mac_of(name)
        console = setup.sb.host_path(f"/var/log/libvirt/qemu/{name}.log")
        t_lease = _wait_for_lease(setup, mac, deadline, f"kvmlab {name}", console)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kvmlab_delete(setup, name)
    events = setup.events.seen.get(name, {})
    t_defined, t_started = events.get("defined"), events.get("started")
    if t_disk is not None and t_defined is not None and t_started is not None:
        for key, value in (
            ("CLI start (launch to disk volume)", t_disk - t0),
            ("create (volumes, seed, define)", t_defined - t_disk),
            ("start (define to STARTED event)", t_started - t_defined),
            ("boot to lease (STARTED to lease)", t_lease - t_started),
            ("CLI exit (launch to exit)", t_exit - t0),
        ):
            setup.splits.setdefault(key, []).append(value)
    else:
        print(f"  (no split for {name}: events {events}, disk seen {t_disk})", file=sys.stderr)
    return t_lease - t0


def _kvmlab_delete(setup: Setup, name: str) -> None:
    subprocess.run(
        [str(KVMLAB), "-c", setup.sb.uri, "vm", "delete", name, "--force"],
        env=python_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip


def qemu_boot(setup: Setup) -> float:
    """A bare QEMU on a tap on the same bridge until the lease; cleans up after itself."""
    from kvmlab.libvirt.build import random_mac

    setup.runs += 1
    name, tap, mac = f"qb{setup.runs}", f"tapb{setup.runs}", random_mac()
    overlay, serial = setup.tmp / f"{name}.qcow2", setup.tmp / f"{name}.serial"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
         "-b", str(setup.image_path), str(overlay)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    setup.sb.run_in_netns(["ip", "tuntap", "add", tap, "mode", "tap"], check=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        setup.sb.run_in_netns(
            ["ip", "link", "set", tap, "master", setup.bridge, "up"], check=True
        )
        argv = [
            "ip", "netns", "exec", setup.sb.netns,
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults",
            "-display", "none", "-serial", f"file:{serial}",
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        t_lease = _wait_for_lease(setup, mac, t0 + BOOT_TIMEOUT, f"qemu {name}", serial)
        if proc.poll() is not None:
            raise BenchError(f"qemu {name} exited {proc.returncode} before it was stopped")
        return t_lease - t0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        setup.sb.run_in_netns(["ip", "link", "del", tap], capture_output=True, check=False)
        overlay.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def prepare(sb: Sandbox, tmp: Path) -> Setup:
    """The tiny image in the sandbox's image pool and a started NAT network."""
    from kvmlab.env import Env
    from kvmlab.services.images import build_tiny
    from kvmlab.services.networks import create_network
    from kvmlab.services.storage import MACHINE_POOL, pool_dir
    from kvmlab.specs import Accel, NetworkSpec

    env = Env(
        uri=sb.uri, cache_dir=CACHE, accel=Accel.TCG, state_dir=tmp / "state",
        progress=lambda msg: print(f"  {msg}", file=sys.stderr),
    )  # fmt: skip
    try:
        print("building/uploading the tiny image", file=sys.stderr)
        image = build_tiny(env)
        net = create_network(env, NetworkSpec(name=NETWORK, subnet=SUBNET))
        machine_dir = sb.host_path(pool_dir(env, MACHINE_POOL))
    finally:
        env.close()
    if not net.bridge:
        raise BenchError(f"network {NETWORK} has no bridge")
    return Setup(
        sb=sb,
        tmp=tmp,
        image_path=sb.host_path(image.path),
        machine_dir=machine_dir,
        bridge=net.bridge,
        leases=LeaseWatch(sb.host_path(f"/var/lib/libvirt/dnsmasq/{net.bridge}.status")),
        events=DomainEvents(sb.uri),
    )


def main() -> int:
    runs = runs_from_env(8)
    load_at_start = os.getloadavg()
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    stats = {"kvmlab": Stats("kvmlab"), "qemu": Stats("qemu")}
    cases = {"kvmlab": kvmlab_boot, "qemu": qemu_boot}
    with Sandbox(SANDBOX_PREFIX) as sb, tempfile.TemporaryDirectory(prefix="bench-boot-") as t:
        setup = prepare(sb, Path(t))
        try:
            for label in ("warm-up", *(f"run {i + 1}/{runs}" for i in range(runs))):
                for name, case in cases.items():
                    elapsed = case(setup)
                    print(f"  {label}: {name} {elapsed:.2f} s", file=sys.stderr)
                    if label != "warm-up":
                        stats[name].samples.append(elapsed)
                if label == "warm-up":
                    setup.splits.clear()
        finally:
            setup.events.close()
    split = {key: statistics.median(v) for key, v in setup.splits.items()}
    split_md = "kvmlab's time, split (medians, s):\n\n| part | s |\n| --- | ---: |\n" + "\n".join(
        f"| {key} | {value:.3f} |" for key, value in split.items()
    )
    report(
        "boot",
        stats,
        [Ratio("kvmlab", "qemu", at_most=1.1)],
        commands={
            "kvmlab": "kvmlab -c URI --accel tcg vm create bN --image tiny --net NET --start",
            "qemu": "qemu-system-x86_64 -accel tcg -m 256 -nodefaults ... (tap on the bridge)",
        },
        extra={"kvmlab_split_median_s": split, "kvmlab_split_samples_s": setup.splits},
        load_at_start=load_at_start,
        extra_markdown=split_md,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
