"""Pull speed: ``kvmlab image pull`` and its download step against curl.

One local server (``python -m http.server`` in its own process, on 127.0.0.1) serves a
qcow2 image holding ``$BENCH_PULL_MB`` MiB (default 256) of random bytes (random, so nothing
compresses; qcow2, so ``image pull`` accepts it). Cases:

* ``curl`` - ``curl -o`` alone, no checksum: the target's reference;
* ``kvmlab image pull`` - the whole command (``kvmlab -c URI image pull URL --sha256 HEX``)
  as a local client of a ``tests.sandbox.Sandbox`` daemon: run in the sandbox's mount
  namespace (``Sandbox.run_in_mountns``), it sees the pool's files as the daemon does, so the
  verified download is renamed into the volume libvirt creates. Its download cache is put on
  the pool's mount (``KVMLAB_CACHE_DIR``), as ``/var/cache/kvmlab`` and
  ``/var/lib/libvirt`` are one file system on a usual host;
* ``kvmlab image pull, upload`` - the same command from outside that mount namespace, as for
  a daemon on another host: the file goes into the pool over a libvirt stream;
* ``kvmlab download`` - ``kvmlab.services.pull.download`` with a SHA-256 alone, in a fresh
  Python process (the download step without the CLI, libvirt and the pool);
* ``curl+sha256sum`` - ``curl -o`` then ``sha256sum`` (the same work done by hand).

The curl and download cases write into a temporary directory; the pulls into the sandbox's
pool. Runs interleaved, ``$BENCH_RUNS`` (default 15: single runs of one case vary by 50 ms
and more on a 2-core machine) times each after a warm-up. The clock stops when the program
exits; then what it wrote is checked and removed, and ``sync`` runs,
untimed for every case (so no case pays for the previous one's write-back).
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
LOCAL_CACHE = "/var/lib/libvirt/kvmlab-bench-cache"  # as the sandbox daemon sees it


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
    os.sync()
    return elapsed


def _timed_cli_pull(sb: Sandbox, url: str, digest: str, size: int, *, local: bool) -> float:
    """Wall time of ``kvmlab image pull``; the image is checked and removed untimed."""
    uri = sb.INSIDE_URI if local else sb.uri
    argv = [str(KVMLAB), "-c", uri, "image", "pull", url, "--sha256", digest, "--name", "bp"]
    env = python_env(KVMLAB_CACHE_DIR=LOCAL_CACHE) if local else python_env()
    run = sb.run_in_mountns if local else subprocess.run
    start = time.perf_counter()
    done = run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
               text=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    how = "(local daemon: no upload)" if local else "uploading"
    if how not in done.stderr:
        raise RuntimeError(f"image pull did not say {how!r}: {done.stderr}")
    vol = subprocess.run([str(KVMLAB), "-c", sb.uri, "--json", "image", "list"], check=True,
                         capture_output=True, text=True, env=python_env())  # fmt: skip
    if f'"capacity": {size}' not in vol.stdout:
        raise RuntimeError(f"the pulled image is not the served one: {vol.stdout}")
    subprocess.run([str(KVMLAB), "-c", sb.uri, "image", "rm", "bp"], check=True,
                   stdout=subprocess.DEVNULL, env=python_env())  # fmt: skip
    os.sync()
    return elapsed


def main() -> int:
    runs = runs_from_env(15)
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
                "curl": lambda: _timed([curl, "-sf", "-o", str(target), url], out_dir, size),
                "kvmlab image pull": lambda: _timed_cli_pull(
                    sb, url, digest, SIZE_MB << 20, local=True
                ),
                "kvmlab image pull, upload": lambda: _timed_cli_pull(
                    sb, url, digest, SIZE_MB << 20, local=False
                ),
                "kvmlab download": lambda: _timed(
                    [py, "-c", code, url, str(out_dir), digest], out_dir, size
                ),
                "curl+sha256sum": lambda: _timed(
                    ["sh", "-c", '"$0" -sf -o "$1" "$2" && sha256sum "$1"', curl, str(target), url],
                    out_dir,
                    size,
                ),
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
            Ratio("curl", "kvmlab image pull", at_least=0.9),
            Ratio("curl", "kvmlab download", at_least=0.9),
            Ratio("curl", "kvmlab image pull, upload"),
            Ratio("curl+sha256sum", "kvmlab image pull"),
        ],
        extra={"size_mib": mib, "median_speed": speeds},
        extra_markdown="\n".join(f"- {n}: {v} (median)" for n, v in speeds.items()) + "\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
