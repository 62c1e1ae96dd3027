"""Host readiness: can this host run virtual machines well, and what is missing.

``check`` reports each item as ok / warn / fail with the fix; ``setup`` installs the stack
with the distribution's package manager and starts the libvirt daemon. Both describe the
local host (the one kvmlab runs on).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import CheckStatus, HostCheck
from kvmlab.services import accel

OK, WARN, FAIL = CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL

# What `host setup` installs: the hypervisor stack, and the tools that build the tiny image.
DEBIAN_PACKAGES = (
    "qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients",
    "libvirt-daemon-driver-qemu", "dnsmasq-base", "iptables", "nftables", "bridge-utils",
    "iproute2", "busybox-static", "qemu-guest-agent", "syslinux", "syslinux-common", "mtools",
    "dosfstools", "e2fsprogs", "fdisk",
)  # fmt: skip
FEDORA_GROUPS = ("@virtualization",)
FEDORA_PACKAGES = (
    "busybox", "qemu-guest-agent", "syslinux", "mtools", "dosfstools", "e2fsprogs",
)  # fmt: skip


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def check_cpu() -> HostCheck:
    """vmx/svm in /proc/cpuinfo, and what it means when they are hidden."""
    flags = _cpu_flags()
    ext = "vmx (Intel VT-x)" if "vmx" in flags else "svm (AMD-V)" if "svm" in flags else None
    if ext:
        return HostCheck("cpu virtualization", OK, f"the CPU offers {ext}")
    usable, _ = accel.kvm_device_usable()
    if usable:
        return HostCheck(
            "cpu virtualization",
            WARN,
            "/proc/cpuinfo shows no vmx/svm but /dev/kvm works: this host is itself a VM "
            "(nested virtualization)",
            "the KVM probe below tells whether KVM is worth using here",
        )
    return HostCheck(
        "cpu virtualization",
        WARN,
        "no vmx/svm: the CPU does not offer hardware virtualization",
        "enable VT-x/AMD-V in the firmware; meanwhile kvmlab uses software emulation (TCG)",
    )


def kvm_group_access() -> bool | None:
    """Whether group ``kvm`` may read and write /dev/kvm (None: no device or no such group)."""
    import grp

    try:
        st = os.stat("/dev/kvm")
        gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return None
    return st.st_gid == gid and st.st_mode & 0o060 == 0o060


def check_kvm_device() -> HostCheck:
    """Can /dev/kvm be opened, by us and by the kvm group QEMU runs in?"""
    usable, why = accel.kvm_device_usable()
    if usable and kvm_group_access() is False:
        return HostCheck(
            "/dev/kvm",
            WARN,
            "/dev/kvm is not read-write for group kvm, so QEMU (user libvirt-qemu) cannot use "
            "it and libvirt re-probes QEMU on every define (about a minute each); udev's rule "
            "did not run on this host",
            "`kvmlab host setup` (sets root:kvm 0660, as udev would)",
        )
    if usable:
        return HostCheck("/dev/kvm", OK, why)
    fix = "load the module: `modprobe kvm_intel` or `modprobe kvm_amd`"
    if os.path.exists("/dev/kvm"):
        fix = "add yourself to the kvm group, or run as root"
    return HostCheck("/dev/kvm", WARN, why + "; machines will use software emulation", fix)


def check_qemu() -> HostCheck:
    """The QEMU system emulator and its version."""
    qemu = accel.qemu_binary()
    if qemu is None:
        return HostCheck("qemu", FAIL, "qemu-system-x86_64 not found", "run `kvmlab host setup`")
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout.splitlines() or ["unknown version"])[0]
    return HostCheck("qemu", OK, f"{qemu}: {first}")


def check_daemon(env: Env) -> HostCheck:
    """Which libvirt daemon answers on the URI, and its version."""
    try:
        info = env.hypervisor.daemon_info()
    except errors.DaemonUnavailable as e:
        return HostCheck("libvirt daemon", FAIL, e.message, e.hint)
    kind = _daemon_kind(env.uri)
    return HostCheck(
        "libvirt daemon",
        OK,
        f"{kind} answers on {env.uri}: libvirt {info['libvirt']}, "
        f"{info['driver']} {info['hypervisor']}",
    )


def _daemon_kind(uri: str) -> str:
    """Monolithic libvirtd or modular virtqemud, from the socket the URI leads to."""
    from urllib.parse import parse_qs, urlsplit

    given = parse_qs(urlsplit(uri).query).get("socket")
    if given:
        sock = Path(given[0])
    elif _answers(Path("/run/libvirt/virtqemud-sock")) and not _answers(LIBVIRT_SOCK):
        sock = Path("/run/libvirt/virtqemud-sock")
    else:
        sock = LIBVIRT_SOCK
    return "virtqemud (modular)" if "virtqemud" in sock.name else "libvirtd (monolithic)"


def check_bridge_tun() -> HostCheck:
    """Bridges and tap devices, which every VM NIC needs."""
    tun = Path("/dev/net/tun").exists()
    bridge = Path("/sys/module/bridge").exists() or _module_available("bridge")
    if tun and bridge:
        return HostCheck("bridge and tun", OK, "bridge module and /dev/net/tun available")
    missing = [n for n, ok in (("/dev/net/tun", tun), ("bridge module", bridge)) if not ok]
    return HostCheck(
        "bridge and tun", FAIL, "missing: " + ", ".join(missing), "`modprobe tun bridge`"
    )


def _module_available(name: str) -> bool:
    release = os.uname().release
    try:
        dep = Path(f"/lib/modules/{release}/modules.dep").read_text()
    except OSError:
        return False
    return f"/{name}.ko" in dep


def check_ip_forward() -> HostCheck:
    """IPv4 forwarding, which NAT networks need (libvirt turns it on when one starts)."""
    try:
        value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    except OSError:
        return HostCheck("ip forwarding", WARN, "cannot read /proc/sys/net/ipv4/ip_forward")
    if value == "1":
        return HostCheck("ip forwarding", OK, "net.ipv4.ip_forward = 1")
    return HostCheck(
        "ip forwarding",
        WARN,
        "net.ipv4.ip_forward = 0 (libvirt enables it when a NAT network starts)",
        "`sysctl -w net.ipv4.ip_forward=1` to have it on before",
    )


def check_accel(env: Env, run_probe: bool = True) -> HostCheck:
    """The KVM usability probe: KVM vs software emulation, measured."""
    usable, why = accel.kvm_device_usable()
    if not usable:
        return HostCheck("accelerator", WARN, f"TCG (software emulation): {why}")
    result = accel.cached_probe(env)
    if run_probe:
        try:
            from kvmlab.services.images import build_tiny_local

            tiny = build_tiny_local(env)
            result = accel.probe(env, tiny.kernel, tiny.initrd)
        except errors.KvmlabError as e:
            if result is None:
                return HostCheck("accelerator", WARN, f"could not run the KVM probe: {e.message}")
    if result is None:
        return HostCheck("accelerator", WARN, "KVM not probed yet", "run `kvmlab host check`")
    if result.recommended == "kvm":
        return HostCheck("accelerator", OK, f"KVM recommended: {result.reason}")
    return HostCheck(
        "accelerator",
        WARN,
        f"TCG (software emulation) recommended: {result.reason}",
        "kvmlab uses TCG for new machines here; `--accel kvm` overrides",
    )


def check(env: Env, run_probe: bool = True) -> list[HostCheck]:
    """Every readiness check, in the order a person would fix them."""
    return [
        check_cpu(),
        check_kvm_device(),
        check_accel(env, run_probe),
        check_qemu(),
        check_daemon(env),
        check_bridge_tun(),
        check_ip_forward(),
    ]


Runner = Callable[[list[str]], None]
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


def missing_debian_packages() -> list[str]:
    """The packages of :data:`DEBIAN_PACKAGES` that dpkg does not have installed."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *DEBIAN_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {
        line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed")
    }
    return [p for p in DEBIAN_PACKAGES if p not in installed]


def setup(env: Env, run: Runner = _run) -> list[str]:
    """Install the stack if missing and start the libvirt daemon. Returns what it did."""
    if os.geteuid() != 0:
        raise errors.HostNotReady("host setup installs packages and needs root", "run it as root")
    done: list[str] = []
    if shutil.which("apt-get"):
        missing = missing_debian_packages()
        if missing:
            env.progress(f"installing {' '.join(missing)}")
            run(["apt-get", "update", "-qq"])
            run(
                ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                 "--no-install-recommends", *missing]
            )  # fmt: skip
            done.append(f"installed {len(missing)} packages: {' '.join(missing)}")
    elif shutil.which("dnf"):
        run(["dnf", "install", "-y", *FEDORA_GROUPS, *FEDORA_PACKAGES])
        done.append("installed @virtualization")
    else:
        raise errors.HostNotReady(
            "no supported package manager (apt-get or dnf) found",
            "install QEMU and libvirt with your distribution's tools",
        )
    done += fix_kvm_permissions()
    done += start_daemon(run)
    return done


def fix_kvm_permissions() -> list[str]:
    """Give group kvm read-write access to /dev/kvm, as udev's rule does on a normal host.

    Without udev (containers, hosts without systemd) /dev/kvm stays root-only; QEMU, run by
    libvirt as libvirt-qemu, then cannot open it, libvirt's capability cache is never valid
    and every define re-probes QEMU for about a minute.
    """
    import grp

    if kvm_group_access() is not False:
        return []
    os.chown("/dev/kvm", 0, grp.getgrnam("kvm").gr_gid)
    os.chmod("/dev/kvm", 0o660)
    return ["gave group kvm read-write access to /dev/kvm (udev's rule had not run)"]


def _answers(sock: Path) -> bool:
    """Whether a unix socket accepts connections (a daemon is listening)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def start_daemon(run: Runner = _run) -> list[str]:
    """Start libvirtd (systemctl where systemd runs, else directly) unless one answers.

    "Running" means the daemon's socket answers, not that a process of that name exists: a
    libvirtd in another mount namespace does not serve this host's /run/libvirt.
    """
    if _answers(LIBVIRT_SOCK) or _answers(Path("/run/libvirt/virtqemud-sock")):
        return []
    if Path("/run/systemd/system").is_dir():
        run(["systemctl", "enable", "--now", "libvirtd"])
        _wait_for_socket(LIBVIRT_SOCK)
        return ["started libvirtd with systemctl"]
    done = []
    if not _answers(Path("/run/libvirt/virtlogd-sock")):
        run(["virtlogd", "-d"])
        done.append("started virtlogd")
    run(["libvirtd", "-d"])
    done.append("started libvirtd")
    _wait_for_socket(LIBVIRT_SOCK)
    return done


def _wait_for_socket(sock: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(sock):
        if time.monotonic() > deadline:
            raise errors.DaemonUnavailable(
                f"libvirtd started but {sock} did not appear within {timeout:.0f} s",
                hint="look at /var/log/libvirt/libvirtd.log",
            )
        time.sleep(0.1)
