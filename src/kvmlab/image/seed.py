"""NoCloud seeds: the ISO9660 image (label ``cidata``) that cloud-init's NoCloud datasource reads.

The same seed serves the built-in tiny image (which reads ``local-hostname`` and
``instance-id`` from ``meta-data``) and real cloud images running cloud-init. Built in Python
with pycdlib, so no ``genisoimage``/``xorriso`` is needed.
"""

from __future__ import annotations

import io
import json
import re

import pycdlib

from kvmlab.errors import InvalidInput

SEED_LABEL = "cidata"
DEFAULT_USER_DATA = "#cloud-config\n{}"
PAD_SECTORS = 150
# Plain YAML scalars for these; anything else is written JSON-quoted (valid YAML too).
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def make_nocloud_seed(
    instance_id: str,
    hostname: str,
    user_data: str | None = None,
    network_config: str | None = None,
) -> bytes:
    """An ISO9660 image (label ``cidata``, Joliet + Rock Ridge) holding a NoCloud seed.

    Files: ``meta-data`` (``instance-id`` and ``local-hostname``), ``user-data`` (default
    ``#cloud-config`` with an empty mapping) and, when given, ``network-config``.
    """
    for what, value in (("instance id", instance_id), ("hostname", hostname)):
        if not value or any(ord(c) < 32 for c in value):
            raise InvalidInput(f"the seed's {what} {value!r} is empty or has control characters")
    meta_data = f"instance-id: {_scalar(instance_id)}\nlocal-hostname: {_scalar(hostname)}\n"
    files = {
        "meta-data": meta_data,
        "user-data": DEFAULT_USER_DATA if user_data is None else user_data,
    }
    if network_config is not None:
        files["network-config"] = network_config

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for name, text in files.items():
        data = text.encode()
        iso_name = "/" + name.upper().replace("-", "_") + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    # Padding as genisoimage adds by default: blkid-style probes (busybox findfs in the tiny
    # image) read 68 KiB from the start of the device and give up on anything shorter.
    return out.getvalue() + bytes(PAD_SECTORS * 2048)


def _scalar(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else json.dumps(value)
