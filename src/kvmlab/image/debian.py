"""A Debian cloud-style image built with mmdebstrap: systemd, cloud-init, sshd, guest agent.

``mmdebstrap`` (debootstrap's successor; it resolves and orders packages with apt, where
``debootstrap --include=cloud-init`` failed configuring python3-cryptography) fills a
directory (it needs root and the Debian mirror); the disk is then laid
out exactly like the tiny image (:func:`kvmlab.image.tiny._write_disk`: MBR, FAT boot
partition with SYSLINUX, ext4 root filled with ``mkfs.ext4 -d``), so nothing is mounted
and no loop device is used. cloud-init reads the NoCloud seed kvmlab attaches, so
``vm create --user/--ssh-key/--packages`` work on it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kvmlab import errors

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools", "ifupdown",
    "isc-dhcp-client", "openssh-server", "qemu-guest-agent", "cloud-init", "sudo",
)  # fmt: skip
IMAGE_NAME = "debian.qcow2"
STAMP_NAME = "debian.json"
BUILD_FORMAT = 1
# net.ifnames=0: the first NIC is eth0 whatever PCI slot libvirt gives it.
KERNEL_CMDLINE = "root=LABEL=kvmlab-root ro console=tty0 console=ttyS0 net.ifnames=0"
CLOUD_CFG = """\
# kvmlab: only the NoCloud seed kvmlab attaches (no network metadata probing at boot)
datasource_list: [ NoCloud, None ]
"""

Progress = Callable[[str], None]


def build_debian_image(
    out_dir: Path, progress: Progress | None = None, mirror: str = MIRROR
) -> Path:
    """Build (or reuse, when built with the same settings) ``out_dir/debian.qcow2``."""
    from kvmlab.image.tiny import _locked

    say = progress or (lambda _msg: None)
    mmdebstrap = shutil.which("mmdebstrap", path=_PATH)
    if mmdebstrap is None:
        raise errors.HostNotReady("building the Debian image needs mmdebstrap",
                                  hint="apt install mmdebstrap")  # fmt: skip
    if os.geteuid() != 0:
        raise errors.HostNotReady("building the Debian image needs root", hint="run as root")
    out_dir.mkdir(parents=True, exist_ok=True)
    image, stamp = out_dir / IMAGE_NAME, out_dir / STAMP_NAME
    wanted = {"format": BUILD_FORMAT, "suite": SUITE, "packages": list(PACKAGES)}
    with _locked(out_dir / ".debian.lock"):
        if image.is_file() and _read_json(stamp) == wanted:
            return image
        with tempfile.TemporaryDirectory(dir=out_dir, prefix="debian-build-") as tmp:
            _build(Path(tmp), mmdebstrap, mirror, say)
            os.replace(Path(tmp) / IMAGE_NAME, image)
        stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    say(f"Debian image ready: {image} ({image.stat().st_size // 1024 // 1024} MiB)")
    return image


_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin", os.environ.get("PATH", "")])


def _build(tmp: Path, mmdebstrap: str, mirror: str, say: Progress) -> None:
    from kvmlab.image.tiny import _run, _tool, _write_disk

    root = tmp / "root"
    say(f"mmdebstrap {SUITE} from {mirror} (a few minutes)")
    _run([mmdebstrap, "--mode=root", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          SUITE, str(root), mirror],
         "mmdebstrap", env={**os.environ, "PATH": _PATH})  # fmt: skip
    _configure(root)
    boot = tmp / "boot"
    boot.mkdir()
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise errors.OperationFailed("debootstrap left no kernel or initramfs in /boot")
    shutil.copyfile(kernels[-1], boot / "vmlinuz")
    shutil.copyfile(initrds[-1], boot / "initrd.img")
    (boot / "syslinux.cfg").write_text(
        "DEFAULT debian\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL debian\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
    say("writing the disk")
    raw = tmp / "disk.raw"
    _write_disk(raw, boot, root)
    say("converting to qcow2")
    _run([_tool("qemu-img"), "convert", "-c", "-O", "qcow2", str(raw), str(tmp / IMAGE_NAME)],
         "qemu-img")  # fmt: skip


def _configure(root: Path) -> None:
    """Files a booting cloud image needs; per-machine identity is left for first boot."""
    (root / "etc" / "fstab").write_text("LABEL=kvmlab-root / ext4 errors=remount-ro 0 1\n")
    (root / "etc" / "hostname").write_text("debian\n")
    (root / "etc" / "network" / "interfaces").write_text(
        "auto lo\niface lo inet loopback\n\n"
        "# cloud-init writes the NICs into interfaces.d (DHCP on eth0 by default)\n"
        "source /etc/network/interfaces.d/*\n"
    )
    (root / "etc" / "cloud" / "cloud.cfg.d" / "90-kvmlab.cfg").write_text(CLOUD_CFG)
    # a fresh machine-id and SSH host keys per machine (systemd and cloud-init make them)
    (root / "etc" / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
