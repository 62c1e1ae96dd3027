"""``kvmlab snap ...`` in-process against libvirt's test driver: output, exit codes, hints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.cli.main import main
from kvmlab.env import Env
from kvmlab.errors import ExitStatus

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    pytest.importorskip("libvirt")
    e = Env(uri=f"test://{NODE}", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    yield e
    e.close()


def run(capsys: pytest.CaptureFixture[str], env: Env, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv), env=env)
    out, err = capsys.readouterr()
    return rc, out, err


def test_create_list_revert_delete(capsys: pytest.CaptureFixture[str], env: Env) -> None:
    assert run(capsys, env, "snap", "create", "web", "s1", "-m", "first")[0] == 0
    rc, out, _ = run(capsys, env, "snap", "create", "web", "s2", "--json")
    assert rc == 0 and json.loads(out)["parent"] == "s1"
    rc, out, _ = run(capsys, env, "snap", "list", "web")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "KIND"]
    assert lines[1].startswith("s1 ") and "first" in lines[1]
    assert lines[2].startswith("└─ s2 *")
    rc, out, _ = run(capsys, env, "snap", "list", "web", "--json")
    listed = json.loads(out)
    assert [(s["name"], s["children"], s["current"]) for s in listed] == [
        ("s1", ["s2"], False),
        ("s2", [], True),
    ]
    rc, out, _ = run(capsys, env, "snap", "revert", "web", "s1", "--json")
    assert rc == 0 and json.loads(out)["snapshot"] == "s1"
    rc, out, _ = run(capsys, env, "snap", "delete", "web", "s1")
    assert (rc, out) == (0, "deleted snapshot s1 of web\n")
    rc, out, _ = run(capsys, env, "snap", "list", "web", "--json")
    assert [(s["name"], s["parent"]) for s in json.loads(out)] == [("s2", None)]


def test_unknown_snapshot_names_it_with_a_hint(
    capsys: pytest.CaptureFixture[str], env: Env
) -> None:
    rc, out, err = run(capsys, env, "snap", "revert", "web", "nosuch")
    assert rc == ExitStatus.NOT_FOUND and out == ""
    assert err.startswith(f"error: no snapshot named 'nosuch' of VM 'web' on {env.uri}")
    assert "kvmlab snap list web" in err and "Traceback" not in err


def test_memory_snapshot_of_a_stopped_machine_is_refused(
    capsys: pytest.CaptureFixture[str], env: Env
) -> None:
    rc, _, err = run(capsys, env, "snap", "create", "db", "x", "--memory")
    assert rc == ExitStatus.CONFLICT
    assert "db is stopped: there is no memory to snapshot" in err


def test_cp_needs_exactly_one_guest_side(capsys: pytest.CaptureFixture[str], env: Env) -> None:
    rc, _, err = run(capsys, env, "cp", "a", "b")
    assert rc == ExitStatus.USAGE and "exactly one of SOURCE and DEST" in err
