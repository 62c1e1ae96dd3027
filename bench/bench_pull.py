"""Download speed: kvmlab's ``pull.download`` (SHA-256 while streaming) against curl.

One local server (``python -m http.server`` in its own process, on 127.0.0.1) serves a
file of ``$BENCH_PULL_MB`` MiB (default 256) of random bytes; each case downloads it into a
temporary directory:

* ``kvmlab`` - ``kvmlab.services.pull.download`` with a SHA-256 checksum (what ``image pull``
  does before the upload), in a fresh Python process;
* ``curl+sha256sum`` - ``curl -o`` then ``sha256sum`` (the same work done by hand);
* ``curl`` - ``curl -o`` alone (the floor: no checksum).

Runs interleaved, ``$BENCH_RUNS`` (default 5) times each after a warm-up. The clock stops
when the program exits; then the file it wrote is checked (one file, the full size) and
removed, untimed for every case (deleting 256 MiB takes ~15 ms).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import KVMLAB_VENV, Ratio, interleave, report, runs_from_env

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


def _timed(argv: list[str], out_dir: Path) -> float:
    """Wall time of one download; the file it wrote is checked and removed untimed."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    written = list(out_dir.iterdir())
    if len(written) != 1 or written[0].stat().st_size != SIZE_MB * 1024 * 1024:
        raise RuntimeError(f"{argv[0]} did not leave exactly the downloaded file: {written}")
    written[0].unlink()
    return elapsed


def main() -> int:
    runs = runs_from_env(5)
    curl = shutil.which("curl")
    if curl is None:
        print("bench_pull needs curl (apt install curl)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kvmlab-bench-pull-") as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        data = os.urandom(SIZE_MB * 1024 * 1024)
        (root / "image.qcow2").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        del data
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
             "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
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
                "kvmlab": lambda: _timed([py, "-c", code, url, str(out_dir), digest], out_dir),
                "curl+sha256sum": lambda: _timed(
                    ["sh", "-c", '"$0" -sf -o "$1" "$2" && sha256sum "$1"', curl, str(target), url],
                    out_dir,
                ),
                "curl": lambda: _timed([curl, "-sf", "-o", str(target), url], out_dir),
            }
            stats = interleave(cases, runs)
        finally:
            server.terminate()
            server.wait()
    mib = SIZE_MB
    speeds = {name: f"{mib / s.median:.0f} MiB/s" for name, s in stats.items()}
    report(
        "pull",
        stats,
        [Ratio("kvmlab", "curl+sha256sum"), Ratio("kvmlab", "curl")],
        extra={"size_mib": mib, "median_speed": speeds},
        extra_markdown="\n".join(f"- {n}: {v} (median)" for n, v in speeds.items()) + "\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
