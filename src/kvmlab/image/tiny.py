"""The built-in "tiny" image: a bootable qcow2 made from Debian packages, mounting nothing.

The disk (MBR, 1 GiB virtual, ~16 MiB as compressed qcow2):

* partition 1, FAT16 ``KVMLAB-BOOT``: syslinux, ``vmlinuz``, ``initrd.img``, ``syslinux.cfg``;
* partition 2, ext4 ``kvmlab-root``: the persistent root filesystem (busybox, qemu-ga and its
  libraries, ``/data``).

The kernel and its virtio modules come from ``linux-image-cloud-amd64``, busybox from
``busybox-static`` (both fetched with ``apt-get download`` into a cache, never installed), and
qemu-ga with its shared libraries from this host's ``qemu-guest-agent``. Every filesystem is
written into a plain file (``sfdisk``, ``mkfs.vfat --offset``, ``syslinux --offset``, mtools,
``mkfs.ext4 -d -E offset=``), so building needs no loop device, no mount and no root.

The guest side lives in ``tiny_init.sh`` (the initramfs ``/init``) and ``tiny_rc.sh`` (boot,
shutdown, DHCP hook, console, guest agent); their headers say what the console prints.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvmlab.errors import HostNotReady, KvmlabError

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
QEMU_GA = Path("/usr/sbin/qemu-ga")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# Load order matters for busybox insmod; dependencies found in the modules are added first.
GUEST_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "failover", "net_failover", "virtio_net", "virtio_blk", "virtio_console",
    "isofs", "button", "evdev",
)  # fmt: skip
KERNEL_CMDLINE = "console=tty0 console=ttyS0 quiet edd=off"
ROOT_LABEL = "kvmlab-root"
BOOT_LABEL = "KVMLAB-BOOT"
MIB = 1024 * 1024
DISK_SIZE = 1024 * MIB
BOOT_START = 1 * MIB
BOOT_SIZE = 64 * MIB
# Bump when the image's layout or contents change in a way the inputs below do not show.
BUILD_FORMAT = 1

ROOT_DIRS = (
    "bin", "sbin", "usr/bin", "usr/sbin", "usr/share/udhcpc", "etc/acpi/PWRF", "proc", "sys",
    "dev", "run", "tmp", "data", "root", "mnt", "var/log", "var/tmp",
)  # fmt: skip

IMAGE_NAME = "tiny.qcow2"
KERNEL_NAME = "tiny-vmlinuz"
INITRD_NAME = "tiny-initrd.img"
STAMP_NAME = "tiny.json"

# Host tool -> the Debian package that provides it.
TOOLS = {
    "apt-get": "apt", "dpkg-deb": "dpkg", "ldd": "libc-bin", "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools", "syslinux": "syslinux", "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils",
}  # fmt: skip
HOST_FILES = {QEMU_GA: "qemu-guest-agent", SYSLINUX_MBR: "syslinux-common"}
_SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)
_HERE = Path(__file__).resolve().parent
GUEST_SCRIPTS = (_HERE / "tiny_init.sh", _HERE / "tiny_rc.sh")

Progress = Callable[[str], None]


class ImageBuildError(KvmlabError):
    """Building the tiny image failed; the message says which step and what to do."""


@dataclass(frozen=True)
class TinyImage:
    """A built tiny image and the boot files inside it."""

    path: Path  # the built qcow2
    kernel: Path  # extracted vmlinuz (the host-readiness KVM probe boots it)
    initrd: Path  # the initramfs used in the image
    kernel_version: str


def ensure_tools() -> None:
    """Raise :class:`~kvmlab.errors.HostNotReady` naming any missing build tool and its package."""
    missing = {tool: pkg for tool, pkg in TOOLS.items() if _which(tool) is None}
    missing.update({str(p): pkg for p, pkg in HOST_FILES.items() if not p.is_file()})
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise HostNotReady(
            f"building the tiny image needs {', '.join(sorted(missing))}, missing on this host",
            hint=f"install them: `apt-get install {packages}`",
        )


def build_tiny_image(out_dir: Path, cache_dir: Path, progress: Progress | None = None) -> TinyImage:
    """Build (or reuse if already built and inputs unchanged) tiny.qcow2 in out_dir.

    Packages are downloaded into ``cache_dir`` once and reused (delete it to pick up newer
    packages). The result is rebuilt only when an input changed: the cached packages, this
    host's qemu-ga and libraries, or the guest scripts.
    """
    say = progress or (lambda _msg: None)
    ensure_tools()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir / ".tiny.lock"):
        kernel_deb = _fetch_kernel_deb(cache_dir, say)
        busybox_deb = _fetch_deb(BUSYBOX_PACKAGE, None, cache_dir, say)
        ga_files = _qemu_ga_files()
        fingerprint = _fingerprint([kernel_deb, busybox_deb], ga_files)
        kernel_tree = _unpack(kernel_deb, cache_dir, say)
        version = _kernel_version(kernel_tree)
        image = TinyImage(
            path=out_dir / IMAGE_NAME,
            kernel=out_dir / KERNEL_NAME,
            initrd=out_dir / INITRD_NAME,
            kernel_version=version,
        )
        if _stamp_matches(out_dir / STAMP_NAME, fingerprint, image):
            say(f"tiny image is up to date: {image.path}")
            return image
        busybox = _unpack(busybox_deb, cache_dir, say) / "bin" / "busybox"
        with tempfile.TemporaryDirectory(prefix=".tiny-build-", dir=out_dir) as tmp:
            _build(Path(tmp), image, kernel_tree, busybox, ga_files, say)
        (out_dir / STAMP_NAME).write_text(
            json.dumps({"fingerprint": fingerprint, "kernel_version": version}, indent=2) + "\n"
        )
        say(f"tiny image ready: {image.path} ({image.path.stat().st_size // 1024} KiB)")
        return image


# --- the build -------------------------------------------------------------------------------


def _build(
    tmp: Path,
    image: TinyImage,
    kernel_tree: Path,
    busybox: Path,
    ga_files: list[Path],
    say: Progress,
) -> None:
    """Make kernel, initrd and qcow2 in ``tmp``, then move them into place."""
    boot = tmp / "boot"
    boot.mkdir()
    shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{image.kernel_version}", boot / "vmlinuz")
    say("building the initramfs")
    modules = _guest_modules(kernel_tree / "lib" / "modules" / image.kernel_version)
    (boot / "initrd.img").write_bytes(_initramfs(busybox, modules))
    (boot / "syslinux.cfg").write_text(
        "DEFAULT tiny\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL tiny\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
    say("building the root filesystem")
    root = tmp / "root"
    _root_tree(root, busybox, ga_files)
    say("writing the disk")
    raw = tmp / "disk.raw"
    _write_disk(raw, boot, root)
    say("converting to qcow2")
    qcow2 = tmp / IMAGE_NAME
    _run([_tool("qemu-img"), "convert", "-c", "-O", "qcow2", str(raw), str(qcow2)], "qemu-img")
    os.replace(boot / "vmlinuz", image.kernel)
    os.replace(boot / "initrd.img", image.initrd)
    os.replace(qcow2, image.path)


def _write_disk(raw: Path, boot: Path, root: Path) -> None:
    """Partition ``raw`` and fill both filesystems without mounting them."""
    root_start = BOOT_START + BOOT_SIZE
    with raw.open("wb") as f:
        f.truncate(DISK_SIZE)
    layout = (
        "label: dos\nlabel-id: 0x6b766d6c\nunit: sectors\n\n"
        f"start={BOOT_START // 512}, size={BOOT_SIZE // 512}, type=e, bootable\n"
        f"start={root_start // 512}, type=83\n"
    )
    _run([_tool("sfdisk"), "--no-reread", "--no-tell-kernel", str(raw)], "sfdisk", stdin=layout)
    with raw.open("r+b") as f:  # the MBR boot code: the first 440 bytes, before the table
        f.write(SYSLINUX_MBR.read_bytes()[:440])
    _run([_tool("mkfs.vfat"), "-F", "16", "-n", BOOT_LABEL, "-i", "6b766d6c",
          f"--offset={BOOT_START // 512}", "-h", str(BOOT_START // 512),
          str(raw), str(BOOT_SIZE // 1024)], "mkfs.vfat")  # fmt: skip
    _run([_tool("syslinux"), "--offset", str(BOOT_START), "--install", str(raw)], "syslinux")
    files = [str(boot / name) for name in ("vmlinuz", "initrd.img", "syslinux.cfg")]
    _run(
        [_tool("mcopy"), "-i", f"{raw}@@{BOOT_START}", *files, "::/"],
        "mcopy",
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    _run([_tool("mkfs.ext4"), "-q", "-F", "-L", ROOT_LABEL, "-m", "0", "-d", str(root),
          "-E", f"offset={root_start},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
          str(raw), f"{(DISK_SIZE - root_start) // 1024}k"], "mkfs.ext4")  # fmt: skip


def _root_tree(root: Path, busybox: Path, ga_files: list[Path]) -> None:
    """Lay out the ext4 root filesystem in the directory ``root``."""
    for d in ROOT_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var" / "run").symlink_to("../run")
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in _busybox_applets(busybox):
        if "/" in applet and not (root / applet).exists():
            (root / applet).symlink_to("/bin/busybox")
    rc = root / "sbin" / "tiny-rc"
    rc.write_bytes(GUEST_SCRIPTS[1].read_bytes())
    rc.chmod(0o755)
    for alias in ("usr/share/udhcpc/default.script", "sbin/shutdown", "etc/acpi/PWRF/00000080"):
        (root / alias).symlink_to("/sbin/tiny-rc")
    for name, text in _ETC.items():
        (root / "etc" / name).write_text(text)
    (root / "etc" / "shadow").chmod(0o600)
    for src in ga_files:
        dest = root / src.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)  # follows symlinks: the name ld.so looks up gets the bytes
        dest.chmod(0o755)


_ETC = {  # small files of the root filesystem's /etc
    "inittab": "::sysinit:/sbin/tiny-rc boot\nttyS0::respawn:/sbin/tiny-rc console\n"
    "tty1::respawn:/sbin/tiny-rc console\n::respawn:/sbin/tiny-rc agent\n"
    "::ctrlaltdel:/sbin/reboot\n::shutdown:/sbin/tiny-rc stop\n::restart:/sbin/init\n",
    "acpid.conf": "PWRF PWRF/00000080\n",
    "profile": "export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root\nPS1='\\u@\\h:\\w\\$ '\n",
    "passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "group": "root:x:0:\ntty:x:5:\n",
    "shadow": "root:*:19000:0:99999:7:::\n",
    "hostname": "tiny\n",
    "hosts": "127.0.0.1\tlocalhost\n",
    "resolv.conf": "",
    "os-release": 'NAME="kvmlab tiny"\nID=kvmlab-tiny\nPRETTY_NAME="kvmlab tiny (busybox)"\n',
}


def _busybox_applets(busybox: Path) -> list[str]:
    """Where busybox wants its applets (``bin/ls``, ``sbin/init``, ...)."""
    return _run([str(busybox), "--list-full"], "busybox --list-full").split()


# --- the initramfs ---------------------------------------------------------------------------


def _initramfs(busybox: Path, modules: list[tuple[str, bytes]]) -> bytes:
    """A gzip'd newc cpio: busybox, the modules in load order, and tiny_init.sh as /init."""
    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "run", "sys", "tmp"):
        cpio.add(d, 0o040755)
    cpio.add("dev/console", 0o020600, rdev=(5, 1))
    cpio.add("dev/null", 0o020666, rdev=(1, 3))
    cpio.add("bin/busybox", 0o100755, busybox.read_bytes())
    cpio.add("init", 0o100755, GUEST_SCRIPTS[0].read_bytes())
    for name, data in modules:
        cpio.add(f"lib/modules/{name}.ko", 0o100644, data)
    order = "".join(f"{name}\n" for name, _ in modules)
    cpio.add("etc/modules", 0o100644, order.encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


class _Cpio:
    """Writes the "newc" cpio format the kernel unpacks (device nodes need no privileges)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ino = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        """Append one entry; ``mode`` includes the file type bits."""
        self._ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self._buf += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + encoded
        self._pad()
        self._buf += data
        self._pad()

    def finish(self) -> bytes:
        """The archive with its trailer."""
        self.add("TRAILER!!!", 0)
        return bytes(self._buf)

    def _pad(self) -> None:
        self._buf += b"\0" * (-len(self._buf) % 4)


# --- kernel modules --------------------------------------------------------------------------


def _guest_modules(moddir: Path) -> list[tuple[str, bytes]]:
    """GUEST_MODULES and their dependencies as (name, bytes), dependencies first."""
    index: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        index[path.name.split(".ko")[0].replace("-", "_")] = path
    builtin_file = moddir / "modules.builtin"
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (builtin_file.read_text().split() if builtin_file.exists() else [])
    }
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise ImageBuildError(
                f"kernel module {name} is not in {moddir}",
                hint=f"the {KERNEL_PACKAGE} package changed; report this to kvmlab",
            )
        data = _module_bytes(index[name])
        for dep in _modinfo_depends(data, name):
            visit(dep)
        ordered.append((name, data))

    for module in GUEST_MODULES:
        visit(module)
    return ordered


def _module_bytes(path: Path) -> bytes:
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    raise ImageBuildError(
        f"cannot read the compressed kernel module {path}",
        hint="only uncompressed and .xz modules are supported",
    )


def _modinfo_depends(elf: bytes, name: str) -> list[str]:
    """The ``depends=`` entry of a module's ``.modinfo`` ELF section."""
    if elf[:5] != b"\x7fELF\x02":
        raise ImageBuildError(
            f"kernel module {name} is not a 64-bit ELF file",
            hint="delete the package cache and build again",
        )
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name_at,) = struct.unpack_from("<I", elf, base)
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name_at, offset, size

    strtab = section(shstrndx)[1]
    for i in range(shnum):
        name_at, offset, size = section(i)
        start = strtab + name_at
        if elf[start : elf.index(b"\0", start)] == b".modinfo":
            for entry in elf[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[len(b"depends=") :].decode().split(",") if d]
            return []
    return []


# --- inputs: packages and host files ---------------------------------------------------------


def _fetch_kernel_deb(cache_dir: Path, say: Progress) -> Path:
    """The versioned kernel package the ``linux-image-cloud-amd64`` metapackage points at."""
    meta = _fetch_deb(KERNEL_PACKAGE, None, cache_dir, say)
    depends = _run([_tool("dpkg-deb"), "-f", str(meta), "Depends"], "dpkg-deb -f")
    for alternative in depends.replace("|", ",").split(","):
        parts = alternative.split()
        if parts and parts[0].startswith("linux-image-"):
            version = None
            if len(parts) >= 3 and parts[1] == "(=":
                version = parts[2].rstrip(")")
            return _fetch_deb(parts[0], version, cache_dir, say)
    raise ImageBuildError(
        f"{meta.name} depends on no linux-image package ({depends.strip()!r})",
        hint=f"delete {meta} and build again",
    )


def _fetch_deb(package: str, version: str | None, cache_dir: Path, say: Progress) -> Path:
    """``package``'s .deb from ``cache_dir``, downloaded with ``apt-get download`` if absent."""
    cached = sorted(cache_dir.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if cached:
        return cached[-1]
    say(f"downloading {package}")
    spec = f"{package}={version}" if version else package
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        _run(
            [_tool("apt-get"), "download", "--", spec],
            f"downloading {package}",
            cwd=Path(tmp),
            hint="apt must reach a Debian mirror: run `apt-get update`, check the network, "
            f"or put a {package}_*.deb into {cache_dir}",
        )
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not got:
            raise ImageBuildError(
                f"apt-get download {spec} produced no .deb",
                hint="run `apt-get update` and try again",
            )
        return Path(shutil.move(got[0], cache_dir / got[0].name))


def _unpack(deb: Path, cache_dir: Path, say: Progress) -> Path:
    """``deb`` extracted (``dpkg-deb -x``) under ``cache_dir/unpacked``, once."""
    dest = cache_dir / "unpacked" / deb.name.removesuffix(".deb")
    if (dest / ".complete").exists():
        return dest
    say(f"unpacking {deb.name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        _run(
            [_tool("dpkg-deb"), "-x", str(deb), str(tmp)],
            f"unpacking {deb.name}",
            hint=f"the download may be damaged: delete {deb} and build again",
        )
        (tmp / ".complete").touch()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _kernel_version(tree: Path) -> str:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels or not (tree / "lib" / "modules").is_dir():
        raise ImageBuildError(
            f"no kernel and modules in {tree}", hint=f"delete {tree.parent} and build again"
        )
    return kernels[-1].name.removeprefix("vmlinuz-")


def _qemu_ga_files() -> list[Path]:
    """qemu-ga, the shared libraries ``ldd`` lists for it, and its ELF interpreter."""
    out = _run([_tool("ldd"), str(QEMU_GA)], "ldd qemu-ga")
    files = [QEMU_GA]
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target.startswith("/"):
                files.append(Path(target))
            elif target == "not":
                raise ImageBuildError(
                    f"qemu-ga needs a missing library: {line.strip()}",
                    hint="reinstall qemu-guest-agent",
                )
        elif words and words[0].startswith("/"):
            files.append(Path(words[0]))  # the interpreter, e.g. /lib64/ld-linux-x86-64.so.2
    return files


def _fingerprint(debs: list[Path], ga_files: list[Path]) -> str:
    h = hashlib.sha256()
    settings = [BUILD_FORMAT, GUEST_MODULES, KERNEL_CMDLINE, DISK_SIZE, BOOT_SIZE, _ETC]
    h.update(json.dumps(settings, sort_keys=True).encode())
    for deb in debs:
        h.update(deb.name.encode() + b"\0")
    for path in [*ga_files, *GUEST_SCRIPTS]:
        h.update(str(path).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _stamp_matches(stamp: Path, fingerprint: str, image: TinyImage) -> bool:
    try:
        recorded = json.loads(stamp.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return False
    outputs = (image.path, image.kernel, image.initrd)
    return bool(recorded == fingerprint and all(p.is_file() for p in outputs))


# --- helpers ---------------------------------------------------------------------------------


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_SBIN_PATH)


def _tool(tool: str) -> str:
    path = _which(tool)
    if path is None:
        ensure_tools()  # raises with the package to install
        raise ImageBuildError(f"{tool} not found", hint=f"install {TOOLS.get(tool, tool)}")
    return path


def _run(
    argv: list[str],
    what: str,
    *,
    cwd: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    hint: str | None = None,
) -> str:
    """Run ``argv``; its stdout, or :class:`ImageBuildError` quoting its stderr."""
    try:
        proc = subprocess.run(
            argv, cwd=cwd, input=stdin, env=env, capture_output=True, text=True, check=False
        )
    except OSError as e:
        hint = hint or "check that the tool is installed"
        raise ImageBuildError(f"{what}: cannot run {argv[0]}: {e.strerror}", hint=hint) from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(
            f"{what} failed (exit {proc.returncode}): {' / '.join(detail)}",
            hint=hint or "check free space and permissions where the image is built, then retry",
        )
    return proc.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so concurrent builds take turns."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
