"""The console script's click-free ``ls`` path must behave exactly like the click command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlab.cli.fast import parse_fast
from tests.cli.test_fast_net import assert_same

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"
URI = f"test://{NODE}"


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["ls"], (None, False)),
        (["ls", "--json"], (None, True)),
        (["--json", "ls"], (None, True)),
        (["-c", "test:///x", "ls"], ("test:///x", False)),
        (["--connect=test:///x", "--json", "ls"], ("test:///x", True)),
        (["ls", "-h"], None),
        (["ls", "-c", "x"], None),  # click rejects that: the fast path must not accept it
        (["--debug", "ls"], None),
        (["vm", "ls"], None),
        (["ls", "ls"], None),
        ([], None),
    ],
)
def test_only_plain_ls_takes_the_fast_path(argv: list[str], want: object) -> None:
    call = parse_fast(argv)
    assert (None if call is None else (call.uri, call.as_json)) == want
    assert call is None or call.words == ("ls",)


def _run(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="120")
    env.pop("KVMLAB_CONNECT", None)
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=False
    )


FAST = "import sys; sys.argv[0]='kvmlab'; from kvmlab.cli.fast import entry; entry()"
SLOW = "import sys; from kvmlab.cli.main import main; sys.exit(main())"


@pytest.mark.parametrize(
    "argv",
    [
        ("-c", URI, "ls", "--json"),
        ("-c", URI, "ls"),
        ("-c", "qemu:///system?socket=/nonexistent/sock", "ls"),
        ("-c", "test:///default", "--json", "ls"),
    ],
)
def test_fast_path_prints_what_the_click_command_prints(argv: tuple[str, ...]) -> None:
    fast, slow = _run(FAST, *argv), _run(SLOW, *argv)
    assert_same(fast, slow)
    assert fast.stdout or fast.stderr.startswith("error: cannot reach the libvirt daemon")


def test_a_profiler_still_gets_its_results(tmp_path: Path) -> None:
    # the fast path skips the interpreter's teardown with os._exit, except under a profiler
    # or tracer, which write their results at exit (bench/bench_ls.py profiles `kvmlab ls`)
    out = tmp_path / "ls.prof"
    code = f"import cProfile; cProfile.run({FAST!r}, {str(out)!r})"
    res = _run(code, "-c", URI, "ls", "--json")
    assert res.returncode == 0, res.stderr
    assert '"name"' in res.stdout
    import pstats

    assert pstats.Stats(str(out)).total_calls > 0  # type: ignore[attr-defined]
