"""The user-data ``vm create`` puts into the NoCloud seed, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvmlab import errors
from kvmlab.image.seed import make_nocloud_seed
from kvmlab.services import cloudinit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmlabkvmlabkvmlabkvmlabkvmlabkvmlabkvmlab me@host"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".ssh").mkdir()
    return tmp_path


def _load(text: str | None) -> dict[str, object]:
    assert text is not None and text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_user_with_key_password_packages_and_commands(home: Path) -> None:
    key = home / "k.pub"
    key.write_text(KEY + "\n")
    tricky = "echo 'a: b # not a comment' && touch /x"
    text = cloudinit.user_data_for(
        home=home, user="alice", ssh_key=key, password_hash="$6$salt$hash:with#chars",
        packages=("nginx", "curl"), run=(tricky,),
    )  # fmt: skip
    doc = _load(text)
    assert doc["users"][0] == "default"  # type: ignore[index]
    alice = doc["users"][1]  # type: ignore[index]
    assert alice["name"] == "alice"
    assert alice["ssh_authorized_keys"] == [KEY]
    assert alice["passwd"] == "$6$salt$hash:with#chars"
    assert alice["lock_passwd"] is False
    assert doc["ssh_pwauth"] is True
    assert doc["packages"] == ["nginx", "curl"]
    assert doc["runcmd"] == [tricky]


def test_default_key_goes_to_the_default_user(home: Path) -> None:
    (home / ".ssh" / "id_ed25519.pub").write_text(KEY)
    doc = _load(cloudinit.user_data_for(home=home))
    assert doc == {"ssh_authorized_keys": [KEY]}


def test_nothing_asked_and_no_key_keeps_the_seed_default(home: Path) -> None:
    assert cloudinit.user_data_for(home=home) is None


def test_missing_key_file_is_a_clear_error(home: Path) -> None:
    with pytest.raises(errors.InvalidInput, match="no SSH public key file"):
        cloudinit.user_data_for(home=home, ssh_key=home / "nope.pub")


def test_private_key_is_refused(home: Path) -> None:
    k = home / "id"
    k.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxxx\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(errors.InvalidInput, match="is a private key"):
        cloudinit.read_ssh_key(k)


def test_user_data_file_is_used_as_is(home: Path) -> None:
    f = home / "ud.yaml"
    f.write_text("#cloud-config\npackages: [htop]\n")
    assert cloudinit.user_data_for(home=home, user_data=f) == f.read_text()
    script = home / "ud.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert cloudinit.user_data_for(home=home, user_data=script) == script.read_text()


def test_invalid_user_data_yaml_names_the_line(home: Path) -> None:
    f = home / "ud.yaml"
    f.write_text("#cloud-config\npackages:\n  - htop\n runcmd: [oops\n")
    with pytest.raises(errors.InvalidInput, match=r"not valid YAML at line 4"):
        cloudinit.user_data_for(home=home, user_data=f)


def test_user_data_without_header_or_mapping_is_refused(home: Path) -> None:
    f = home / "ud.yaml"
    f.write_text("packages: [htop]\n")
    with pytest.raises(errors.InvalidInput, match="does not start with '#cloud-config'"):
        cloudinit.load_user_data(f)
    f.write_text("#cloud-config\n- a\n- b\n")
    with pytest.raises(errors.InvalidInput, match="must be a YAML mapping"):
        cloudinit.load_user_data(f)


def test_user_data_cannot_be_mixed_with_generating_options(home: Path) -> None:
    f = home / "ud.yaml"
    f.write_text("#cloud-config\n{}\n")
    with pytest.raises(errors.InvalidInput, match="cannot be combined"):
        cloudinit.user_data_for(home=home, user="bob", user_data=f)


def test_network_config_is_validated(home: Path) -> None:
    f = home / "net.yaml"
    f.write_text("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n")
    assert cloudinit.load_network_config(f) == f.read_text()
    f.write_text("version: 2\nethernets:\n\teth0: {}\n")
    with pytest.raises(errors.InvalidInput, match="line 3"):
        cloudinit.load_network_config(f)
    with pytest.raises(errors.InvalidInput, match="no file"):
        cloudinit.load_network_config(home / "missing.yaml")


def test_bad_user_name_is_refused(home: Path) -> None:
    with pytest.raises(errors.InvalidInput, match="user name"):
        cloudinit.user_data_for(home=home, user="root; rm -rf /")


def test_generated_user_data_lands_in_the_seed(home: Path) -> None:
    import io

    import pycdlib

    text = cloudinit.user_data_for(home=home, packages=("htop",))
    seed = make_nocloud_seed("iid-1", "h", user_data=text)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(seed))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, joliet_path="/user-data")
    iso.close()
    assert out.getvalue().decode() == text
