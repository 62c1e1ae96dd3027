"""Fixtures for the pure-function and XML-mapper tests.

``pytest tests/unit --regen-golden`` rewrites ``tests/data/golden/*.xml`` from the current
code; review the diff before committing it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDEN_DIR = DATA / "golden"
TESTDRIVER_NODE = DATA / "testdriver" / "node.xml"


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    """Whether golden files are rewritten rather than compared."""
    return bool(request.config.getoption("--regen-golden", default=False))


@pytest.fixture
def test_conn() -> Iterator[Any]:
    """A fresh connection to libvirt's test driver on ``tests/data/testdriver/node.xml``.

    Every open of a test-driver file URI gets its own private state, so tests never see
    each other's objects (unlike the shared ``test:///default``).
    """
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open(f"test://{TESTDRIVER_NODE}")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def validate_xml(tmp_path: Path) -> Callable[[str, str], None]:
    """Check an XML text against libvirt's RNG schema with ``virt-xml-validate``.

    The schema is ``domain``, ``network``, ``storagepool``, ``storagevol`` or
    ``domainsnapshot``. Skips the test if the tool is not installed.
    """
    tool = shutil.which("virt-xml-validate")

    def validate(xml: str, schema: str) -> None:
        if tool is None:
            pytest.skip("virt-xml-validate is not installed (apt install libvirt-clients)")
        path = tmp_path / f"{schema}.xml"
        path.write_text(xml)
        result = subprocess.run(
            [tool, "--", str(path), schema], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{schema} XML is invalid:\n{result.stderr}\n{xml}"

    return validate
