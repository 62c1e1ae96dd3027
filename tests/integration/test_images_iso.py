"""Images on a real libvirtd: pull from a local HTTP server, import, remove; install media.

* A gzip-compressed raw disk is pulled from an http.server on 127.0.0.1 (started here) with
  a SHA256SUMS file, converted to qcow2 and uploaded through libvirt.
* ``kvmlab image pull`` run as a local client (in the sandbox's mount namespace) stores the
  verified download in the volume's own file instead of uploading it: moved when the cache is
  on the pool's mount, copied when not; both keep libvirt's mode and owner.
* An ISO built here with pycdlib and ISOLINUX (El Torito) holding the tiny image's kernel
  and initramfs boots a machine with an empty disk from the CD to the initramfs shell.
* The same kernel and initramfs imported as image-pool volumes boot a machine directly.
* An image is refused removal while a machine depends on it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.libvirt import build
from kvmlab.services import images, imagestore, machines, pull
from kvmlab.services.storage import IMAGE_POOL, ensure_pools
from kvmlab.specs import Accel, MachineSpec
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
SHELL_MARK = b"kvmlab-tiny: rescue shell"
KVMLAB = Path(sys.executable).parent / "kvmlab"


@pytest.fixture()
def env(sandbox, tmp_path: Path, test_cache: Path) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    e = Env(
        uri=sandbox.uri, state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
        accel=Accel.TCG,
    )  # fmt: skip
    yield e
    e.close()


@pytest.fixture()
def tiny(test_cache: Path):  # type: ignore[no-untyped-def]
    from kvmlab.image.tiny import build_tiny_image

    return build_tiny_image(test_cache / "build", test_cache / "debs")


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_pull_raw_gz_with_checksums_then_rm(env: Env, web: tuple[str, Path]) -> None:
    base, root = web
    disk = bytearray(4 * 1024 * 1024)
    disk[510:512] = b"\x55\xaa"
    disk[1 << 20 : (1 << 20) + 12] = b"kvmlab-proof"
    packed = gzip.compress(bytes(disk))
    (root / "disk.img.gz").write_bytes(packed)
    (root / "SHA256SUMS").write_text(f"{hashlib.sha256(packed).hexdigest()}  disk.img.gz\n")
    seen: list[int] = []

    vol = pull.pull_image(
        env, f"{base}/disk.img.gz", name="t-pulled", checksums_url=f"{base}/SHA256SUMS",
        progress=lambda done, _total: seen.append(done),
    )  # fmt: skip
    try:
        assert (vol.format, vol.capacity) == ("qcow2", 4 * 1024 * 1024)
        assert seen[-1] == len(packed)
        assert "t-pulled" in [v.name for v in images.list_images(env)]
        assert list((env.cache_dir / "downloads").iterdir()) == []  # nothing left behind
        with pytest.raises(errors.AlreadyExists):
            pull.pull_image(env, f"{base}/disk.img.gz", name="t-pulled")
        notes = root / "notes.txt"
        notes.write_text("not a disk\n" * 100)
        with pytest.raises(errors.InvalidInput, match="not a disk image"):
            imagestore.import_image(env, notes, "t-notes")
        assert not env.hypervisor.has_volume(IMAGE_POOL, "t-notes")
    finally:
        images.remove_image(env, "t-pulled")
    assert not env.hypervisor.has_volume(IMAGE_POOL, "t-pulled")


def test_a_daemon_in_another_mount_namespace_is_not_local(env: Env) -> None:
    """This process does not see the sandbox daemon's files: pulls upload over the stream."""
    ensure_pools(env)
    env.hypervisor.create_volume(IMAGE_POOL, build.raw_volume("t-remote", 4096))
    try:
        assert env.hypervisor.local_volume_path(IMAGE_POOL, "t-remote") is None
    finally:
        env.hypervisor.delete_volume(IMAGE_POOL, "t-remote")


def _qcow2(size: int, tag: bytes) -> bytes:
    """A small qcow2 image whose data starts with ``tag`` (made with qemu-img)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "r.raw", Path(tmp) / "r.qcow2"
        raw.write_bytes(tag + os.urandom(size - len(tag)))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
                       check=True)  # fmt: skip
        return out.read_bytes()


@pytest.mark.parametrize("cache_on_pool_mount", [True, False], ids=["moved", "copied"])
def test_local_pull_stores_the_download_without_an_upload(
    sandbox: Sandbox, env: Env, web: tuple[str, Path], tmp_path: Path, cache_on_pool_mount: bool
) -> None:
    base, root = web
    data = _qcow2(3 * 1024 * 1024, b"kvmlab-local")
    (root / "l.qcow2").write_bytes(data)
    # The sandbox's /var/lib/libvirt is one bind mount: a cache there is on the pool's mount
    # (a rename); /tmp is another mount of the same file system (rename fails: a copy).
    cache = "/var/lib/libvirt/kvmlab-test-cache" if cache_on_pool_mount else str(tmp_path / "c")
    argv = [str(KVMLAB), "-c", sandbox.INSIDE_URI, "image", "pull", f"{base}/l.qcow2",
            "--sha256", hashlib.sha256(data).hexdigest(), "--name", "t-local"]  # fmt: skip
    result = sandbox.run_in_mountns(
        argv, capture_output=True, text=True, env={**os.environ, "KVMLAB_CACHE_DIR": cache}
    )
    assert result.returncode == 0, result.stderr
    try:
        assert "(local daemon: no upload)" in result.stderr
        assert "uploading" not in result.stderr
        assert result.stdout.strip() == "pulled image t-local: qcow2 3M"
        vol = env.hypervisor.volume(IMAGE_POOL, "t-local")
        assert vol.format == "qcow2"
        stored = sandbox.host_path(vol.path)
        assert stored.read_bytes() == data
        # mode and owner as libvirt gives its new volumes
        env.hypervisor.create_volume(IMAGE_POOL, build.raw_volume("t-fresh", 4096))
        fresh = sandbox.host_path(env.hypervisor.volume(IMAGE_POOL, "t-fresh").path).stat()
        got = stored.stat()
        assert (stat.S_IMODE(got.st_mode), got.st_uid, got.st_gid) == (
            stat.S_IMODE(fresh.st_mode), fresh.st_uid, fresh.st_gid
        )
        downloads = sandbox.host_path(cache + "/downloads")
        assert [p.name for p in downloads.iterdir()] == []  # nothing left behind
    finally:
        images.remove_image(env, "t-local")
        env.hypervisor.delete_volume(IMAGE_POOL, "t-fresh")
        subprocess.run(["rm", "-rf", str(sandbox.host_path(cache))], check=True)


def _boot_iso(path: Path, kernel: Path, initrd: Path, cmdline: str) -> None:
    """An El Torito ISO: ISOLINUX loads the kernel and initramfs from the CD."""
    import pycdlib

    cfg = (f"SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 1\nLABEL linux\n"
           f"  KERNEL /vmlinuz\n  APPEND initrd=/initrd.img {cmdline}\n").encode()  # fmt: skip
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="KVMLAB_TEST")
    iso.add_directory("/ISOLINUX", rr_name="isolinux")
    iso.add_file(str(ISOLINUX_BIN), "/ISOLINUX/ISOLINUX.BIN;1", rr_name="isolinux.bin")
    iso.add_file(str(LDLINUX_C32), "/ISOLINUX/LDLINUX.C32;1", rr_name="ldlinux.c32")
    iso.add_fp(io.BytesIO(cfg), len(cfg), "/ISOLINUX/ISOLINUX.CFG;1", rr_name="isolinux.cfg")
    iso.add_file(str(kernel), "/VMLINUZ.;1", rr_name="vmlinuz")
    iso.add_file(str(initrd), "/INITRD.IMG;1", rr_name="initrd.img")
    iso.add_eltorito(
        "/ISOLINUX/ISOLINUX.BIN;1", "/ISOLINUX/BOOT.CAT;1",
        boot_load_size=4, boot_info_table=True, media_name="noemul",
    )  # fmt: skip
    iso.write(str(path))
    iso.close()


def _wait_for_console(log: Path, mark: bytes, timeout: float = 120) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_bytes() if log.exists() else b""
        if mark in text:
            return text
        assert time.monotonic() < deadline, f"no {mark!r} on the console:\n{text[-3000:]!r}"
        time.sleep(0.5)


def _cleanup(env: Env, *machine_names: str) -> None:
    for name in machine_names:
        if env.hypervisor.has_machine(name):
            machines.delete(env, name, force=True)


@pytest.mark.skipif(not ISOLINUX_BIN.is_file(), reason="needs apt package isolinux")
def test_machine_boots_an_iso_from_cdrom(env: Env, sandbox, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    iso = tmp_path / "rescue.iso"
    _boot_iso(iso, tiny.kernel, tiny.initrd, "console=ttyS0 kvmlab.shell")
    vol = imagestore.import_image(env, iso, "t-rescue-iso")
    assert vol.format in ("iso", "raw")
    log = "/var/log/libvirt/qemu/t-iso-console.log"
    spec = MachineSpec(
        name="t-iso", image="t-rescue-iso", cdrom="t-rescue-iso", disk_size=64 * 1024**2
    )
    try:
        m = machines.create(env, spec, start=True, console_log=log)
        assert m.image == "t-rescue-iso"
        xml = env.hypervisor.domain_xml("t-iso")
        assert xml.boot_devices == ["cdrom", "hd"]
        disk = env.hypervisor.volume("kvmlab", "t-iso.qcow2")
        assert (disk.capacity, disk.backing) == (64 * 1024**2, None)  # empty, not an overlay
        text = _wait_for_console(sandbox.host_path(log), SHELL_MARK)
        assert b"kvmlab.shell given" in text
        # the ISO is in use: removing it is refused and names the machine
        with pytest.raises(errors.HasDependents, match="t-iso"):
            images.remove_image(env, "t-rescue-iso")
    finally:
        _cleanup(env, "t-iso")
        images.remove_image(env, "t-rescue-iso")


def test_direct_kernel_boot_from_pool_volumes(env: Env, sandbox, tiny) -> None:  # type: ignore[no-untyped-def]
    images.build_tiny(env)
    imagestore.import_image(env, tiny.kernel, "t-vmlinuz", as_is=True)
    imagestore.import_image(env, tiny.initrd, "t-initrd", as_is=True)
    log = "/var/log/libvirt/qemu/t-kernel-console.log"
    spec = MachineSpec(
        name="t-kernel", image="tiny", kernel="t-vmlinuz", initrd="t-initrd",
        cmdline="console=ttyS0 kvmlab.shell",
    )  # fmt: skip
    try:
        machines.create(env, spec, start=True, console_log=log)
        xml = env.hypervisor.domain_xml("t-kernel")
        assert xml.kernel == env.hypervisor.volume(IMAGE_POOL, "t-vmlinuz").path
        assert xml.cmdline == "console=ttyS0 kvmlab.shell"
        _wait_for_console(sandbox.host_path(log), SHELL_MARK)
    finally:
        _cleanup(env, "t-kernel")
        for name in ("t-vmlinuz", "t-initrd"):
            images.remove_image(env, name)
