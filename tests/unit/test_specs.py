"""What the user asks for is checked before anything is made: names, sizes, MACs, subnets."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from kvmlab.errors import ExitStatus, InvalidInput
from kvmlab.specs import (
    Accel,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    format_size,
    parse_size,
)

BAD_NAMES = ["a/b", "..", "a..b", "-x", "it's", 'say"hi', "a<b", "a&b", "two words", "x" * 65,
             "", ".hidden", "a\nb"]  # fmt: skip
GOOD_NAMES = ["web", "web-1", "db_2.test", "A", "9lives", "x" * 64]
MiB, GiB = 1024**2, 1024**3


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_machine_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        MachineSpec(name=name, image="alpine")
    assert err.value.exit_status is ExitStatus.USAGE
    assert err.value.hint  # says what a good name looks like


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_image_network_and_nic_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        MachineSpec(name="web", image=name)
    with pytest.raises(InvalidInput):
        NetworkSpec(name=name)
    with pytest.raises(InvalidInput):
        NicSpec(network=name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_accepted(name: str) -> None:
    assert MachineSpec(name=name, image=name).name == name
    assert NetworkSpec(name=name).name == name


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256M", 256 * MiB), ("2G", 2 * GiB), ("1.5GiB", 1536 * MiB), ("512", 512 * MiB),
     ("1K", 1024), ("10 G", 10 * GiB), ("1T", 1024 * GiB), ("2gb", 2 * GiB), ("0.5", 512 * 1024)],
)  # fmt: skip
def test_sizes_are_parsed_into_bytes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_a_bare_number_uses_the_default_unit() -> None:
    assert parse_size("20", default_unit="G") == 20 * GiB


@pytest.mark.parametrize("text", ["0", "abc", "-1G", "1X", "", "G", "1..5G", "1 2G"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("n", "text"), [(256 * MiB, "256M"), (1536 * MiB, "1.5G"), (2 * GiB, "2G"), (512, "512B")]
)
def test_sizes_are_formatted_the_way_people_write_them(n: int, text: str) -> None:
    assert format_size(n) == text
    if not text.endswith("B"):
        assert parse_size(text) == n


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"cpus": 0}, "--cpus"), ({"cpus": 257}, "--cpus"), ({"memory": 16 * MiB}, "too small"),
     ({"disk_size": 1024}, "--disk")],
)  # fmt: skip
def test_machine_sizes_are_bounded(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        MachineSpec(name="web", image="alpine", **kwargs)


def test_machine_defaults() -> None:
    spec = MachineSpec(name="web", image="alpine")
    assert (spec.cpus, spec.memory, spec.disk_size, spec.nics) == (1, 256 * MiB, None, ())
    assert spec.effective_hostname == "web"
    assert MachineSpec(name="web", image="alpine", hostname="www").effective_hostname == "www"


@pytest.mark.parametrize("mac", ["52:54:00:12:34:56", "02:00:00:00:00:ff"])
def test_good_macs_are_accepted(mac: str) -> None:
    assert NicSpec("default", mac=mac).mac == mac


@pytest.mark.parametrize(
    "mac", ["52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56", "525400123456",
            "52:54:00:12:34:5g", "52:54:00:12:34:5", "", " 52:54:00:12:34:56"],
)  # fmt: skip
def test_bad_macs_are_refused(mac: str) -> None:
    with pytest.raises(InvalidInput, match="MAC"):
        NicSpec("default", mac=mac)


@pytest.mark.parametrize(
    "subnet", ["10.70.0.1/24", "10.70.0.0/30", "10.70.0.0/32", "300.1.1.0/24", "10.70.0.0",
               "fd00::/64", "lab", ""],
)  # fmt: skip
def test_bad_subnets_are_refused(subnet: str) -> None:
    with pytest.raises(InvalidInput, match="subnet"):
        NetworkSpec(name="lab", subnet=subnet)


def test_network_addresses_follow_the_subnet() -> None:
    spec = NetworkSpec(name="lab", subnet="192.168.50.0/24")
    assert str(spec.gateway) == "192.168.50.1"
    assert spec.effective_dhcp_range == ("192.168.50.2", "192.168.50.254")
    small = NetworkSpec(name="lab", subnet="10.0.0.0/29")
    assert small.effective_dhcp_range == ("10.0.0.2", "10.0.0.6")
    big = NetworkSpec(name="lab", subnet="10.0.0.0/8")
    assert big.effective_dhcp_range == ("10.0.0.2", "10.255.255.254")
    given = NetworkSpec(name="lab", dhcp_range=("10.70.0.100", "10.70.0.200"))
    assert given.effective_dhcp_range == ("10.70.0.100", "10.70.0.200")


def test_unknown_network_mode_is_refused() -> None:
    with pytest.raises(InvalidInput, match="mode"):
        NetworkSpec(name="lab", mode="routed")  # type: ignore[arg-type]


def test_accel_names_the_libvirt_domain_type() -> None:
    assert Accel.KVM.domain_type == "kvm"
    assert Accel.TCG.domain_type == "qemu"
    assert Accel("tcg") is Accel.TCG


def test_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidInput):
        MachineSpec(name="web\n", image="alpine")


def test_specs_are_values_that_cannot_change() -> None:
    nic = NicSpec("lab", mac="52:54:00:AA:BB:CC")
    spec = MachineSpec(name="web", image="tiny", nics=(nic,))
    same = MachineSpec("web", "tiny", nics=(NicSpec("lab", "52:54:00:aa:bb:cc"),))
    assert spec == same and hash(spec) == hash(same) and {spec: 1}[same] == 1
    assert spec != MachineSpec(name="web", image="tiny") and spec != ("web", "tiny")
    assert repr(nic) == "NicSpec(network='lab', mac='52:54:00:aa:bb:cc')"
    assert copy.deepcopy(spec) == spec and pickle.loads(pickle.dumps(spec)) == spec
    net = NetworkSpec(name="lab")
    with pytest.raises(AttributeError, match="read-only"):
        net.subnet = "10.1.0.0/24"
    with pytest.raises(AttributeError, match="read-only"):
        del net.name
    assert net.subnet == "10.70.0.0/24"
