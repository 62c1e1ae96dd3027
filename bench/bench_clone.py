"""Clone a stopped tiny VM whose disk holds 1 GiB of data: kvmlab against ``virt-clone``.

Targets (issue 5):

a) ``kvmlab clone base lc --linked --count 10`` (one command, ten clones) against ten runs of
   ``virt-clone --connect URI --original base --auto-clone`` (ten full copies):
   wall time of all ten, ms per clone; virt-clone / kvmlab >= 20.
b) one full clone: ``kvmlab clone base fc --full`` against one ``virt-clone --auto-clone``
   (both copy through libvirt's ``createXMLFrom``): kvmlab / virt-clone <= 1.1 (not slower);
   throughput in MiB/s of data written.

Setup, untimed, in one ``tests.sandbox.Sandbox``: the tiny image, machine ``base`` with a
2 GiB disk (no NIC), and 1 GiB of non-zero data written into its disk's second GiB (outside
the partitions) with ``qemu-io -c 'write -P 0x5a 1G 1G'`` on the stopped machine's volume, so
the data is really allocated (a full copy cannot skip it as zeros). Clones are deleted after
each run (untimed). ``BENCH_RUNS`` rounds (default 3) after a warm-up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    KVMLAB,
    SANDBOX_PREFIX,
    BenchError,
    Ratio,
    Stats,
    python_env,
    report,
    runs_from_env,
)
from tests.sandbox import Sandbox, cleanup_stale_sandboxes

from kvmlab.env import Env
from kvmlab.services import clones, images, machines
from kvmlab.services.storage import MACHINE_POOL
from kvmlab.specs import Accel, MachineSpec

CACHE = Path(os.environ.get("KVMLAB_TEST_CACHE", "/var/cache/kvmlab-test"))
COUNT = 10
DATA = 1 << 30


def prepare(sb: Sandbox, state: Path) -> Env:
    env = Env(uri=sb.uri, state_dir=state, cache_dir=CACHE, accel=Accel.TCG)
    images.build_tiny(env)
    machines.create(env, MachineSpec(name="base", image="tiny", disk_size=2 * DATA))
    daemon_path = env.hypervisor.volume(MACHINE_POOL, "base.qcow2").path
    disk = sb.host_path(daemon_path)
    # without the backing image: whole-cluster writes need no data from it
    subprocess.run(
        ["qemu-io", "-c", f"write -P 0x5a {DATA} {DATA}", sb.qcow2_alone(daemon_path)],
        check=True,
        capture_output=True,
    )
    env.hypervisor.pool_xml(MACHINE_POOL)  # refresh: libvirt sees the new allocation
    print(f"  base disk: {disk.stat().st_blocks * 512 / 2**20:.0f} MiB allocated", file=sys.stderr)
    return env


def kvmlab_clone(sb: Sandbox, args: list[str]) -> float:
    argv = [str(KVMLAB), "-c", sb.uri, "--accel", "tcg", "clone", "base", *args, "--json"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=python_env())
    return time.perf_counter() - start


def virt_clone(sb: Sandbox) -> float:
    argv = ["virt-clone", "--connect", sb.uri, "--original", "base", "--auto-clone"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"virt-clone exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


def clean(env: Env) -> None:
    """Delete every machine but base, and every volume base does not own."""
    hv = env.hypervisor
    base_owned = set(hv.machine("base").owned_volumes)
    for m in hv.list_machines():
        if m.name == "base":
            continue
        if m.kvmlab and set(m.owned_volumes).isdisjoint(base_owned):
            machines.delete(env, m.name, force=True)
            continue
        # a virt-clone copy: it carries base's kvmlab metadata, so delete its disks by hand
        disks = [tuple(d.split("/", 1)) for d in m.disks if "/" in d]
        hv.undefine(m.name)
        for pool, vol in disks:
            if (pool, vol) not in base_owned:
                hv.delete_volume(pool, vol)
    for v in hv.list_volumes(MACHINE_POOL):
        if (v.pool, v.name) not in base_owned:
            hv.delete_volume(v.pool, v.name)


def main() -> int:
    runs = runs_from_env(3)
    load_at_start = os.getloadavg()
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    stats = {
        name: Stats(name)
        for name in ("kvmlab linked x10", "virt-clone x10", "kvmlab full x1", "virt-clone x1")
    }
    with Sandbox(SANDBOX_PREFIX) as sb, tempfile.TemporaryDirectory(prefix="bench-clone-") as t:
        env = prepare(sb, Path(t))
        for label in ("warm-up", *(f"run {i + 1}/{runs}" for i in range(runs))):
            linked = kvmlab_clone(sb, ["lc", "--linked", "--count", str(COUNT)])
            assert len(clones.find_dependents(env, "base").machines) == COUNT
            clean(env)
            singles = []
            for _ in range(COUNT):
                singles.append(virt_clone(sb))
            clean(env)
            full = kvmlab_clone(sb, ["fc", "--full"])
            clean(env)
            print(
                f"  {label}: kvmlab linked x10 {linked:.2f} s, virt-clone x10 {sum(singles):.2f} s"
                f", kvmlab full {full:.2f} s, virt-clone x1 {statistics.median(singles):.2f} s",
                file=sys.stderr,
            )
            if label == "warm-up":
                continue
            stats["kvmlab linked x10"].samples.append(linked)
            stats["virt-clone x10"].samples.append(sum(singles))
            stats["kvmlab full x1"].samples.append(full)
            stats["virt-clone x1"].samples.extend(singles)
        env.close()
    per_clone = {
        "kvmlab linked (ms per clone)": stats["kvmlab linked x10"].median / COUNT * 1000,
        "virt-clone (ms per clone)": stats["virt-clone x10"].median / COUNT * 1000,
    }
    throughput = {
        "kvmlab full (MiB/s of data)": DATA / 2**20 / stats["kvmlab full x1"].median,
        "virt-clone (MiB/s of data)": DATA / 2**20 / stats["virt-clone x1"].median,
    }
    md = "| per clone / throughput | value |\n| --- | ---: |\n" + "\n".join(
        f"| {k} | {v:.0f} |" for k, v in {**per_clone, **throughput}.items()
    )
    report(
        "clone",
        stats,
        [
            Ratio("virt-clone x10", "kvmlab linked x10", at_least=20),
            Ratio("kvmlab full x1", "virt-clone x1", at_most=1.1),
        ],
        commands={
            "kvmlab linked x10": "kvmlab -c URI clone base lc --linked --count 10 --json",
            "virt-clone x10": "10 x virt-clone --connect URI --original base --auto-clone",
            "kvmlab full x1": "kvmlab -c URI clone base fc --full --json",
            "virt-clone x1": "virt-clone --connect URI --original base --auto-clone (one run)",
        },
        extra={"per_clone_ms": per_clone, "throughput_mib_s": throughput},
        extra_markdown=md,
        load_at_start=load_at_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
