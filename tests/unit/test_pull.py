"""Downloading and importing images, against a local HTTP server on 127.0.0.1.

The server (http.server in a thread) serves bytes from a dict, honours ``Range: bytes=N-``,
answers 404 for unknown paths, and can close the connection part-way through a response.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import mmap
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.services import catalog, imageformat, imagestore, pull
from kvmlab.services.storage import IMAGE_POOL

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"


class FileServer:
    """What the handler serves, and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> close after this many bytes, once
        self.ranges: list[str | None] = []
        self.base = ""


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            data = state.files.get(self.path)
            rng = self.headers.get("Range")
            state.ranges.append(rng)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut_after.pop(self.path, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    pytest.importorskip("libvirt")
    e = Env(uri=f"test://{NODE}", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    yield e
    e.close()


PAYLOAD = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MiB, not a multiple of the chunk size


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_sha256_and_reports_progress(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server.files["/img.qcow2"] = PAYLOAD
    calls: list[tuple[int, int | None]] = []
    path = pull.download(
        server.base + "/img.qcow2",
        tmp_path,
        checksum=pull.Checksum.from_hex(_sha256(PAYLOAD)),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert path.read_bytes() == PAYLOAD
    assert path.name.endswith("-img.qcow2")
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(calls) > 2


def test_checksum_mismatch_leaves_nothing(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server.files["/img.qcow2"] = PAYLOAD
    with pytest.raises(pull.ChecksumMismatch, match="expected 0000"):
        pull.download(
            server.base + "/img.qcow2", tmp_path, checksum=pull.Checksum("sha256", "0" * 64)
        )
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_says_resumable_then_resumes_with_range(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = server.base + "/big.img"
    server.files["/big.img"] = PAYLOAD
    server.cut_after["/big.img"] = 1_000_000
    checksum = pull.Checksum.from_hex(_sha256(PAYLOAD))
    with pytest.raises(pull.DownloadInterrupted) as info:
        pull.download(url, tmp_path, checksum=checksum)
    assert "run the same command again to resume" in str(info.value)
    part = pull.partial_path(url, tmp_path)
    assert 0 < part.stat().st_size < len(PAYLOAD)
    kept = part.stat().st_size

    path = pull.download(url, tmp_path, checksum=checksum)
    assert server.ranges[-1] == f"bytes={kept}-"
    assert _sha256(path.read_bytes()) == _sha256(PAYLOAD)
    assert not part.exists()


def test_checksum_in_steps_and_windows_across_a_resume(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small steps and windows (not page multiples) so a 3 MiB download is hashed in many
    # mappings, and the resumed file's first bytes (cut at an odd offset) in several windows.
    monkeypatch.setattr(pull._FileHasher, "STEP", 100_003)
    monkeypatch.setattr(pull._FileHasher, "WINDOW", 150_001)
    url = server.base + "/steps.img"
    server.files["/steps.img"] = PAYLOAD
    server.cut_after["/steps.img"] = 1_000_001
    checksum = pull.Checksum.from_hex(_sha256(PAYLOAD))
    with pytest.raises(pull.DownloadInterrupted):
        pull.download(url, tmp_path, checksum=checksum)
    path = pull.download(url, tmp_path, checksum=checksum)  # ChecksumMismatch if mis-hashed
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(pull.ChecksumMismatch):
        pull.download(url, tmp_path / "again", checksum=pull.Checksum.from_hex(_sha256(b"x")))


def test_checksum_of_a_file_that_cannot_be_mapped(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(19, "No such device")  # ENODEV: a file system without mmap

    monkeypatch.setattr(mmap, "mmap", refuse)
    server.files["/nommap.img"] = PAYLOAD
    path = pull.download(
        server.base + "/nommap.img", tmp_path, checksum=pull.Checksum.from_hex(_sha256(PAYLOAD))
    )
    assert path.read_bytes() == PAYLOAD


def test_resume_of_a_complete_partial_file(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = server.base + "/done.img"
    server.files["/done.img"] = PAYLOAD
    pull.partial_path(url, tmp_path).write_bytes(PAYLOAD)  # interrupted right at the end
    path = pull.download(url, tmp_path, checksum=pull.Checksum.from_hex(_sha256(PAYLOAD)))
    assert path.read_bytes() == PAYLOAD


def test_404_is_a_clear_error(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pull.DownloadFailed, match=r"HTTP 404") as info:
        pull.download(server.base + "/missing.qcow2", tmp_path)
    assert "check the URL" in str(info.value)
    assert not pull.partial_path(server.base + "/missing.qcow2", tmp_path).exists()


def test_unreachable_server_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pull.DownloadFailed, match="cannot download"):
        pull.download("http://127.0.0.1:9/x.img", tmp_path, timeout=2)


def test_checksum_file_formats() -> None:
    digest = "ab" * 32
    text = f"# comment\n{'cd' * 32}  other.img\n{digest} *wanted.img\n"
    assert pull.parse_checksums(text, "wanted.img") == pull.Checksum("sha256", digest)
    bsd = f"SHA512 (wanted.img) = {'ef' * 64}\n"
    assert pull.parse_checksums(bsd, "wanted.img").algorithm == "sha512"
    with pytest.raises(errors.NotFound, match=r"no line for 'absent\.img'"):
        pull.parse_checksums(text, "absent.img")
    with pytest.raises(errors.InvalidInput, match="not a SHA-256"):
        pull.Checksum.from_hex("xyz")


def test_checksums_url_is_fetched_and_used(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server.files["/SHA512SUMS"] = (
        f"{hashlib.sha512(PAYLOAD).hexdigest()}  img.qcow2\n".encode()
    )
    checksum = pull.fetch_checksum(server.base + "/SHA512SUMS", "img.qcow2")
    assert checksum.algorithm == "sha512"
    server.files["/img.qcow2"] = PAYLOAD
    assert pull.download(server.base + "/img.qcow2", tmp_path, checksum=checksum).exists()


# -- formats ---------------------------------------------------------------------------------
def _raw_disk(path: Path) -> Path:
    data = bytearray(1024 * 1024)
    data[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(data))
    return path


def test_formats_are_detected_from_magic_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "q").write_bytes(b"QFI\xfb" + bytes(100))
    assert imageformat.detect_format(tmp_path / "q") == "qcow2"
    iso = bytearray(40000)
    iso[32769:32774] = b"CD001"
    (tmp_path / "i").write_bytes(bytes(iso))
    assert imageformat.detect_format(tmp_path / "i") == "iso"
    assert imageformat.detect_format(_raw_disk(tmp_path / "r")) == "raw"
    (tmp_path / "t").write_text("<html>Not found</html>\n" * 100)
    with pytest.raises(errors.InvalidInput, match="t is not a disk image"):
        imageformat.detect_format(tmp_path / "t")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_compressed_raw_disk_becomes_qcow2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = _raw_disk(tmp_path / "disk.img")
    packed = tmp_path / "disk.img.gz"
    packed.write_bytes(gzip.compress(raw.read_bytes()))
    work = tmp_path / "work"
    work.mkdir()
    out, fmt = imageformat.prepare(packed, work)
    assert fmt == "qcow2"
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", "--", str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert '"format": "qcow2"' in info and '"virtual-size": 1048576' in info


def test_xz_qcow2_is_unpacked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    q = b"QFI\xfb" + bytes(5000)
    (tmp_path / "a.qcow2.xz").write_bytes(lzma.compress(q))
    out, fmt = imageformat.prepare(tmp_path / "a.qcow2.xz", tmp_path)
    assert fmt == "qcow2" and out.read_bytes() == q


def test_default_names() -> None:
    assert imagestore.default_name("https://x/y/debian-12-genericcloud-amd64.qcow2") == (
        "debian-12-genericcloud-amd64"
    )
    assert imagestore.default_name("/tmp/disk.img.xz") == "disk"
    assert imagestore.default_name("https://x/noble-server-cloudimg-amd64.img") == (
        "noble-server-cloudimg-amd64"
    )


# -- services on the test driver ------------------------------------------------------------
def test_text_file_is_refused_and_no_volume_is_made(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 1000)
    with pytest.raises(errors.InvalidInput, match="not a disk image"):
        imagestore.import_image(env, text, "notes")
    assert not env.hypervisor.has_volume(IMAGE_POOL, "notes")


def test_pull_mismatch_leaves_no_volume_and_no_file(env, server) -> None:  # type: ignore[no-untyped-def]
    server.files["/img.qcow2"] = PAYLOAD
    with pytest.raises(pull.ChecksumMismatch):
        pull.pull_image(env, server.base + "/img.qcow2", sha256="1" * 64)
    assert not env.hypervisor.has_volume(IMAGE_POOL, "img")
    assert list((env.cache_dir / "downloads").iterdir()) == []


def test_pull_refuses_a_taken_name_and_keeps_nothing(env, server) -> None:  # type: ignore[no-untyped-def]
    # the name is checked beside the download (libvirt's import and connection take ~45 ms),
    # which it stops: nothing of it stays
    server.files["/img.qcow2"] = PAYLOAD
    before = env.hypervisor.volume(IMAGE_POOL, "tiny")
    with pytest.raises(errors.AlreadyExists, match="'tiny' exists already"):
        pull.pull_image(env, server.base + "/img.qcow2", name="tiny")
    assert list((env.cache_dir / "downloads").iterdir()) == []
    assert env.hypervisor.volume(IMAGE_POOL, "tiny") == before


def test_cancel_stops_a_download_and_removes_only_what_it_wrote(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = server.base + "/big.img"
    server.files["/big.img"] = PAYLOAD
    cancel = threading.Event()

    def stop_after_first_chunk(done: int, _total: int | None) -> None:
        if done:
            cancel.set()

    with pytest.raises(pull.DownloadCancelled):
        pull.download(url, tmp_path, progress=stop_after_first_chunk, cancel=cancel)
    assert list(tmp_path.iterdir()) == []  # neither the partial file nor the lock

    # a resumed partial file keeps what it had before this call
    part = pull.partial_path(url, tmp_path)
    part.write_bytes(PAYLOAD[:1000])
    cancel.clear()
    with pytest.raises(pull.DownloadCancelled):
        pull.download(url, tmp_path, progress=stop_after_first_chunk, cancel=cancel)
    assert part.read_bytes() == PAYLOAD[:1000]
    assert server.ranges[-1] == "bytes=1000-"


def test_unknown_catalogue_name_lists_the_catalogue(env) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.ImageNotFound) as info:
        pull.pull_image(env, "plan9")
    for entry in catalog.list_catalog():
        assert entry.name in str(info.value)


def test_failed_upload_leaves_no_volume_and_no_file(env, server) -> None:  # type: ignore[no-untyped-def]
    # the test driver has no volume upload: the import fails after the volume was made
    server.files["/disk.qcow2"] = b"QFI\xfb" + bytes(70000)
    with pytest.raises(errors.KvmlabError, match="not supported"):
        pull.pull_image(env, server.base + "/disk.qcow2", sha256=_sha256(b"QFI\xfb" + bytes(70000)))
    assert not env.hypervisor.has_volume(IMAGE_POOL, "disk")
    assert list((env.cache_dir / "downloads").iterdir()) == []


def test_a_url_being_downloaded_is_busy_and_no_lock_file_stays(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kvmlab.services.locks import file_lock

    server.files["/img.qcow2"] = PAYLOAD
    url = server.base + "/img.qcow2"
    lock = pull.download_lock_path(url, tmp_path)
    busy = pytest.raises(errors.Busy, match=r"is being downloaded already: download of http")
    with file_lock(lock, f"download of {url}", "held by the test", remove=True), busy:
        pull.download(url, tmp_path)
    path = pull.download(url, tmp_path, checksum=pull.Checksum.from_hex(_sha256(PAYLOAD)))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _volume_file(path: Path, uid: int, gid: int) -> Path:
    """An empty file like libvirt's new volume: mode 0600, owned by uid:gid."""
    import os

    path.write_bytes(b"")
    os.chmod(path, 0o600)
    os.chown(path, uid, gid)
    return path


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="chown needs root")  # fmt: skip
@pytest.mark.parametrize("move", [True, False], ids=["move", "copy"])
def test_place_file_fills_the_volume_file_with_its_mode_and_owner(
    tmp_path: Path, move: bool
) -> None:
    import os

    src = tmp_path / "download"
    src.write_bytes(PAYLOAD)
    os.chmod(src, 0o644)
    target = _volume_file(tmp_path / "vol", 1234, 5678)
    imagestore.place_file(src, target, move=move)
    st = target.stat()
    assert target.read_bytes() == PAYLOAD
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert src.exists() is not move  # moved, or copied and left for the caller to remove


def test_place_file_copies_when_the_rename_crosses_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def cross_device(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    src = tmp_path / "download"
    src.write_bytes(PAYLOAD)
    target = _volume_file(tmp_path / "vol", os.getuid(), os.getgid())
    monkeypatch.setattr(os, "rename", cross_device)
    imagestore.place_file(src, target, move=True)
    assert target.read_bytes() == PAYLOAD
    assert target.stat().st_mode & 0o7777 == 0o600


class _BusyPool:
    """A pool whose refresh libvirt refuses ``busy`` times (another client builds a volume)."""

    def __init__(self, busy: int, message: str) -> None:
        self.busy, self.message, self.calls = busy, message, 0

    def refresh(self, flags: int) -> None:
        import libvirt

        self.calls += 1
        if self.calls <= self.busy:
            err = libvirt.libvirtError(self.message)
            err.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, self.message, 0, "", "", "", 0, 0)
            raise err


def test_pool_refresh_waits_while_libvirt_builds_a_volume(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pool = _BusyPool(2, "internal error: pool 'kvmlab-images' has asynchronous jobs running.")
    monkeypatch.setattr(env.hypervisor, "_pool", lambda name: pool)
    env.hypervisor.refresh_pool(IMAGE_POOL)
    assert pool.calls == 3


def test_pool_refresh_gives_other_errors_at_once(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pool = _BusyPool(5, "internal error: cannot open directory")
    monkeypatch.setattr(env.hypervisor, "_pool", lambda name: pool)
    with pytest.raises(errors.KvmlabError, match="cannot open directory"):
        env.hypervisor.refresh_pool(IMAGE_POOL)
    assert pool.calls == 1


@pytest.mark.skipif(__import__("os").geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs the check as another user: needs root and setpriv")  # fmt: skip
def test_a_volume_file_this_user_cannot_write_is_left_to_the_stream() -> None:
    """A user of the daemon's socket (e.g. in the libvirt group) cannot replace root's volume
    file: the local store is skipped and the bytes go over the stream."""
    import os
    import subprocess
    import sys
    import tempfile

    nobody = 65534
    as_nobody = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import kvmlab"], check=False,
                           capture_output=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this checkout's Python (a private directory)")
    with tempfile.TemporaryDirectory() as d:
        root_dir, own_dir = Path(d) / "root", Path(d) / "own"
        root_dir.mkdir(mode=0o755)
        own_dir.mkdir(mode=0o755)
        os.chmod(d, 0o755)
        _volume_file(root_dir / "vol", 0, 0)
        _volume_file(own_dir / "vol", nobody, nobody)
        os.chown(own_dir, nobody, nobody)
        code = (
            "import sys; from pathlib import Path; "
            "from kvmlab.services.imagestore import _writable; "
            "print(*(_writable(Path(p)) for p in sys.argv[1:]))"
        )
        result = subprocess.run(
            [*as_nobody, sys.executable, "-c", code, str(root_dir / "vol"),
             str(own_dir / "vol")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    assert result.stdout.split() == ["False", "True"]


def test_place_file_copies_when_the_owner_cannot_be_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root: the download cannot be handed to the volume's owner, so it is copied into
    the volume's own file (inode, mode and owner kept) and stays for the caller to remove."""
    import os

    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    src = tmp_path / "download"
    src.write_bytes(PAYLOAD)
    target = _volume_file(tmp_path / "vol", os.getuid(), os.getgid())
    inode = target.stat().st_ino
    monkeypatch.setattr(os, "getuid", lambda: 4321)  # not the owner: a chown is needed
    monkeypatch.setattr(os, "chown", refuse)
    imagestore.place_file(src, target, move=True)
    assert target.read_bytes() == PAYLOAD
    assert target.stat().st_ino == inode and target.stat().st_mode & 0o7777 == 0o600
    assert src.exists()
