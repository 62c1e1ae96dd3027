"""Download speed: kvmlab's ``pull.download`` (SHA-256 while streaming) against curl.

One local server (``python -m http.server`` in its own process, on 127.0.0.1) serves a
file of ``$BENCH_PULL_MB`` MiB (default 256) of random bytes; each case downloads it into a
temporary directory:

* ``kvmlab`` - ``kvmlab.services.pull.download`` with a SHA-256 checksum (what ``image pull``
  does before the upload), in a fresh Python process;
* ``curl+sha256sum`` - ``curl -o`` then ``sha256sum`` (the same work done by hand);
* ``curl`` - ``curl -o`` alone (the floor: no checksum);
* ``kvmlab image pull`` - the whole command (``kvmlab -c URI image pull URL --sha256 HEX``):
  click and libvirt start-up, the download, then the upload of the verified file into the
  image pool of a ``tests.sandbox.Sandbox`` daemon over a libvirt stream. For information:
  the target compares the download (``kvmlab``) with curl writing the same file.

The served file is a qcow2 image holding ``$BENCH_PULL_MB`` MiB of random bytes (random, so
nothing compresses; qcow2, so ``image pull`` accepts it).

Runs interleaved, ``$BENCH_RUNS`` (default 5) times each after a warm-up. The clock stops
when the program exits; then the file it wrote is checked (one file, the full size) and
removed, untimed for every case (deleting 256 MiB takes ~15 ms).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    KVMLAB,
    KVMLAB_VENV,
    SANDBOX_PREFIX,
    Ratio,
    interleave,
    python_env,
    report,
    runs_from_env,
)
from tests.sandbox import Sandbox, cleanup_stale_sandboxes

SIZE_MB = int(os.environ.get("BENCH_PULL_MB", "256"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the HTTP server did not start")


def _timed(argv: list[str], out_dir: Path, size: int) -> float:
    """Wall time of one download; the file it wrote is checked and removed untimed."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=python_env())
    elapsed = time.perf_counter() - start
    written = list(out_dir.iterdir())
    if len(written) != 1 or written[0].stat().st_size != size:
        raise RuntimeError(f"{argv[0]} did not leave exactly the downloaded file: {written}")
    written[0].unlink()
    return elapsed


def _timed_cli_pull(uri: str, url: str, digest: str) -> float:
    """Wall time of ``kvmlab image pull``; the image is checked and removed untimed."""
    argv = [str(KVMLAB), "-c", uri, "image", "pull", url, "--sha256", digest, "--name", "bp"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=python_env())
    elapsed = time.perf_counter() - start
    subprocess.run([str(KVMLAB), "-c", uri, "image", "rm", "bp"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return elapsed


def main() -> int:
    runs = runs_from_env(5)
    curl = shutil.which("curl")
    if curl is None:
        print("bench_pull needs curl (apt install curl)", file=sys.stderr)
        return 2
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kvmlab-bench-pull-"))
        root = Path(tmp) / "www"
        root.mkdir()
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        raw = Path(tmp) / "random.raw"
        raw.write_bytes(os.urandom(SIZE_MB * 1024 * 1024))
        image = root / "image.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
                       check=True)  # fmt: skip
        raw.unlink()
        size = image.stat().st_size
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
             "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            sb = stack.enter_context(Sandbox(SANDBOX_PREFIX))
            _wait_port(port)
            url = f"http://127.0.0.1:{port}/image.qcow2"
            py = str(KVMLAB_VENV / "bin" / "python")
            code = (
                "import sys; from pathlib import Path; from kvmlab.services import pull; "
                "pull.download(sys.argv[1], Path(sys.argv[2]), "
                "checksum=pull.Checksum.from_hex(sys.argv[3]))"
            )
            target = out_dir / "curl.img"
            cases = {
                "kvmlab": lambda: _timed(
                    [py, "-c", code, url, str(out_dir), digest], out_dir, size
                ),
                "curl+sha256sum": lambda: _timed(
                    ["sh", "-c", '"$0" -sf -o "$1" "$2" && sha256sum "$1"', curl, str(target), url],
                    out_dir,
                    size,
                ),
                "curl": lambda: _timed([curl, "-sf", "-o", str(target), url], out_dir, size),
                "kvmlab image pull": lambda: _timed_cli_pull(sb.uri, url, digest),
            }
            stats = interleave(cases, runs)
        finally:
            server.terminate()
            server.wait()
    mib = size / (1024 * 1024)
    speeds = {name: f"{mib / s.median:.0f} MiB/s" for name, s in stats.items()}
    report(
        "pull",
        stats,
        [
            Ratio("kvmlab", "curl+sha256sum"),
            Ratio("curl", "kvmlab", at_least=0.9),
            Ratio("curl", "kvmlab image pull"),
        ],
        extra={"size_mib": mib, "median_speed": speeds},
        extra_markdown="\n".join(f"- {n}: {v} (median)" for n, v in speeds.items()) + "\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
