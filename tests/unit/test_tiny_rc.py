"""The tiny image's NoCloud meta-data reader (``tiny-rc meta FILE``), run with the host's sh.

The guest runs the same script under busybox sh (the boot test reads the hostname and
instance-id it set); the reader uses POSIX shell built-ins only, so any POSIX sh runs it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmlab.image.seed import make_nocloud_seed

RC = Path(__file__).resolve().parents[2] / "src" / "kvmlab" / "image" / "tiny_rc.sh"
SH = shutil.which("sh")
pytestmark = pytest.mark.skipif(SH is None, reason="needs a POSIX sh")


def _meta(tmp_path: Path, text: str) -> str:
    f = tmp_path / "meta-data"
    f.write_text(text)
    result = subprocess.run(
        [str(SH), str(RC), "meta", str(f)], capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.mark.parametrize(
    ("text", "hostname", "instance_id"),
    [
        ("instance-id: iid-1\nlocal-hostname: web-1\n", "web-1", "iid-1"),
        ('instance-id: "i: 3"\nlocal-hostname: "web 1"\n', "web 1", "i: 3"),
        ('{"instance-id": "iid-9", "local-hostname": "db"}', "db", "iid-9"),
        ("  local-hostname :  'x.y'  \ninstance-id:abc", "x.y", "abc"),  # no final newline
        ("local-hostname: a # comment\n", "a", ""),
        ("instance-id: only\n", "", "only"),
    ],
)
def test_meta_data_gives_hostname_and_instance_id(
    tmp_path: Path, text: str, hostname: str, instance_id: str
) -> None:
    assert _meta(tmp_path, text) == f"hostname={hostname}\ninstance-id={instance_id}\n"


def test_reads_what_kvmlab_writes_into_a_seed(tmp_path: Path) -> None:
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(make_nocloud_seed("iid-kvmlab-7", "web-7")))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path="/meta-data")
    iso.close()
    assert _meta(tmp_path, out.getvalue().decode()) == "hostname=web-7\ninstance-id=iid-kvmlab-7\n"


def test_a_missing_file_fails(tmp_path: Path) -> None:
    result = subprocess.run([str(SH), str(RC), "meta", str(tmp_path / "none")], check=False)
    assert result.returncode == 1
