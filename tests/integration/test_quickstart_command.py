"""Command 1 of the README, run exactly as written, but inside a fresh network namespace and a
private mount namespace (tmpfs over /run and libvirt's directories), so the daemon it starts,
the NAT network it creates and the guests it boots never touch the host's networks.

It must print a table with two machines and their IPs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Runs inside `ip netns exec NS unshare -m --propagation private`: hide the host's libvirt
# state behind private directories, then run command 1.
WRAPPER = r"""
set -eu
priv=$1; cache=$2; shift 2
for d in etc lib log cache state run; do mkdir -p "$priv/$d"; done
cp -a /etc/libvirt/. "$priv/etc/"
rm -rf "$priv/etc/qemu" "$priv/etc/storage" "$priv/etc/secrets" "$priv/etc/hooks"
mount --bind "$priv/etc" /etc/libvirt
mount --bind "$priv/lib" /var/lib/libvirt
mount --bind "$priv/log" /var/log/libvirt
mkdir -p /var/cache/libvirt /var/lib/kvmlab /var/cache/kvmlab
mount --bind "$priv/cache" /var/cache/libvirt
mount --bind "$priv/state" /var/lib/kvmlab
mount --bind "$cache" /var/cache/kvmlab
mount -t tmpfs tmpfs /run
mkdir -p /run/libvirt /run/lock
ip link set lo up
exec "$@"
"""


def _kill_netns(ns: str) -> None:
    for _ in range(50):
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
        ).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.slow
def test_readme_command_1_prints_two_machines_with_ips(tmp_path: Path, test_cache: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    ns = f"kvmlab-qs-{os.getpid()}-{secrets.token_hex(3)}"
    priv = tmp_path / "priv"
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(WRAPPER)
    # The namespace has no route out, so the Debian packages the tiny image is built from are
    # fetched here first (into the cache that command 1 then sees as /var/cache/kvmlab).
    from kvmlab.image.tiny import build_tiny_image

    build_tiny_image(test_cache / "build", test_cache / "debs")
    cache = test_cache
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
             "bash", str(wrapper), str(priv), str(cache),
             str(REPO / "scripts" / "quickstart.sh")],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        rows = [line.split() for line in out.stdout.splitlines()]
        rows = rows[[r[:3] for r in rows].index(["NAME", "STATE", "IP"]) :]
        machines = {r[0]: r for r in rows[1:] if r}
        assert set(machines) == {"demo-1", "demo-2"}, out.stdout
        ips = []
        for name, row in machines.items():
            assert row[1] == "running", row
            assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", row[2]), f"{name} has no IP: {row}"
            ips.append(ipaddress.IPv4Address(row[2]))
        assert ips[0] != ips[1]
        assert ipaddress.IPv4Network(f"{ips[0]}/24", strict=False).overlaps(
            ipaddress.IPv4Network(f"{ips[1]}/24", strict=False)
        ), "both machines are on the one NAT network"
        # the root namespace never saw the switch
        root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        ns_links = subprocess.run(
            ["ip", "netns", "exec", ns, "ip", "-o", "link"], capture_output=True, text=True
        ).stdout
        bridges = re.findall(r"\d+: (virbr\d+):", ns_links)
        assert bridges, ns_links
        assert not any(f" {b}:" in root_links for b in bridges)
    finally:
        _kill_netns(ns)
