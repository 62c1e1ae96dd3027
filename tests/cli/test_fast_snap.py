"""The console script's click-free ``snap create`` / ``snap revert`` path must behave exactly
like the click commands: same bytes on stdout and stderr, same exit code, successes and errors.

Both run against libvirt's test driver (a private copy of tests/data/cli/node-snapshot.xml per
process): machine ``web`` runs and has memory snapshot ``s1``; ``db`` is stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmlab.cli.fast import parse_fast
from tests.cli.test_fast_net import FAST, SLOW, _run, assert_same

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node-snapshot.xml"
URI = f"test://{NODE}"


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["snap", "create", "web"], (("snap", "create"), ["web"], {})),
        (["snap", "create", "web", "s2"], (("snap", "create"), ["web", "s2"], {})),
        (
            ["snap", "create", "web", "s2", "--memory", "-m", "before upgrade"],
            (
                ("snap", "create"),
                ["web", "s2"],
                {"kind": "memory", "description": "before upgrade"},
            ),
        ),
        (
            ["snap", "create", "--disk-only", "web", "--description=x y"],
            (("snap", "create"), ["web"], {"kind": "disk", "description": "x y"}),
        ),
        # as in click, the last of --memory/--disk-only wins
        (
            ["snap", "create", "web", "--memory", "--disk-only"],
            (("snap", "create"), ["web"], {"kind": "disk"}),
        ),
        (["snap", "revert", "web", "s1"], (("snap", "revert"), ["web", "s1"], {})),
        (
            ["snap", "revert", "web", "s1", "--start"],
            (("snap", "revert"), ["web", "s1"], {"start": "1"}),
        ),
        # everything else is the click CLI's
        (["snap", "create"], None),
        (["snap", "create", "web", "s2", "s3"], None),
        (["snap", "create", "web", "-m"], None),
        (["snap", "create", "web", "-m", "--memory"], None),  # click: the description "--memory"
        (["snap", "create", "web", "-m=x"], None),  # click: the description "=x"
        (["snap", "create", "web", "-mx"], None),
        (["snap", "create", "web", "--help"], None),
        (["snap", "revert", "web"], None),
        (["snap", "revert", "web", "s1", "--start=1"], None),
        (["snap", "revert", "web", "--", "s1"], None),
        (["snap", "list", "web"], None),
        (["snap", "delete", "web", "s1"], None),
    ],
)
def test_only_plain_snap_create_and_revert_take_the_fast_path(
    argv: list[str], want: object
) -> None:
    call = parse_fast(argv)
    got = None if call is None else (call.words, call.arguments, call.options)
    assert got == want


@pytest.mark.parametrize(
    ("argv", "code", "shows"),
    [
        (("snap", "create", "web", "s2"), 0, "created memory snapshot s2 of web"),
        (("snap", "create", "web", "s2", "-m", "note"), 0, "created memory snapshot s2 of web"),
        (("--json", "snap", "create", "web", "s2", "--memory"), 0, '"name": "s2"'),
        (("snap", "create", "db", "d1"), 0, "created disk snapshot d1 of db"),
        (("snap", "create", "db", "d1", "--memory"), 4, "db is stopped"),
        (("snap", "create", "web", "s1"), 4, "has a snapshot named 's1' already"),
        (("snap", "create", "web", "bad name"), 2, "contains ' '"),
        (("snap", "create", "nosuch", "x"), 3, "no VM named 'nosuch'"),
        (("snap", "revert", "web", "s1"), 0, "reverted web to s1; it is running"),
        (("--json", "snap", "revert", "web", "s1"), 0, '"state": "running"'),
        (("snap", "revert", "web", "nosuch"), 3, "no snapshot named 'nosuch'"),
        (("snap", "revert", "nosuch", "s1"), 3, "no VM named 'nosuch'"),
    ],
)
def test_fast_snap_commands_print_what_the_click_commands_print(
    argv: tuple[str, ...], code: int, shows: str
) -> None:
    fast, slow = _run(FAST, "-c", URI, *argv), _run(SLOW, "-c", URI, *argv)
    if code == 0 and argv[:3] == ("--json", "snap", "create"):
        # the two snapshots are taken a moment apart: their creation times may differ by a
        # second; every other byte must be the same
        f, s = json.loads(fast.stdout), json.loads(slow.stdout)
        assert abs(f.pop("created") - s.pop("created")) <= 2
        assert (fast.returncode, f, fast.stderr) == (slow.returncode, s, slow.stderr)
    else:
        assert_same(fast, slow)
    assert fast.returncode == code, fast.stderr
    assert shows in fast.stdout + fast.stderr
    if code == 0 and argv[0] == "--json":
        assert json.loads(fast.stdout)
