"""ssh argv, ssh-config and Ansible inventory for machines on the test driver."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kvmlab import errors
from kvmlab.cli.main import main
from kvmlab.env import Env
from kvmlab.models import Address, Machine
from kvmlab.services import access

NODE = Path(__file__).resolve().parent.parent / "data" / "cli" / "node.xml"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    pytest.importorskip("libvirt")
    e = Env(uri=f"test://{NODE}", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    yield e
    e.close()


def _with_ip(machines: list[Machine], name: str, ip: str) -> list[Machine]:
    return [m._replace(addresses=(Address(ip, 24, None, "lease"),)) if m.name == name else m
            for m in machines]  # fmt: skip


def test_ssh_config_has_an_entry_per_machine_with_an_address(env: Env) -> None:
    machines = _with_ip(access.running_with_addresses(env), "web", "10.70.0.5")
    text = access.render_ssh_config(env, machines, user="alice")
    assert "Host web\n    HostName 10.70.0.5\n    User alice\n" in text
    assert "HostKeyAlias kvmlab-11111111-2222-3333-4444-555555555555" in text
    assert f"UserKnownHostsFile {env.state_dir / 'ssh' / 'known_hosts'}" in text
    assert "# db: stopped, no address" in text
    assert "Host db" not in text


def test_inventory_groups_by_network_and_image(env: Env) -> None:
    machines = _with_ip(access.running_with_addresses(env), "web", "10.70.0.5")
    doc = yaml.safe_load(access.render_inventory(machines, as_yaml=True))
    assert doc["all"]["hosts"] == {"web": {"ansible_host": "10.70.0.5"}}
    assert doc["all"]["children"]["net_lab"]["hosts"] == {"web": None}
    assert doc["all"]["children"]["image_tiny"]["hosts"] == {"web": None}
    assert json.loads(access.render_inventory(machines, as_yaml=False)) == doc


def test_cli_output(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # the test driver reports 10.70.0.3 for web's NIC (no DHCP lease: the agent/lease API)
    assert main(["inventory"], env=env) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["all"]["hosts"] == {"web": {"ansible_host": "10.70.0.3"}}
    assert main(["ssh-config", "-l", "bob"], env=env) == 0
    out = capsys.readouterr().out
    assert "Host web\n    HostName 10.70.0.3\n    User bob\n" in out
    assert "# db: stopped, no address" in out


def test_ssh_argv(env: Env) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client")
    argv = access.ssh_argv(env, "web", ["uname", "-a"], user="bob")
    assert argv[-5:] == ["bob", "--", "10.70.0.3", "uname", "-a"]
    assert "HostKeyAlias=kvmlab-11111111-2222-3333-4444-555555555555" in argv
    with pytest.raises(errors.InvalidState, match="db is stopped"):
        access.ssh_argv(env, "db")
    with pytest.raises(errors.MachineNotFound):
        access.ssh_argv(env, "nope")
