"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite tests/data/golden/*.xml from the current output instead of comparing",
    )


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """Where downloaded Debian packages and built images are kept between test runs."""
    path = Path(os.environ.get("KVMLAB_TEST_CACHE", "/var/cache/kvmlab-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path
