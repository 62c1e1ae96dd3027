"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """Where downloaded Debian packages and built images are kept between test runs."""
    path = Path(os.environ.get("KVMLAB_TEST_CACHE", "/var/cache/kvmlab-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path
