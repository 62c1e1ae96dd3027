"""libvirt errors become kvmlab errors once, at the adapter's boundary."""

from __future__ import annotations

import libvirt
import pytest

from kvmlab import errors
from kvmlab.libvirt.conn import map_errors, open_connection


def test_unknown_domain_becomes_machine_not_found() -> None:
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(errors.MachineNotFound) as err, map_errors(
            "test:///default", not_found="no VM named 'nope' on test:///default"
        ):
            conn.lookupByName("nope")
    finally:
        conn.close()
    assert str(err.value).startswith("no VM named 'nope' on test:///default")
    assert isinstance(err.value.__cause__, libvirt.libvirtError)


def test_unknown_network_becomes_network_not_found() -> None:
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(errors.NetworkNotFound), map_errors("test:///default"):
            conn.networkLookupByName("nope")
    finally:
        conn.close()


def test_stopping_a_stopped_domain_is_invalid_state() -> None:
    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")  # the test driver's domain runs from the start
        dom.destroy()
        with pytest.raises(errors.InvalidState), map_errors("test:///default", what="kill"):
            dom.destroy()
    finally:
        conn.close()


def test_unreachable_daemon_names_uri_and_how_to_start(tmp_path: object) -> None:
    uri = f"qemu:///system?socket={tmp_path}/no-such-sock"
    with pytest.raises(errors.DaemonUnavailable) as err:
        open_connection(uri)
    assert uri in err.value.message
    assert err.value.hint and "libvirtd" in err.value.hint
    assert err.value.exit_status is errors.ExitStatus.UNAVAILABLE
