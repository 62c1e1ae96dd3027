"""Commands on the host the libvirt daemon runs on: routes, nftables, bridges.

libvirt has no API for a host's routing table, firewall or Linux bridges (its interface
driver is read-only without netcf), so kvmlab runs ``ip``/``nft`` for them. Where they run
is injected (a :class:`HostNet`), so tests point them into the network namespace of their
private daemon and nothing touches the root namespace.

Only local URIs have a :class:`HostNet` by default: for ``qemu+ssh://host/system`` kvmlab
cannot run commands on ``host`` and says so (see docs/networks.md).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from kvmlab import errors

if TYPE_CHECKING:
    import subprocess

NETNS_ENV = "KVMLAB_HOST_NETNS"  # run host commands in this named netns (tests, labs)
_LOCAL_URIS = ("qemu:///system", "qemu:///session")


class Route(NamedTuple):
    """An IPv4 route of the daemon's host."""

    destination: ipaddress.IPv4Network
    device: str | None


class HostNet:
    """Runs ``ip``/``nft`` on the daemon's host, in the daemon's network namespace.

    ``netns`` names a namespace (``ip netns exec``); ``pid`` enters the network namespace of
    that process (``nsenter --net``); neither: this process's own namespace.
    """

    def __init__(self, netns: str | None = None, pid: int | None = None) -> None:
        self.netns = netns
        self.pid = pid

    def __repr__(self) -> str:
        return f"HostNet(netns={self.netns!r}, pid={self.pid!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it is run, prefixed to enter the daemon's network namespace."""
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *argv]
        if self.pid:
            return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv]
        return list(argv)

    def run(
        self, argv: Sequence[str], input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one command; a failure raises :class:`OperationFailed` with its stderr."""
        import subprocess  # here, not above: reading routes from /proc needs no subprocess

        full = self.argv(argv)
        try:
            res = subprocess.run(
                full, input=input_text, capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise errors.OperationFailed(f"could not run {argv[0]}: {e}") from e
        if check and res.returncode != 0:
            raise errors.OperationFailed(
                f"`{' '.join(argv)}` failed: {res.stderr.strip() or res.stdout.strip()}"
            )
        return res

    def routes(self) -> list[Route]:
        """The host's IPv4 routes of the main table, without the default route."""
        if self.netns is None:
            # in-process: /proc/PID/net/route is the routing table of PID's namespace
            found = _proc_routes(f"/proc/{self.pid or 'self'}/net/route")
            if found is not None:
                return found
        res = self.run(["ip", "-j", "-4", "route", "show"], check=False)
        if res.returncode != 0:
            return []
        out = []
        for r in _ip_json(res.stdout):
            dst = r.get("dst", "default")
            if dst == "default":
                continue  # the default route overlaps everything; it is not a conflict
            out.append(Route(ipaddress.IPv4Network(dst, strict=False), r.get("dev")))
        return out

    def addresses(self, device: str) -> list[ipaddress.IPv4Interface]:
        """The IPv4 addresses on ``device``."""
        res = self.run(["ip", "-j", "-4", "addr", "show", "dev", device])
        out = []
        for link in _ip_json(res.stdout):
            for a in link.get("addr_info", []):
                out.append(ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}"))
        return out

    def interfaces(self) -> set[str]:
        """Names of the host's network interfaces."""
        if self.netns is None:
            try:
                with open(f"/proc/{self.pid or 'self'}/net/dev") as fh:
                    return {line.split(":")[0].strip() for line in fh.read().splitlines()[2:]}
            except OSError:
                pass
        res = self.run(["ip", "-j", "link", "show"], check=False)
        return {link["ifname"] for link in _ip_json(res.stdout)}

    def has_link(self, device: str) -> bool:
        """Whether a network interface of that name exists."""
        return self.run(["ip", "link", "show", "dev", device], check=False).returncode == 0


def _ip_json(text: str) -> Any:
    """What ``ip -j`` printed, parsed (json imported here: /proc is read without it)."""
    import json

    return json.loads(text or "[]")


def _proc_routes(path: str) -> list[Route] | None:
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return None
    out = []
    for line in lines:
        f = line.split()
        dest, mask = int(f[1], 16), int(f[7], 16)
        if mask == 0:
            continue  # the default route overlaps everything; it is not a conflict
        d = ipaddress.IPv4Address(dest.to_bytes(4, "little"))
        m = ipaddress.IPv4Address(mask.to_bytes(4, "little"))
        out.append(Route(ipaddress.IPv4Network(f"{d}/{m}", strict=False), f[0]))
    return out


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a daemon on this machine."""
    return uri.split("?")[0] in _LOCAL_URIS


_DAEMONS = ("libvirtd", "virtqemud", "virtnetworkd", "virtproxyd")


def _socket_path(uri: str) -> str:
    query = uri.partition("?")[2]
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "socket" and value:
            return value
    return "/var/run/libvirt/libvirt-sock"


def daemon_pid(uri: str) -> int | None:
    """The pid of the local daemon answering ``uri``'s socket (SO_PEERCRED), if we can tell."""
    # _socket is the C module under socket: socket.py's enum wrappers and selectors cost
    # ~3 ms, which every net create on a local daemon paid for this one getsockopt.
    import _socket

    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(_socket_path(uri))
            cred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # 3 ints
        finally:
            s.close()
        pid = int.from_bytes(cred[:4], sys.byteorder)  # struct ucred: pid, uid, gid
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    # a socket-activated daemon's socket belongs to its activator: no namespace to learn
    return pid if comm in _DAEMONS else None


def for_uri(uri: str) -> HostNet | None:
    """The host runner for a URI; None when the daemon is remote.

    ``$KVMLAB_HOST_NETNS`` names a namespace explicitly. Otherwise, when the local daemon
    runs in another network namespace than kvmlab (a lab or test daemon started with
    ``ip netns exec``), the commands run in the daemon's namespace, never in kvmlab's own.
    """
    if not is_local(uri):
        return None
    named = os.environ.get(NETNS_ENV)
    if named:
        return HostNet(named)
    if uri.split("?")[0] != "qemu:///system":
        return HostNet()
    pid = daemon_pid(uri)
    if pid is not None:
        try:
            theirs = os.readlink(f"/proc/{pid}/ns/net")
            if theirs != os.readlink("/proc/self/ns/net"):
                return HostNet(pid=pid)
        except OSError:
            pass
    return HostNet()


def require(uri: str, host: HostNet | None, what: str) -> HostNet:
    """``host`` or the local one; refuse remote URIs for what needs host commands."""
    found = host or for_uri(uri)
    if found is None:
        raise errors.InvalidInput(
            f"{what} needs commands on the daemon's host, and {uri} is not a local daemon",
            hint="run kvmlab on that host (with -c qemu:///system)",
        )
    return found
