"""The console script's click-free ``image pull`` path must behave exactly like the click
command: same bytes on stdout and stderr, same exit code. The pull that stores an image is
run through the console script (so through this path) by
tests/integration/test_images_iso.py; here, against libvirt's test driver (which cannot take
an upload), every way a pull is refused or fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kvmlab.cli.fast import parse_fast
from tests.cli.test_fast_net import FAST, SLOW, URI, _run, assert_same


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["image", "pull", "debian-12"], (["debian-12"], {})),
        (
            ["image", "pull", "http://h/x.qcow2", "--sha256", "ab", "--name", "x"],
            (["http://h/x.qcow2"], {"sha256": "ab", "name": "x"}),
        ),
        (
            ["image", "pull", "--checksums=http://h/SUMS", "http://h/x.qcow2"],
            (["http://h/x.qcow2"], {"checksums": "http://h/SUMS"}),
        ),
        (["image", "pull"], None),
        (["image", "pull", "a", "b"], None),
        (["image", "pull", "a", "--name"], None),
        (["image", "pull", "a", "--sha256", "--json"], None),
        (["image", "pull", "a", "--help"], None),
        (["image", "import", "f.qcow2"], None),
    ],
)
def test_only_plain_image_pull_takes_the_fast_path(argv: list[str], want: object) -> None:
    call = parse_fast(argv)
    assert (None if call is None else (call.arguments, call.options)) == want
    assert call is None or call.words == ("image", "pull")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("www")
    (root / "disk.qcow2").write_bytes(b"QFI\xfb" + bytes(60))
    (root / "notes.txt").write_text("not a disk\n" * 50)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, directory=str(root), **k)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("args", "code", "shows"),
    [
        (("plan9",), 3, "debian-12"),  # an unknown name lists the catalogue
        (("{base}/disk.qcow2", "--name", "tiny"), 4, "'tiny' exists already"),
        (("{base}/missing.qcow2",), 1, "HTTP 404"),
        (("{base}/disk.qcow2", "--sha256", "12"), 2, "--sha256"),
        (("{base}/disk.qcow2", "--sha256", "1" * 64), 1, "expected 1111"),
        (("{base}/disk.qcow2", "--sha256", "1" * 64, "--checksums", "{base}/S"), 2, "not both"),
        (("{base}/notes.txt",), 2, "not a disk image"),
        (("{base}/disk.qcow2", "--name", "bad name"), 2, "contains ' '"),
    ],
)
def test_fast_image_pull_prints_what_the_click_command_prints(
    base: str, tmp_path: Path, args: tuple[str, ...], code: int, shows: str
) -> None:
    argv = [a.replace("{base}", base) for a in args]
    fast, slow = (  # each with a cache of its own
        _run(program, "-c", URI, "image", "pull", *argv,
             extra_env={"KVMLAB_CACHE_DIR": str(tmp_path / which)})
        for which, program in (("fast", FAST), ("slow", SLOW))
    )  # fmt: skip
    assert_same(fast, slow)
    assert fast.returncode == code, fast.stderr
    assert shows in fast.stdout + fast.stderr
    for which in ("fast", "slow"):  # nothing of a failed pull is left in the cache
        downloads = tmp_path / which / "downloads"
        assert not downloads.exists() or list(downloads.iterdir()) == []
