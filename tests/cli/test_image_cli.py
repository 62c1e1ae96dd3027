"""``kvmlab image ...`` (issue 6) and ``vm create`` cloud-init errors, on the test driver."""

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
    e = Env(uri=f"test://{NODE}", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    yield e
    e.close()


def run(capsys: pytest.CaptureFixture[str], env: Env, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv), env=env)
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_counts_dependents(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "image", "list", "--json")
    assert rc == 0
    assert {v["name"]: v["dependents"] for v in json.loads(out)} == {"tiny": 2}
    rc, out, _ = run(capsys, env, "image", "list")
    assert "USED BY" in out


def test_rm_refused_while_machines_depend(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "image", "rm", "tiny")
    assert rc == ExitStatus.CONFLICT
    assert "used by 2 machine(s): db, web" in err
    assert "Traceback" not in err


def test_pull_unknown_name_lists_catalogue(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "image", "pull", "plan9")
    assert rc == ExitStatus.NOT_FOUND
    assert "debian-12" in err and "ubuntu-24.04" in err


def test_catalog_json(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, env, "image", "catalog", "--json")
    assert rc == 0
    assert any(e["name"] == "debian-12" and e["checksums_url"].endswith("SHA512SUMS")
               for e in json.loads(out))  # fmt: skip


def test_import_text_file_refused(capsys, env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "readme.txt"
    f.write_text("hello\n" * 50)
    rc, _, err = run(capsys, env, "image", "import", str(f))
    assert rc == ExitStatus.USAGE
    assert "readme.txt is not a disk image" in err


def test_vm_create_missing_ssh_key(capsys, env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "new", "-i", "tiny", "--ssh-key",
                     str(tmp_path / "none.pub"))  # fmt: skip
    assert rc == ExitStatus.USAGE
    assert "no SSH public key file" in err


def test_vm_create_bad_user_data_names_line(capsys, env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "ud"
    f.write_text("#cloud-config\nusers: [a\n")
    rc, _, err = run(capsys, env, "vm", "create", "new", "-i", "tiny", "--user-data", str(f))
    assert rc == ExitStatus.USAGE
    assert "not valid YAML at line" in err


def test_vm_create_needs_image_or_cdrom(capsys, env) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, env, "vm", "create", "new")
    assert rc == ExitStatus.USAGE
    assert "--cdrom" in err
    rc, _, err = run(capsys, env, "vm", "create", "new", "--cdrom", "tiny")
    assert rc == ExitStatus.USAGE
    assert "--cdrom needs --disk" in err
