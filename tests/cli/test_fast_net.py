"""The console script's click-free ``net create`` path must behave exactly like the click
command: same bytes on stdout and stderr, same exit code, for successes and for errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlab.cli.fast import parse_fast

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"
URI = f"test://{NODE}"  # holds network lab, 10.70.0.0/24 on virbr3
DOWN = "qemu:///system?socket=/nonexistent/sock"


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["net", "create", "a"], (None, False, ["a"], {})),
        (
            ["-c", "test:///x", "--json", "net", "create", "a", "--subnet", "10.1.0.0/24"],
            ("test:///x", True, ["a"], {"subnet": "10.1.0.0/24"}),
        ),
        (
            ["--connect=u", "net", "create", "--isolated", "--subnet=10.1.0.0/24", "a", "--json"],
            ("u", True, ["a"], {"mode": "isolated", "subnet": "10.1.0.0/24"}),
        ),
        (
            ["net", "create", "a", "--dhcp-range", "10.1.0.5-10.1.0.9", "--domain", "lab"],
            (None, False, ["a"], {"dhcp_range": "10.1.0.5-10.1.0.9", "domain": "lab"}),
        ),
        # as in click, the last of --nat/--isolated and of a repeated option wins
        (["net", "create", "a", "--isolated", "--nat"], (None, False, ["a"], {"mode": "nat"})),
        (
            ["net", "create", "a", "--subnet", "x", "--subnet=y"],
            (None, False, ["a"], {"subnet": "y"}),
        ),
        (["net", "create", ""], (None, False, [""], {})),  # click passes "" on: a name error
        # everything else is the click CLI's
        (["net", "create", "a", "--bridge", "br0"], None),
        (["net", "create", "a", "--nic", "eth0"], None),
        (["net", "create", "a", "--yes"], None),
        (["net", "create", "--help"], None),
        (["net", "create", "a", "-h"], None),
        (["net", "create"], None),
        (["net", "create", "a", "b"], None),
        (["net", "create", "a", "--subnet"], None),
        (["net", "create", "a", "--subnet", "--json"], None),  # click: the subnet "--json"
        (["net", "create", "-x"], None),
        (["net", "create", "--", "a"], None),
        (["net", "create", "a", "--nat=1"], None),
        (["net", "create", "a", "-c", "u"], None),
        (["net", "--json", "create", "a"], None),
        (["--debug", "net", "create", "a"], None),
        (["net", "list"], None),
        (["net"], None),
    ],
)
def test_only_plain_net_create_takes_the_fast_path(argv: list[str], want: object) -> None:
    call = parse_fast(argv)
    got = None if call is None else (call.uri, call.as_json, call.arguments, call.options)
    assert got == want
    assert call is None or call.words == ("net", "create")


def _run(
    code: str, *argv: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="120", **(extra_env or {}))
    env.pop("KVMLAB_CONNECT", None)
    env.pop("KVMLAB_HOST_NETNS", None)
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=False
    )


# The fast one fails the test if it hands the command line to click.
FAST = (
    "import sys; sys.argv[0]='kvmlab'; from kvmlab.cli import fast; "
    "assert fast.parse_fast(sys.argv[1:]), 'not the fast path'; fast.entry()"
)
SLOW = "import sys; from kvmlab.cli.main import main; sys.exit(main())"


def assert_same(
    fast: subprocess.CompletedProcess[str], slow: subprocess.CompletedProcess[str]
) -> None:
    """Both paths printed the same bytes on stdout and stderr and exited alike."""
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        slow.returncode,
        slow.stdout,
        slow.stderr,
    )


@pytest.mark.parametrize(
    ("argv", "code", "shows"),
    [
        (("net", "create", "n1", "--subnet", "10.71.0.0/24"), 0, "created nat network n1"),
        (("--json", "net", "create", "n1", "--subnet=10.71.0.0/24"), 0, '"name": "n1"'),
        (
            ("net", "create", "n1", "--isolated", "--subnet", "10.71.0.0/24", "--json"),
            0,
            '"mode": "isolated"',
        ),
        (
            (
                "net",
                "create",
                "n1",
                "--subnet",
                "10.71.0.0/24",
                "--dhcp-range",
                "10.71.0.100-10.71.0.199",
                "--domain",
                "lab2",
                "--json",
            ),
            0,
            '"10.71.0.100"',
        ),
        (("net", "create", "n1"), 0, "created nat network n1: 10.71.0.0/24"),  # a free subnet
        (("net", "create", "bad name", "--subnet", "10.71.0.0/24"), 2, "contains ' '"),
        (("net", "create", "", "--subnet", "10.71.0.0/24"), 2, "cannot be empty"),
        (("net", "create", "n1", "--subnet", "10.71.0.1/24"), 2, "not a valid IPv4 network"),
        (("net", "create", "n1", "--subnet", "nope"), 2, "not a valid IPv4 network"),
        (("net", "create", "n1", "--subnet", "10.71.0.0/30"), 2, "too small"),
        (("net", "create", "n1", "--dhcp-range", "1-2-3"), 2, "is not FIRST-LAST"),
        (("net", "create", "lab", "--subnet", "10.71.0.0/24"), 4, "exists already"),
        (("net", "create", "n1", "--subnet", "10.70.0.0/16"), 4, "overlaps network lab"),
        (("--json", "net", "create", "lab", "--subnet", "10.71.0.0/24"), 4, "exists already"),
    ],
)
def test_fast_net_create_prints_what_the_click_command_prints(
    argv: tuple[str, ...], code: int, shows: str
) -> None:
    fast, slow = _run(FAST, "-c", URI, *argv), _run(SLOW, "-c", URI, *argv)
    assert_same(fast, slow)
    assert fast.returncode == code
    assert shows in fast.stdout + fast.stderr
    if code == 0 and "--json" in argv:
        assert json.loads(fast.stdout)["active"] is True


def test_fast_net_create_reports_a_daemon_that_is_down_like_click() -> None:
    argv = ("-c", DOWN, "net", "create", "n1", "--subnet", "10.71.0.0/24")
    fast, slow = _run(FAST, *argv), _run(SLOW, *argv)
    assert_same(fast, slow)
    assert fast.returncode == 5
    assert fast.stderr.startswith("error: cannot reach the libvirt daemon")
