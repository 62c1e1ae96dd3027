"""The CLI in-process against libvirt's test driver (a per-test copy of tests/data/cli/node.xml).

These check what a person sees: output, exit codes, error messages with hints, and that no
traceback appears without --debug.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.cli.main import main
from kvmlab.env import Env
from kvmlab.errors import ExitStatus

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"
URI = f"test://{NODE}"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    """One test-driver host for the whole test: commands see each other's changes."""
    e = Env(uri=URI, state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    yield e
    e.close()


def run(
    capsys: pytest.CaptureFixture[str], env: Env | None, *argv: str
) -> tuple[int, str, str]:
    rc = main(list(argv), env=env)
    out, err = capsys.readouterr()
    return rc, out, err


def test_ls_json_lists_machines_with_state_and_image(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "ls", "--json")
    assert rc == ExitStatus.OK
    rows = {m["name"]: m for m in json.loads(out)}
    assert set(rows) == {"web", "db"}
    assert rows["web"]["state"] == "running"
    assert rows["db"]["state"] == "stopped"
    assert rows["web"]["image"] == "tiny"
    assert rows["web"]["nics"][0]["mac"] == "52:54:00:00:00:01"
    assert rows["web"]["memory"] == 256 * 1024**2


def test_global_json_flag_works_too(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "--json", "net", "list")
    assert rc == 0
    assert json.loads(out)[0]["subnet"] == "10.70.0.0/24"


def test_ls_table_for_people(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "ls")
    assert rc == 0
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "STATE", "IP", "CPUS", "MEMORY", "IMAGE", "ACCEL"]
    assert lines[0].split()[:2] == ["db", "stopped"]
    assert lines[1].split()[:2] == ["web", "running"]


def test_unknown_vm_says_so_with_hint_and_exit_code(capsys, env) -> None:  # type: ignore[no-untyped-def]
    for cmd in (["vm", "info", "ghost"], ["vm", "start", "ghost"], ["vm", "delete", "ghost"]):
        rc, out, err = run(capsys, env, *cmd)
        assert rc == ExitStatus.NOT_FOUND, cmd
        assert f"error: no VM named 'ghost' on {URI}" in err
        assert "hint: `kvmlab ls` lists the machines" in err
        assert "Traceback" not in err
        assert out == ""


def test_unknown_image_says_how_to_get_it(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "new", "--image", "nosuch")
    assert rc == ExitStatus.NOT_FOUND
    assert f"no image named 'nosuch' on {URI}" in err
    assert "kvmlab image list" in err
    rc, _, _ = run(capsys, env, "ls", "--json")
    rc, out, _ = run(capsys, env, "ls", "--json")
    assert {m["name"] for m in json.loads(out)} == {"web", "db"}  # nothing half made


@pytest.mark.parametrize(
    "name",
    ["a/b", "..", "-rf", "it's", 'x"y', "a<b", "a&b", "two words", "x" * 65],
)
def test_bad_names_are_refused_before_anything_is_made(capsys, env, name) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "--image", "tiny", "--", name)
    assert rc == ExitStatus.USAGE
    assert err.startswith("error: machine name")
    assert "hint: use letters, digits" in err
    assert "Traceback" not in err
    _, out, _ = run(capsys, env, "ls", "--json")
    assert {m["name"] for m in json.loads(out)} == {"web", "db"}
    _, out, _ = run(capsys, env, "--json", "image", "list")
    assert [v["name"] for v in json.loads(out)] == ["tiny"]


def test_existing_name_is_a_conflict(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "web", "--image", "tiny")
    assert rc == ExitStatus.CONFLICT
    assert "a VM named 'web' exists already" in err


def test_state_errors_are_conflicts_with_a_way_out(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "start", "web")
    assert (rc, "web is running already" in err) == (ExitStatus.CONFLICT, True)
    rc, _, err = run(capsys, env, "vm", "stop", "db")
    assert (rc, "db is stopped already" in err) == (ExitStatus.CONFLICT, True)
    rc, _, err = run(capsys, env, "vm", "delete", "web")
    assert rc == ExitStatus.CONFLICT
    assert "kvmlab vm delete web --force" in err


def test_start_pause_resume_kill_delete(capsys, env) -> None:  # type: ignore[no-untyped-def]
    assert run(capsys, env, "vm", "start", "db")[0] == 0
    assert run(capsys, env, "vm", "pause", "db")[0] == 0
    _, out, _ = run(capsys, env, "vm", "info", "db", "--json")
    assert json.loads(out)["state"] == "paused"
    assert run(capsys, env, "vm", "resume", "db")[0] == 0
    assert run(capsys, env, "vm", "kill", "db")[0] == 0
    rc, out, _ = run(capsys, env, "vm", "delete", "db", "--json")
    assert rc == 0
    assert json.loads(out) == {"deleted": "db", "volumes": ["kvmlab/db.qcow2"]}
    _, out, _ = run(capsys, env, "ls", "--json")
    assert [m["name"] for m in json.loads(out)] == ["web"]
    _, out, _ = run(capsys, env, "image", "list", "--json")
    assert [v["name"] for v in json.loads(out)] == ["tiny"]  # the image is never deleted


def test_stopped_daemon_names_the_uri_and_how_to_start_it(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = f"qemu:///system?socket={tmp_path}/libvirt-sock"
    rc, _, err = run(capsys, None, "-c", uri, "ls")
    assert rc == ExitStatus.UNAVAILABLE
    assert f"cannot reach the libvirt daemon at {uri}" in err
    assert "libvirtd -d" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = f"qemu:///system?socket={tmp_path}/libvirt-sock"
    rc, _, err = run(capsys, None, "--debug", "-c", uri, "ls")
    assert rc == ExitStatus.UNAVAILABLE
    assert "Traceback" in err


def test_bad_sizes_and_subnets_are_usage_errors(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "n", "--image", "tiny", "--memory", "lots")
    assert rc == ExitStatus.USAGE
    assert "--memory 'lots' is not a size" in err
    rc, _, err = run(capsys, env, "net", "create", "n2", "--subnet", "10.1.2.300/24")
    assert rc == ExitStatus.USAGE
    assert "is not a valid IPv4 network" in err
    rc, _, err = run(capsys, env, "net", "create", "n3", "--subnet", "10.70.0.128/25")
    assert rc == ExitStatus.CONFLICT
    assert "overlaps network lab (10.70.0.0/24)" in err


def test_network_with_machines_is_not_deleted_silently(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "net", "delete", "lab")
    assert rc == ExitStatus.CONFLICT
    assert "network 'lab' has machines attached: web" in err
    rc, _, err = run(capsys, env, "net", "delete", "lab", "--force")
    assert rc == 0
    assert "detached from lab: web" in err


def test_usage_error_exit_code(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "x")
    assert rc == ExitStatus.USAGE
    assert "--image" in err
