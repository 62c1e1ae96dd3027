"""Fixtures for layer-3 tests: a private libvirtd in a network namespace (tests/sandbox.py).

Set ``KVMLAB_SANDBOX_LOGS=DIR`` to keep the session sandbox's daemon logs in DIR when a test
failed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox import Sandbox, cleanup_stale_sandboxes

SANDBOX_PREFIX = "kvmlab-t"
REQUIRED_BINARIES = (
    "ip", "unshare", "mount", "umount", "libvirtd", "virtlogd", "qemu-system-x86_64", "dnsmasq",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs root, a real libvirtd and QEMU (run inside a private network "
        "namespace)",
    )


def sandbox_unavailable_reason() -> str | None:
    """Why the sandbox cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, a system libvirtd)"
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        return f"integration tests need these programs: {', '.join(missing)}"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "integration tests need libvirt-python"
    return None


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A started Sandbox shared by the session; torn down at the end, even on Ctrl-C."""
    reason = sandbox_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    logs = os.environ.get("KVMLAB_SANDBOX_LOGS")
    box = Sandbox(SANDBOX_PREFIX, keep_logs_on_failure=Path(logs) if logs else None)
    box.start()
    try:
        yield box
    finally:
        box.close(failed=request.session.testsfailed > 0)


@pytest.fixture
def sandbox_conn(sandbox: Sandbox) -> Iterator[Any]:
    """A ``libvirt.virConnect`` on the session sandbox, closed after the test."""
    import libvirt

    conn = libvirt.open(sandbox.uri)
    try:
        yield conn
    finally:
        conn.close()
