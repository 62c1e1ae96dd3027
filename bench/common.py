"""What the benchmarks share: paths, interleaved timing, statistics and the ratio report.

A bench measures a few *cases* (kvmlab and its peers doing the same thing), each a callable
that performs one run and returns its wall time in seconds. :func:`interleave` runs them
round-robin (A B C A B C ...) after a warm-up, so a slow minute of the machine hits every case
alike. :func:`report` prints a markdown table (median, min, p90 per case, then the ratios of
medians against their targets) and writes the same data as JSON to
``bench/results/<name>.json``.

Benchmarks are run by ``bench/run.sh`` with kvmlab's venv; they are not part of the test suite
(``bench_*.py``, outside ``tests/``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
KVMLAB_VENV = REPO / ".venv"
KVMLAB = KVMLAB_VENV / "bin" / "kvmlab"
PEERS_VENV = BENCH_DIR / ".venv-peers"
KCLI = PEERS_VENV / "bin" / "kcli"
SANDBOX_PREFIX = "kvmlab-b"  # not the tests' "kvmlab-t": their stale-sandbox sweeps stay apart

# tests/sandbox.py lives in the repository, not in the installed package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


PYCACHE = BENCH_DIR / ".pycache"


def python_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for the Python programs under test (kvmlab, kcli).

    Bytecode caching on, into ``bench/.pycache``: a user's installed program runs from cached
    bytecode, so a bench must too. Without this, ``PYTHONDONTWRITEBYTECODE=1`` (set in some
    shells and CI) makes every run compile kvmlab's ~30 modules again (~25 ms of ``ls``),
    while pip-installed peers ship their ``.pyc`` files. The warm-up runs fill the cache.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra)
    return env


def runs_from_env(default: int) -> int:
    """How many timed runs per case: ``$BENCH_RUNS`` or ``default``."""
    return int(os.environ.get("BENCH_RUNS", default))


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A run did not do what it was timed for (wrong output, non-zero exit, timeout)."""


def run_timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: Callable[[subprocess.CompletedProcess[str]], None] | None = None,
    timeout: float = 120.0,
) -> float:
    """Run ``argv`` to completion; its wall time in seconds (launch to exit).

    Output is captured (as a terminal user would wait for it to be written); ``check`` gets
    the finished process and raises :class:`BenchError` if the output is wrong, so a fast
    but broken command cannot win.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    if check is not None:
        check(proc)
    return elapsed


@dataclass
class Stats:
    """The samples of one case, in seconds."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def p90(self) -> float:
        """90th percentile (linear interpolation between the closest ranks)."""
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": len(self.samples),
            "median_s": self.median,
            "min_s": self.min,
            "p90_s": self.p90,
            "samples_s": self.samples,
        }


def interleave(
    cases: Mapping[str, Callable[[], float]],
    runs: int,
    warmup: int = 1,
    progress: bool = True,
) -> dict[str, Stats]:
    """Run every case ``warmup`` times untimed, then ``runs`` rounds of all cases in turn."""
    for i in range(warmup):
        for name, case in cases.items():
            elapsed = case()
            if progress:
                print(f"  warm-up {i + 1}: {name} {elapsed * 1000:.0f} ms", file=sys.stderr)
    stats = {name: Stats(name) for name in cases}
    for i in range(runs):
        for name, case in cases.items():
            elapsed = case()
            stats[name].samples.append(elapsed)
            if progress:
                print(f"  run {i + 1}/{runs}: {name} {elapsed * 1000:.0f} ms", file=sys.stderr)
    return stats


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """``numerator``'s median divided by ``denominator``'s, and the target it must meet.

    ``at_most`` is the largest ratio that passes (``kvmlab / virsh <= 4``), ``at_least`` the
    smallest (``kcli / kvmlab >= 2``); with neither, the ratio is shown for information.
    """

    numerator: str
    denominator: str
    at_most: float | None = None
    at_least: float | None = None

    def value(self, stats: Mapping[str, Stats]) -> float:
        return stats[self.numerator].median / stats[self.denominator].median

    def met(self, stats: Mapping[str, Stats]) -> bool | None:
        """Whether the target is met; None for a ratio shown for information only."""
        if self.at_most is None and self.at_least is None:
            return None
        v = self.value(stats)
        if self.at_most is not None and v > self.at_most:
            return False
        return self.at_least is None or v >= self.at_least

    def describe(self) -> str:
        return f"{self.numerator} / {self.denominator}"

    def target(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f">= {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"<= {self.at_most:g}")
        return " and ".join(parts) or "-"


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: host, CPUs, kernel, Python, libvirt/QEMU versions."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_1_5_15": os.getloadavg(),
    }
    for key, argv in (
        ("libvirt", ["libvirtd", "--version"]),
        ("qemu", ["qemu-system-x86_64", "--version"]),
    ):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
            info[key] = out.splitlines()[0].strip() if out else None
        except OSError:
            info[key] = None
    return info


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown_table(
    stats: Mapping[str, Stats],
    ratios: Sequence[Ratio],
    commands: Mapping[str, str] | None = None,
) -> str:
    """The cases and the ratios as markdown tables."""
    lines = ["| case | runs | median | min | p90 |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in stats.items():
        what = f"{name} (`{commands[name]}`)" if commands and name in commands else name
        lines.append(
            f"| {what} | {len(s.samples)} | {_ms(s.median)} | {_ms(s.min)} | {_ms(s.p90)} |"
        )
    if ratios:
        lines += ["", "| ratio of medians | value | target | met |", "| --- | ---: | ---: | --- |"]
        for r in ratios:
            met = {True: "yes", False: "NO", None: "-"}[r.met(stats)]
            lines.append(f"| {r.describe()} | {r.value(stats):.2f} | {r.target()} | {met} |")
    return "\n".join(lines)


def report(
    name: str,
    stats: Mapping[str, Stats],
    ratios: Sequence[Ratio] = (),
    *,
    commands: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_markdown: str = "",
    load_at_start: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """Print the markdown tables and write ``bench/results/<name>.json``; returns the data.

    ``load_at_start`` (``os.getloadavg()`` when the bench began) goes into the JSON beside
    the load at the end: on a 2-core machine, someone else's test run skews everything.
    """
    text = markdown_table(stats, ratios, commands)
    print(f"\n## {name}\n\n{text}")
    if extra_markdown:
        print(f"\n{extra_markdown}")
    data: dict[str, Any] = {
        "bench": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loadavg_at_start": load_at_start,
        "commands": dict(commands or {}),
        "cases": {n: s.to_dict() for n, s in stats.items()},
        "ratios": [
            {
                "ratio": r.describe(),
                "numerator": r.numerator,
                "denominator": r.denominator,
                "value": r.value(stats),
                "at_most": r.at_most,
                "at_least": r.at_least,
                "met": r.met(stats),
            }
            for r in ratios
        ],
    }
    if extra:
        data.update(extra)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out)
    print(f"\n(written to {out.relative_to(REPO)})")
    return data
