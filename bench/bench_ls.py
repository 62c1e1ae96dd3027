"""Listing 50 machines: ``kvmlab ls --json`` against ``virsh list --all`` and ``kcli list vm``.

All three talk to the same private libvirtd (a ``tests.sandbox.Sandbox``) holding 50 defined,
stopped kvmlab machines; every run of every command is checked to list all 50. The commands
run interleaved, 15 times each (``$BENCH_RUNS``) after a warm-up, as a user would run them:
a fresh process each time, wall clock from launch to exit.

Targets (from the issue): kvmlab within 4x of virsh, and at least 2x faster than kcli.

Afterwards it shows where kvmlab's time goes: the median of each phase of ``ls --json`` done
in-process (``ls_phases.py``: imports, connect, listing, output), and it writes
``python -X importtime`` and cProfile output of one real run to ``bench/results/ls-*.txt``.

kcli reads its connection from ``~/.kcli/config.yml``; a client of ``type: kvm`` with a
``url`` key is passed verbatim to ``libvirt.open`` (kvirt/providers/kvm ``Kvirt.__init__``),
so ``url: qemu:///system?socket=...`` reaches the sandbox. kcli runs with a temporary HOME so
the user's own kcli config is neither read nor touched.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from common import (
    BENCH_DIR,
    KCLI,
    KVMLAB,
    REPO,
    RESULTS_DIR,
    SANDBOX_PREFIX,
    BenchError,
    Ratio,
    interleave,
    python_env,
    report,
    run_timed,
    runs_from_env,
)
from tests.sandbox import Sandbox, cleanup_stale_sandboxes

from kvmlab.env import Env
from kvmlab.libvirt.build import domain_from_spec, random_mac
from kvmlab.specs import Accel, MachineSpec, NicSpec

MACHINES = 50
POOL = "kvmlab"
NETWORK = "benchnet"


def define_machines(uri: str, count: int) -> list[str]:
    """Define ``count`` stopped kvmlab machines (their volumes need not exist to define)."""
    env = Env(uri=uri)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    names = []
    try:
        for i in range(count):
            name = f"bench{i:02d}"
            spec = MachineSpec(name=name, image="tiny", nics=(NicSpec(NETWORK),))
            xml = domain_from_spec(
                spec,
                accel=Accel.TCG,
                pool=POOL,
                disk_volume=f"{name}.qcow2",
                seed_volume=f"{name}-seed.iso",
                macs=[random_mac()],
                created=created,
            )
            env.hypervisor.define_machine(xml)
            names.append(name)
    finally:
        env.close()
    return names


def write_kcli_config(home: Path, uri: str) -> None:
    """A kcli config whose only client is the sandbox's daemon."""
    kcli_dir = home / ".kcli"
    kcli_dir.mkdir(parents=True)
    # JSON is YAML; json.dumps quotes the URI safely.
    (kcli_dir / "config.yml").write_text(
        "default:\n  client: sandbox\n"
        f"sandbox:\n  type: kvm\n  url: {json.dumps(uri)}\n  pool: default\n"
    )


def expect_names(
    names: set[str], found: Callable[[str], set[str]], what: str
) -> Callable[[subprocess.CompletedProcess[str]], None]:
    """A ``check`` for :func:`run_timed`: the output lists exactly ``names``."""

    def check(proc: subprocess.CompletedProcess[str]) -> None:
        got = found(proc.stdout)
        if got != names:
            missing, extra = sorted(names - got), sorted(got - names)
            raise BenchError(
                f"{what} listed {len(got)} machines, not {len(names)} "
                f"(missing {missing[:5]}, unexpected {extra[:5]}):\n{proc.stdout[-1500:]}\n"
                f"{proc.stderr[-1500:]}"
            )

    return check


def kvmlab_names(out: str) -> set[str]:
    return {m["name"] for m in json.loads(out)}


def virsh_names(out: str) -> set[str]:
    # " -    bench00   shut off": Id, Name, State after two header lines.
    return {line.split()[1] for line in out.splitlines()[2:] if len(line.split()) >= 2}


def kcli_names(out: str) -> set[str]:
    # prettytable rows: "|  bench00 |  down  | ..."
    return {
        m.group(1)
        for m in re.finditer(r"^\|\s*(\S+)\s*\|", out, re.MULTILINE)
        if m.group(1) != "Name"
    }


def measure_phases(uri: str, runs: int = 7) -> dict[str, float]:
    """Median of each phase over ``runs`` fresh interpreters."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, str(BENCH_DIR / "ls_phases.py"), uri],
            env=python_env(), capture_output=True, text=True, check=True,
        ).stdout
        for name, ms in json.loads(out).items():
            samples.setdefault(name, []).append(ms)
    return {name: statistics.median(v) for name, v in samples.items()}


def python_startup_ms(runs: int = 7) -> float:
    """Median wall time of the bare interpreter (``python -c pass``): the floor of any CLI."""
    return statistics.median(
        run_timed([sys.executable, "-c", "pass"], env=python_env()) * 1000 for _ in range(runs)
    )


def write_profiles(uri: str) -> list[Path]:
    """``-X importtime`` and cProfile output of one ``kvmlab ls --json`` run, as text files."""
    argv = [str(KVMLAB), "-c", uri, "ls", "--json"]
    importtime = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=python_env(), capture_output=True, text=True, check=True,
    ).stderr
    imp_file = RESULTS_DIR / "ls-importtime.txt"
    RESULTS_DIR.mkdir(exist_ok=True)
    imp_file.write_text(_importtime_summary(importtime) + "\n\n--- raw ---\n" + importtime)
    with tempfile.NamedTemporaryFile(suffix=".prof") as prof:
        subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", prof.name, *argv],
            env=python_env(), capture_output=True, text=True, check=True,
        )
        text = _pstats_text(prof.name)
    prof_file = RESULTS_DIR / "ls-cprofile.txt"
    prof_file.write_text(text)
    return [imp_file, prof_file]


def _importtime_summary(raw: str) -> str:
    """Top-level imports (cumulative) and the slowest modules, largest first."""
    rows = []
    for line in raw.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2, m.group(4)))
    top = sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])
    total = sum(r[1] for r in top)
    out = [f"all imports: {total / 1000:.1f} ms (cumulative, top-level modules):"]
    out += [f"  {r[1] / 1000:6.1f} ms  {r[3]}" for r in top[:12]]
    out.append("slowest modules (cumulative, any level):")
    out += [
        f"  {r[1] / 1000:6.1f} ms  {'  ' * r[2]}{r[3]}"
        for r in sorted(rows, key=lambda r: -r[1])[:30]
    ]
    return "\n".join(out)


def _pstats_text(path: str) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(path, stream=buf)
    stats.strip_dirs()
    buf.write("=== by cumulative time ===\n")
    stats.sort_stats("cumulative").print_stats(40)
    buf.write("\n=== by own time ===\n")
    stats.sort_stats("tottime").print_stats(30)
    return buf.getvalue()


def main() -> int:
    runs = runs_from_env(15)
    load_at_start = os.getloadavg()
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    with Sandbox(SANDBOX_PREFIX) as sb, tempfile.TemporaryDirectory(prefix="kcli-home-") as home:
        print(f"sandbox {sb.netns}: defining {MACHINES} machines", file=sys.stderr)
        names = set(define_machines(sb.uri, MACHINES))
        write_kcli_config(Path(home), sb.uri)
        commands = {
            "kvmlab": "kvmlab -c URI ls --json",
            "virsh": "virsh -c URI list --all",
            "kcli": "kcli list vm",
            "py-floor": "python bench/ls_floor.py URI",
        }
        kvmlab_argv = [str(KVMLAB), "-c", sb.uri, "ls", "--json"]
        virsh_argv = ["virsh", "-c", sb.uri, "list", "--all"]
        kcli_argv = [str(KCLI), "list", "vm"]
        floor_argv = [sys.executable, str(BENCH_DIR / "ls_floor.py"), sb.uri]
        cases = {
            "kvmlab": lambda: run_timed(
                kvmlab_argv, env=python_env(),
                check=expect_names(names, kvmlab_names, "kvmlab ls"),
            ),
            "virsh": lambda: run_timed(
                virsh_argv, check=expect_names(names, virsh_names, "virsh list")
            ),
            "kcli": lambda: run_timed(
                kcli_argv, env=python_env(HOME=home),
                check=expect_names(names, kcli_names, "kcli list"),
            ),
            # Not a peer: the same RPCs and parsing with only click + libvirt loaded.
            "py-floor": lambda: run_timed(
                floor_argv, env=python_env(),
                check=expect_names(names, kvmlab_names, "ls_floor.py"),
            ),
        }
        stats = interleave(cases, runs=runs, warmup=2)
        print("measuring kvmlab's phases and profiling it", file=sys.stderr)
        phase_ms = measure_phases(sb.uri)
        startup_ms = python_startup_ms()
        profiles = write_profiles(sb.uri)
    phase_rows = [f"| python startup (`python -c pass`) | {startup_ms:.1f} |"]
    phase_rows += [f"| {name} | {ms:.1f} |" for name, ms in phase_ms.items()]
    breakdown = (
        "kvmlab `ls --json`, in-process phases (median of 7 fresh interpreters, ms):\n\n"
        "| phase | ms |\n| --- | ---: |\n" + "\n".join(phase_rows) + "\n\nprofiles: "
        + ", ".join(str(p.relative_to(REPO)) for p in profiles)
    )
    report(
        "ls",
        stats,
        [
            Ratio("kvmlab", "virsh", at_most=4.0),
            Ratio("kcli", "kvmlab", at_least=2.0),
            Ratio("py-floor", "virsh", at_most=4.0),
            Ratio("kvmlab", "py-floor"),
        ],
        commands=commands,
        extra={
            "machines": MACHINES,
            "kvmlab_phases_ms": phase_ms,
            "python_startup_ms": startup_ms,
        },
        load_at_start=load_at_start,
        extra_markdown=breakdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
