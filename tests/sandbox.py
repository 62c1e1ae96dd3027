"""A private libvirtd + virtlogd inside a network namespace, for integration tests and benchmarks.

Layout (see shared/HOST-NOTES.md, "A fully private daemon beside the host's one")::

    pytest process (root mount + network namespace)
      `- keeper  = ip netns exec NS unshare -m --propagation private python sandbox.py --keeper
           (network namespace NS, private mount namespace, child subreaper)
           |- virtlogd -d      \
           |- libvirtd -d       > reparented to the keeper, which reaps them
           |- qemu, dnsmasq    /

The keeper bind-mounts directories under ``root`` over ``/run``, ``/var/lib/libvirt``,
``/var/log/libvirt``, ``/var/cache/libvirt`` and ``/etc/libvirt`` in its private mount
namespace, so the daemons neither see nor touch the host's libvirt state, and every bridge,
dnsmasq, firewall rule and guest they create lives in NS. The mounts exist only in the
keeper's mount namespace, so they vanish with its last process.

The keeper is a subreaper, so it reaps the daemons it kills at once: PID 1 on these machines
reaps orphans only seconds later, and teardown should end with the processes gone. It also
watches its parent: if the test process dies without tearing down (SIGKILL), the keeper kills
everything in NS, deletes NS and removes ``root`` on its own. ``cleanup_stale_sandboxes``
catches what is left when both died.

This file is both the importable module and the keeper script, so the keeper part uses only
the standard library.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from types import FrameType, TracebackType
from typing import Any

SANDBOX_BASE_ENV = "KVMLAB_SANDBOX_DIR"
"""Environment variable: parent directory of the sandboxes' state dirs (default ``/run``)."""

DEBUG_ENV = "KVMLAB_SANDBOX_DEBUG"
"""Environment variable: when set, the daemons log at debug level (large logs)."""

ROOT_PREFIX = "kvmlab-sandbox-"
STATE_FILE = "sandbox.json"

# Daemon-side directory -> subdirectory of ``root`` bind-mounted over it. /run goes last:
# once it is covered, ``root`` (normally below /run) is no longer reachable in that namespace.
PRIVATE_DIRS: tuple[tuple[str, str], ...] = (
    ("/etc/libvirt", "etc"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
    ("/run", "run"),
)
_PATH_ALIASES = {"/var/run": "/run"}

# Config files copied from the host's /etc/libvirt; domain, network, storage and secret XML
# (the qemu/, storage/, secrets/ subdirectories) and hook scripts are deliberately not copied.
_COPIED_CONFIG_DIRS = ("nwfilter",)

_QEMU_CONF = {
    "user": '"root"',
    "group": '"root"',
    "dynamic_ownership": "0",
    "remember_owner": "0",
    "security_driver": '"none"',
    # Keep guests out of the host's cgroup tree (two sandboxes would both use /machine/...).
    "cgroup_controllers": "[ ]",
}

_CLONE_NEWNS = 0x00020000
_PR_SET_CHILD_SUBREAPER = 36

START_TIMEOUT = 20.0
LIBVIRT_CLEANUP_TIMEOUT = 30.0
KEEPER_STOP_TIMEOUT = 20.0


class SandboxError(RuntimeError):
    """The sandbox could not be started; the message carries the daemon logs."""


# --------------------------------------------------------------------------------------------
# Helpers shared by the test process and the keeper (standard library only)
# --------------------------------------------------------------------------------------------


def _log_level() -> int:
    return 1 if os.environ.get(DEBUG_ENV) else 3


def _sandbox_base() -> Path:
    return Path(os.environ.get(SANDBOX_BASE_ENV, "/run"))


def _process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _process_alive(pid: int, start_time: str | None = None) -> bool:
    """True if ``pid`` runs (zombies count as dead) and, if given, started at ``start_time``."""
    current = _process_start_time(pid)
    if current is None:
        return False
    return start_time is None or current == start_time


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pids_in_netns(inode: int, exclude: set[int]) -> list[int]:
    """PIDs of live processes whose network namespace has ``inode``; like ``ip netns pids``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude and _netns_inode(entry) == inode:
            pids.append(int(entry))
    return pids


def _signal_pids(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(pids: list[int], timeout: float, reap: Callable[[], None] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if reap is not None:
            reap()
        alive = [pid for pid in pids if _process_alive(pid)]
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _terminate(pids: list[int], timeout: float, reap: Callable[[], None] | None = None) -> None:
    """SIGTERM ``pids``, SIGKILL whatever still runs after ``timeout`` s, wait until gone."""
    _signal_pids(pids, signal.SIGTERM)
    if not _wait_gone(pids, timeout, reap):
        _signal_pids(pids, signal.SIGKILL)
        _wait_gone(pids, 5.0, reap)


def _mountpoints() -> list[str]:
    """Mount points of the calling process's mount namespace."""
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            point = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    return [p for p in _mountpoints() if p == str(path) or p.startswith(prefix)]


def _run_quiet(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _delete_netns(name: str) -> None:
    if Path("/run/netns", name).exists():
        _run_quiet(["ip", "netns", "del", name])


def _remove_root(root: Path) -> None:
    """Remove a sandbox state dir, refusing if anything is mounted below it."""
    if not root.exists():
        return
    mounted = _mounts_under(root)
    if mounted:
        print(f"sandbox: not removing {root}: still mounted: {mounted}", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The keeper: runs inside the network namespace and the private mount namespace
# --------------------------------------------------------------------------------------------


class _Keeper:
    def __init__(self, root: Path, netns: str, owner_pid: int) -> None:
        self.root = root
        self.netns = netns
        self.owner_pid = owner_pid
        self.stop_reason: str | None = None
        self.libc = ctypes.CDLL(None, use_errno=True)

    def main(self) -> int:
        if os.getppid() != self.owner_pid:
            return 1  # the owner died before we started
        # The owner spawns us with SIGINT/SIGTERM blocked (see _signals_blocked); a blocked
        # mask is inherited through fork and exec, so clear it before starting the daemons.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if self.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            print("sandbox keeper: PR_SET_CHILD_SUBREAPER failed", file=sys.stderr)
        # The owner's mount namespace, to delete the netns and root if the owner dies.
        host_mnt = os.open(f"/proc/{self.owner_pid}/ns/mnt", os.O_RDONLY)
        signal.signal(signal.SIGUSR1, self._on_signal)  # the owner asks for a normal stop
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._setup_network()
            self._mount_private_dirs()
            self._start_daemons()
        except Exception as exc:  # report anything to the owner, who raises with the logs
            print(f"error: {exc}", flush=True)
            self._stop_processes()
            return 1
        print("ready", flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the owner stops reading; nothing else may hold its pipe
        self._serve()
        self._stop_processes()
        if self.stop_reason == "orphaned":
            self._cleanup_as_host(host_mnt)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_reason = "requested" if signum == signal.SIGUSR1 else "orphaned"

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _serve(self) -> None:
        while self.stop_reason is None:
            self._reap()
            if os.getppid() != self.owner_pid:
                self.stop_reason = "orphaned"
                break
            time.sleep(0.2)

    def _setup_network(self) -> None:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        # Per network namespace: only NS forwards, for NAT networks.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")

    def _mount_private_dirs(self) -> None:
        # Drop our copies of mounts below /run (notably other namespaces' /run/netns/* files,
        # which would keep those namespaces alive as long as this one lives). Private
        # propagation: this affects only our mount namespace.
        for point in sorted(_mountpoints(), key=len, reverse=True):
            if point.startswith("/run/") and not str(self.root).startswith(point + "/"):
                _run_quiet(["umount", "--lazy", point])
        for daemon_dir, sub in PRIVATE_DIRS:
            if not Path(daemon_dir).is_dir():
                raise RuntimeError(f"{daemon_dir} does not exist on this host")
            subprocess.run(
                ["mount", "--bind", str(self.root / sub), daemon_dir],
                check=True, capture_output=True, text=True,
            )

    def _start_daemons(self) -> None:
        # /run/lock (= /var/lock): libvirt locks a console's pty there (LCK.._pts_N)
        for sub in ("libvirt", "libvirt/qemu", "libvirt/network", "lock"):
            Path("/run", sub).mkdir(parents=True, exist_ok=True)
        Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)
        for argv in (["virtlogd", "-d"], ["libvirtd", "-d"]):
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
                )

    def _stop_processes(self) -> None:
        own_ns = _netns_inode("self")
        assert own_ns is not None
        # libvirtd first, gracefully, so it does not restart what we kill next.
        for pidfile in ("/run/libvirtd.pid", "/run/virtlogd.pid"):
            with contextlib.suppress(OSError, ValueError):
                _terminate([int(Path(pidfile).read_text().strip())], 5.0, self._reap)
        for _ in range(3):  # processes may fork while we kill
            pids = _pids_in_netns(own_ns, exclude={os.getpid()})
            if not pids:
                break
            _terminate(pids, 3.0, self._reap)
        self._reap()

    def _cleanup_as_host(self, host_mnt: int) -> None:
        """The owner died: delete the netns and root as the owner would have."""
        if self.libc.setns(host_mnt, _CLONE_NEWNS) != 0:
            print("sandbox keeper: setns to the owner's mount namespace failed", file=sys.stderr)
            return
        _delete_netns(self.netns)
        _release_netns_dir()
        _remove_root(self.root)


def _keeper_main(argv: list[str]) -> int:
    global _netns_dir_state
    root, netns, owner, netns_dir_state = argv
    _netns_dir_state = (netns_dir_state[0] == "1", netns_dir_state[1] == "1")
    return _Keeper(Path(root), netns, int(owner)).main()


# --------------------------------------------------------------------------------------------
# The test-process side
# --------------------------------------------------------------------------------------------

_active: set[Sandbox] = set()
_active_lock = threading.Lock()
_handlers_installed = False
_previous_handlers: dict[int, Any] = {}
_netns_dir_state: tuple[bool, bool] | None = None  # (dir existed, was a mount point)
# QEMU capabilities probed by earlier sandboxes of this process: file name -> XML. Probing
# qemu-system-x86_64 takes ~1.7 s; libvirt checks a seeded file (binary ctimes, kernel,
# microcode, libvirt version) and probes again if it does not match this host.
_caps_cache: dict[str, bytes] = {}
_CAPS_DIR = "/var/cache/libvirt/qemu/capabilities"


def _close_all_active() -> None:
    with _active_lock:
        sandboxes = list(_active)
    for sandbox in sandboxes:
        sandbox.close(failed=True)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    _close_all_active()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    atexit.register(_close_all_active)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:  # e.g. SIGHUP under nohup: it does not end us
                continue
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_fatal_signal)
    _handlers_installed = True


def _note_netns_dir() -> None:
    """Remember whether /run/netns existed (and was a mount) before we first used it."""
    global _netns_dir_state
    if _netns_dir_state is None:
        netns_dir = Path("/run/netns")
        _netns_dir_state = (netns_dir.exists(), str(netns_dir) in _mountpoints())


def _release_netns_dir(force: bool = False) -> None:
    """Undo what ``ip netns add`` did to /run/netns if we caused it and it is unused now.

    ``ip netns add`` turns /run/netns into a shared bind mount of itself. A plain (non-lazy)
    umount fails with EBUSY while any namespace is still mounted below it, so this never
    disturbs a namespace someone else is using.
    """
    existed, was_mount = _netns_dir_state if _netns_dir_state else (True, True)
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir() or any(netns_dir.iterdir()):
        return
    if (force or not was_mount) and str(netns_dir) in _mountpoints():
        _run_quiet(["umount", str(netns_dir)])
    if force or not existed:
        with contextlib.suppress(OSError):
            netns_dir.rmdir()


class Sandbox:
    """A private libvirtd (QEMU driver, networks, storage) in its own network namespace.

    Use as a context manager; leaving it destroys every domain, network and pool, stops every
    process in the namespace, deletes the namespace and removes ``root``. ``keep_logs_on_failure``
    names a directory that receives a copy of the logs (libvirtd, virtlogd, QEMU, dnsmasq
    config) when the ``with`` block raised.
    """

    uri: str
    netns: str
    root: Path

    def __init__(
        self,
        name_prefix: str = "kvmlab-t",
        keep_logs_on_failure: Path | None = None,
        *,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*", name_prefix) or len(
            name_prefix
        ) > 24:
            raise ValueError(f"bad sandbox name prefix {name_prefix!r}")
        self.name_prefix = name_prefix
        self.keep_logs_on_failure = keep_logs_on_failure
        self.start_timeout = start_timeout
        self.netns = f"{name_prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.root = _sandbox_base() / f"{ROOT_PREFIX}{self.netns}"
        self.socket_path = self.root / "run" / "libvirt" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket_path}"
        self.libvirtd_log = self.root / "log" / "libvirtd.log"
        self._keeper: subprocess.Popen[bytes] | None = None
        self._closed = False
        if len(str(self.socket_path)) > 100:  # sun_path is 108 bytes
            raise ValueError(f"socket path too long: {self.socket_path}")

    # ---- context manager ----

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)

    # ---- public API ----

    def start(self) -> None:
        """Create the namespace and start the daemons; tears down again if that fails."""
        _install_handlers()
        with _active_lock:
            _active.add(self)
        try:
            with _signals_blocked():
                self._prepare_root()
                _note_netns_dir()
                subprocess.run(
                    ["ip", "netns", "add", self.netns], check=True, capture_output=True, text=True
                )
                self._start_keeper()
            self._wait_for_daemon()
        except BaseException:
            self.close(failed=True)
            raise

    def close(self, failed: bool = False) -> None:
        """Tear everything down. Idempotent; never raises; each step tolerates partial state."""
        if self._closed:
            return
        with _signals_blocked():
            for step in (
                self._cleanup_libvirt_objects,
                self._stop_keeper,
                self._kill_netns_leftovers,
                self._delete_netns,
                lambda: self._save_logs(failed),
                self._remember_capabilities,
                lambda: _remove_root(self.root),
            ):
                try:
                    step()
                except Exception as exc:  # teardown must go on; report and continue
                    print(f"sandbox {self.netns}: teardown step failed: {exc!r}", file=sys.stderr)
            self._closed = True
            with _active_lock:
                _active.discard(self)

    def run_in_netns(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the sandbox's network namespace (host mount namespace).

        Keyword arguments go to ``subprocess.run``. Paths the daemon sees are not visible as
        such here: map them with ``host_path``.
        """
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kw)

    INSIDE_URI = "qemu:///system?socket=/run/libvirt/libvirt-sock"
    """The sandbox daemon's URI for a process started with :meth:`run_in_mountns`."""

    def run_in_mountns(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the sandbox's mount namespace (host network namespace).

        It sees the daemon's directories (``/run``, ``/var/lib/libvirt``) as the daemon does, so
        a pool's volume files are its own files there, as for a local client; it connects with
        :attr:`INSIDE_URI` and still reaches servers on the host's loopback. nsenter fails (and
        runs nothing) if the keeper is gone. Keyword arguments go to ``subprocess.run``.
        """
        keeper = self._keeper
        if keeper is None or keeper.poll() is not None:
            raise SandboxError("the sandbox is not running")
        return subprocess.run(
            ["nsenter", "--target", str(keeper.pid), "--mount", "--", *argv], **kw
        )

    def host_path(self, daemon_path: str) -> Path:
        """Where a path as the daemon sees it (``/var/lib/libvirt/images/x``) is on the host.

        Paths outside the private directories (``/tmp``, ``/work``, ...) are shared and are
        returned unchanged.
        """
        path = PurePosixPath(daemon_path)
        if not path.is_absolute():
            raise ValueError(f"not an absolute path: {daemon_path!r}")
        for alias, target in _PATH_ALIASES.items():
            if path == PurePosixPath(alias) or path.is_relative_to(alias):
                path = PurePosixPath(target) / path.relative_to(alias)
        for daemon_dir, sub in PRIVATE_DIRS:
            if path == PurePosixPath(daemon_dir) or path.is_relative_to(daemon_dir):
                return self.root / sub / path.relative_to(daemon_dir)
        return Path(path)

    def qcow2_alone(self, daemon_path: str) -> str:
        """A qemu-img/qemu-io target for the daemon's qcow2 file ``daemon_path``, opened on the
        host without its backing file (whose path exists only in the sandbox's mount
        namespace): for what lives in the file itself, its snapshots, refcounts and clusters."""
        file = {"driver": "file", "filename": str(self.host_path(daemon_path))}
        spec = {"driver": "qcow2", "backing": None, "file": file}
        return "json:" + json.dumps(spec)

    @property
    def libvirtd_pid(self) -> int | None:
        """PID of the sandbox's libvirtd, None if it is not running."""
        try:
            pid = int(self.host_path("/run/libvirtd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _process_alive(pid) else None

    def reset(self) -> None:
        """Destroy and undefine every domain, network and storage pool on the sandbox."""
        _remove_libvirt_objects(self.uri)

    # ---- start ----

    def _prepare_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True)
        (self.root / STATE_FILE).write_text(
            json.dumps(
                {
                    "netns": self.netns,
                    "prefix": self.name_prefix,
                    "owner_pid": os.getpid(),
                    "owner_start": _process_start_time(os.getpid()),
                }
            )
        )
        for _, sub in PRIVATE_DIRS:
            (self.root / sub).mkdir()
        for sub in ("lib/images", "lib/qemu", "log/qemu", "cache/qemu", "run/libvirt"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._seed_capabilities()

    def _seed_capabilities(self) -> None:
        caps_dir = self.host_path(_CAPS_DIR)
        caps_dir.mkdir(parents=True, exist_ok=True)
        seeds = dict(_caps_cache)
        if not seeds:  # the host's own cache, read only
            with contextlib.suppress(OSError):
                seeds = {p.name: p.read_bytes() for p in Path(_CAPS_DIR).glob("*.xml")}
        for name, xml in seeds.items():
            (caps_dir / name).write_bytes(xml)

    def _remember_capabilities(self) -> None:
        with contextlib.suppress(OSError):
            for path in self.host_path(_CAPS_DIR).glob("*.xml"):
                _caps_cache[path.name] = path.read_bytes()

    def _write_config(self) -> None:
        etc = self.root / "etc"
        host_etc = Path("/etc/libvirt")
        if host_etc.is_dir():
            for entry in host_etc.iterdir():
                if entry.is_file() and entry.suffix == ".conf":
                    shutil.copy2(entry, etc / entry.name)
            for sub in _COPIED_CONFIG_DIRS:
                if (host_etc / sub).is_dir():
                    shutil.copytree(host_etc / sub, etc / sub)
        # Empty dirs: nothing to autostart (no 'default' network), no host hooks.
        for sub in ("qemu/networks/autostart", "qemu/autostart", "storage/autostart", "hooks"):
            (etc / sub).mkdir(parents=True, exist_ok=True)
        level = _log_level()
        _set_conf(etc / "libvirtd.conf", {
            "log_outputs": f'"{level}:file:/var/log/libvirt/libvirtd.log"',
            "log_filters": '""',
            # Whatever the host's file says: the socket is where ``uri`` points, and ``root``
            # (mode 0700) already limits it to root.
            "unix_sock_dir": '"/run/libvirt"',
            "auth_unix_rw": '"none"',
            "auth_unix_ro": '"none"',
        })
        _set_conf(etc / "virtlogd.conf", {
            "log_outputs": f'"{level}:file:/var/log/libvirt/virtlogd.log"',
        })
        _set_conf(etc / "qemu.conf", _QEMU_CONF)

    def _start_keeper(self) -> None:
        self.root.joinpath("keeper.log").touch()
        with open(self.root / "keeper.log", "ab") as keeper_log:
            self._keeper = subprocess.Popen(
                [
                    "ip", "netns", "exec", self.netns,
                    "unshare", "--mount", "--propagation", "private",
                    sys.executable, str(Path(__file__).resolve()), "--keeper",
                    str(self.root), self.netns, str(os.getpid()),
                    "".join("1" if flag else "0" for flag in _netns_dir_state or (True, True)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=keeper_log,
                start_new_session=True,  # Ctrl-C in the terminal must not reach it
            )

    def _wait_for_daemon(self) -> None:
        assert self._keeper is not None and self._keeper.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        line = _readline_with_timeout(self._keeper.stdout, self.start_timeout)
        if line.strip() != b"ready":
            raise SandboxError(self._failure_report(f"keeper said {line!r}"))
        while not _socket_answers(self.socket_path):
            if time.monotonic() > deadline:
                raise SandboxError(self._failure_report("libvirtd socket does not answer"))
            time.sleep(0.05)
        remaining = max(deadline - time.monotonic(), 1.0)
        result = _call_with_timeout(lambda: _daemon_type(self.uri), remaining)
        if result != "QEMU":
            raise SandboxError(self._failure_report(f"connecting to {self.uri}: {result}"))

    def _failure_report(self, what: str) -> str:
        parts = [f"sandbox {self.netns}: {what}"]
        for log in (
            self.root / "keeper.log",
            self.root / "log" / "virtlogd.log",
            self.libvirtd_log,
        ):
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {log} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- teardown steps ----

    def _cleanup_libvirt_objects(self) -> None:
        if self._keeper is None or self._keeper.poll() is not None:
            return
        if not _socket_answers(self.socket_path):
            return
        result = _call_with_timeout(
            lambda: _remove_libvirt_objects(self.uri), LIBVIRT_CLEANUP_TIMEOUT
        )
        if result is not None:
            print(f"sandbox {self.netns}: libvirt cleanup: {result}", file=sys.stderr)

    def _stop_keeper(self) -> None:
        keeper = self._keeper
        if keeper is None:
            return
        if keeper.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                keeper.send_signal(signal.SIGUSR1)
            try:
                keeper.wait(KEEPER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                keeper.kill()
                keeper.wait()
        if keeper.stdout is not None:
            keeper.stdout.close()

    def _kill_netns_leftovers(self) -> None:
        """Fallback when the keeper could not stop everything (then orphans become zombies)."""
        if not Path("/run/netns", self.netns).exists():
            return
        inode = os.stat(Path("/run/netns", self.netns)).st_ino
        for _ in range(3):
            pids = _pids_in_netns(inode, exclude={os.getpid()})
            if not pids:
                return
            _terminate(pids, 3.0)

    def _delete_netns(self) -> None:
        _delete_netns(self.netns)
        _release_netns_dir()

    def _save_logs(self, failed: bool) -> None:
        if not (failed and self.keep_logs_on_failure and self.root.exists()):
            return
        target = self.keep_logs_on_failure / self.netns
        target.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copytree(self.root / "log", target / "log", dirs_exist_ok=True)
        for name in ("keeper.log", STATE_FILE):
            with contextlib.suppress(FileNotFoundError):
                shutil.copy2(self.root / name, target / name)
        with contextlib.suppress(FileNotFoundError):
            shutil.copytree(self.root / "lib" / "dnsmasq", target / "dnsmasq")


# --------------------------------------------------------------------------------------------
# libvirt, config and process helpers for the test-process side
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP so a Ctrl-C cannot cut a start or teardown step in half."""
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    is_main = threading.current_thread() is threading.main_thread()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if is_main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _set_conf(path: Path, values: dict[str, str]) -> None:
    """Comment out the active ``key = ...`` lines for ``values`` and append ours."""
    lines = path.read_text().splitlines() if path.exists() else []
    keys = "|".join(re.escape(k) for k in values)
    pattern = re.compile(rf"^\s*({keys})\s*=")
    kept = [f"# (sandbox) {line}" if pattern.match(line) else line for line in lines]
    kept.append("# --- kvmlab test sandbox ---")
    kept.extend(f"{key} = {value}" for key, value in values.items())
    path.write_text("\n".join(kept) + "\n")


def _readline_with_timeout(stream: Any, timeout: float) -> bytes:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else b"<no answer within %.0f s>" % timeout


def _call_with_timeout(func: Callable[[], Any], timeout: float) -> Any:
    """Run ``func`` in a daemon thread; its result, the exception it raised, or a timeout note.

    libvirt calls have no timeout of their own; a hung daemon must not hang the test run.
    """
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(func())
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _daemon_type(uri: str) -> str:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return str(conn.getType())
    finally:
        conn.close()


def _remove_libvirt_objects(uri: str) -> None:
    """Destroy and undefine every domain (with its metadata), network and storage pool."""
    import libvirt

    undefine_flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    )
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isPersistent():
                    dom.undefineFlags(undefine_flags)
        for net in conn.listAllNetworks():
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                if net.isPersistent():
                    net.undefine()
        for pool in conn.listAllStoragePools():
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isPersistent():
                    pool.undefine()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# Leftovers of crashed runs
# --------------------------------------------------------------------------------------------


def _owner_of(netns: str, prefix: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)-[0-9a-f]+", netns)
    return int(match.group(1)) if match else None


def cleanup_stale_sandboxes(prefix: str = "kvmlab-t") -> list[str]:
    """Remove sandboxes named ``prefix-PID-...`` whose creating process is gone.

    Kills their processes, deletes their namespaces and state dirs. Sandboxes of live
    processes (another test run on the same host) are left alone. Returns the names removed.
    """
    removed: set[str] = set()
    state_by_netns: dict[str, dict[str, Any]] = {}
    base = _sandbox_base()
    if base.is_dir():
        for state_file in base.glob(f"{ROOT_PREFIX}{prefix}-*/{STATE_FILE}"):
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_file.read_text())
                if state.get("prefix") == prefix:
                    state_by_netns[state["netns"]] = state
    netns_dir = Path("/run/netns")
    names = set(state_by_netns)
    if netns_dir.is_dir():
        names |= {p.name for p in netns_dir.iterdir() if _owner_of(p.name, prefix) is not None}
    for name in sorted(names):
        owner = _owner_of(name, prefix)
        if owner is None:
            continue
        state = state_by_netns.get(name, {})
        if _process_alive(owner, state.get("owner_start")):
            continue
        ns_file = netns_dir / name
        if ns_file.exists():
            inode = os.stat(ns_file).st_ino
            for _ in range(3):
                pids = _pids_in_netns(inode, exclude={os.getpid()})
                if not pids:
                    break
                _terminate(pids, 3.0)
            _delete_netns(name)
        _remove_root(base / f"{ROOT_PREFIX}{name}")
        removed.add(name)
    if removed:  # a crashed run may have left /run/netns as ip made it
        _release_netns_dir(force=True)
    return sorted(removed)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--keeper":
        sys.exit(_keeper_main(sys.argv[2:]))
    sys.exit("usage: sandbox.py --keeper ROOT NETNS OWNER_PID NETNS_DIR_STATE (run by Sandbox)")
