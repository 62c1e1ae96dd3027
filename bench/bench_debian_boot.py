"""Where the seconds go: a Debian cloud-init VM from ``vm create`` to ``kvmlab ssh`` working.

Inside one ``tests.sandbox.Sandbox``: the Debian image (``kvmlab image build debian``, cached
in ``$KVMLAB_TEST_CACHE``) and a NAT network are made untimed. Then the clock starts, the
machine is created and started with generated cloud-init user-data (a user with a fresh SSH
key), and the serial console log is watched every 50 ms for the first appearance of each
boot phase's marker, while ``kvmlab ssh VM -- true`` is retried from the sandbox's namespace
until it succeeds. Printed: seconds from ``create`` to each marker, and the phases between.
One run (TCG boots are slow and alike); ``$BENCH_RUNS`` asks for more.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import KVMLAB, SANDBOX_PREFIX, runs_from_env
from tests.sandbox import Sandbox, cleanup_stale_sandboxes

from kvmlab.env import Env
from kvmlab.services import cloudinit, images, machines, networks
from kvmlab.services.imagebuild import build_debian
from kvmlab.specs import Accel, MachineSpec, NetworkSpec, NicSpec

CACHE = Path(os.environ.get("KVMLAB_TEST_CACHE", "/var/cache/kvmlab-test"))
LOG = "/var/log/libvirt/qemu/bench-deb-console.log"
# (the phase that ends when the marker first shows on the serial console, the marker)
MARKERS = [
    ("firmware and boot loader", re.compile(rb"Linux version \d")),
    ("kernel", re.compile(rb"Run /init as init process|systemd\[1\]: ")),
    ("systemd up to cloud-init", re.compile(rb"Cloud-init v\. \S+ running 'init-local'")),
    ("cloud-init network stages", re.compile(rb"Cloud-init v\. \S+ running 'modules:config'")),
    ("cloud-init final stage", re.compile(rb"Cloud-init v\. \S+ finished")),
]


def one_run(sb: Sandbox, env: Env, tmp: Path, n: int) -> dict[str, float]:
    name = f"bench-deb-{n}"
    ident = tmp / f"id-{n}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ident)], check=True)
    user_data = cloudinit.user_data_for(home=tmp, user="bench", ssh_key=ident.with_suffix(".pub"))
    log = sb.host_path(LOG)
    log.unlink(missing_ok=True)
    seen: dict[str, float] = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def watch() -> None:
        while not stop.is_set():
            try:
                text = log.read_bytes()
            except OSError:
                text = b""
            for phase, rx in MARKERS:
                if phase not in seen and rx.search(text):
                    seen[phase] = time.monotonic() - t0
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    spec = MachineSpec(name=name, image="debian", memory=512 * 1024**2, nics=(NicSpec("bn"),))
    machines.create(env, spec, start=True, user_data=user_data, console_log=LOG)
    seen["create + start returned"] = time.monotonic() - t0
    deadline = time.monotonic() + 900
    while True:
        res = sb.run_in_netns(
            ["env", f"KVMLAB_STATE_DIR={tmp / 'state'}", str(KVMLAB), "-c", sb.uri, "ssh",
             name, "-l", "bench", "-i", str(ident), "--", "true"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if res.returncode == 0:
            seen["ssh works"] = time.monotonic() - t0
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"ssh never worked: {res.stderr}")
        time.sleep(1)
    stop.set()
    watcher.join()
    machines.delete(env, name, force=True)
    return seen


def main() -> int:
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    runs = runs_from_env(1)
    with Sandbox(SANDBOX_PREFIX) as sb, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = Env(uri=sb.uri, state_dir=tmp / "state", cache_dir=CACHE, accel=Accel.TCG)
        build_debian(env)
        networks.create_network(env, NetworkSpec(name="bn", subnet="10.213.62.0/24"))
        results = [one_run(sb, env, tmp, n) for n in range(runs)]
        images.remove_image(env, "debian")
        env.close()
    print(f"Debian cloud-init VM, {runs} run(s), TCG, 512 MiB, {os.cpu_count()} cores\n")
    print("| run | phase (ends when) | seconds | since create |")
    print("| ---: | --- | ---: | ---: |")
    for n, r in enumerate(results, 1):
        last = 0.0
        for phase, t in sorted(r.items(), key=lambda kv: kv[1]):
            print(f"| {n} | {phase} | {t - last:.1f} | {t:.1f} |")
            last = t
    return 0


if __name__ == "__main__":
    sys.exit(main())
