"""NoCloud seeds: the ISO read back with pycdlib shows what cloud-init and the tiny image read."""

from __future__ import annotations

import io

import pycdlib
import pytest

from kvmlab.errors import InvalidInput
from kvmlab.image.seed import make_nocloud_seed


def _open(seed: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(seed))
    return iso


def _read(iso: pycdlib.PyCdlib, name: str, how: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **{how: "/" + name})
    return out.getvalue().decode()


def _names(iso: pycdlib.PyCdlib, how: str) -> set[str]:
    entries = iso.list_children(**{how: "/"})
    names = set()
    for entry in entries:
        if entry.is_dot() or entry.is_dotdot():
            continue
        if how == "rr_path":
            names.add(entry.rock_ridge.name().decode())
        else:
            names.add(entry.file_identifier().decode("utf-16-be"))
    return names


def test_label_is_cidata_in_primary_and_joliet_descriptors() -> None:
    iso = _open(make_nocloud_seed("iid-1", "web-1"))
    try:
        assert iso.pvd.volume_identifier.decode().rstrip() == "cidata"
        joliet = iso.joliet_vd
        assert joliet is not None
        assert joliet.volume_identifier.decode("utf-16-be").rstrip() == "cidata"
        assert iso.has_rock_ridge()
    finally:
        iso.close()


def test_meta_data_and_default_user_data() -> None:
    iso = _open(make_nocloud_seed("iid-1", "web-1"))
    try:
        for how in ("rr_path", "joliet_path"):
            assert _names(iso, how) == {"meta-data", "user-data"}
            assert _read(iso, "meta-data", how) == "instance-id: iid-1\nlocal-hostname: web-1\n"
            assert _read(iso, "user-data", how) == "#cloud-config\n{}"
    finally:
        iso.close()


def test_user_data_and_network_config_when_given() -> None:
    user_data = "#cloud-config\npackages: [htop]\n"
    network = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
    iso = _open(make_nocloud_seed("iid-2", "db", user_data=user_data, network_config=network))
    try:
        assert _names(iso, "rr_path") == {"meta-data", "user-data", "network-config"}
        assert _read(iso, "user-data", "rr_path") == user_data
        assert _read(iso, "network-config", "joliet_path") == network
    finally:
        iso.close()


def test_values_that_are_not_plain_yaml_are_quoted() -> None:
    iso = _open(make_nocloud_seed("i: 3", "web 1"))
    try:
        meta = _read(iso, "meta-data", "rr_path")
        assert meta == 'instance-id: "i: 3"\nlocal-hostname: "web 1"\n'
    finally:
        iso.close()


def test_seed_is_padded_for_blkid_style_probes() -> None:
    # busybox findfs (in the tiny image) skips devices shorter than 68 KiB.
    seed = make_nocloud_seed("iid-1", "web-1")
    assert len(seed) % 2048 == 0
    assert len(seed) >= 69632


@pytest.mark.parametrize(("instance_id", "hostname"), [("", "h"), ("i", ""), ("i", "a\nb")])
def test_empty_or_multiline_values_are_refused(instance_id: str, hostname: str) -> None:
    with pytest.raises(InvalidInput):
        make_nocloud_seed(instance_id, hostname)
