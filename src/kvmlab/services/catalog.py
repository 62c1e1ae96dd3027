"""The image catalogue: short names for official cloud images and their checksum files.

``kvmlab image pull debian-12`` looks the name up here. The URLs point at the distributions'
"latest"/"current" directories, so the checksum file is always fetched fresh next to them.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmlab import errors


class CatalogEntry(NamedTuple):
    """One image the catalogue knows: where it is and where its checksums are."""

    name: str
    url: str
    checksums_url: str
    description: str


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "debian-12",
        "https://cloud.debian.org/images/cloud/bookworm/latest/"
        "debian-12-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS",
        "Debian 12 (bookworm) generic cloud image, amd64",
    ),
    CatalogEntry(
        "debian-11",
        "https://cloud.debian.org/images/cloud/bullseye/latest/"
        "debian-11-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/bullseye/latest/SHA512SUMS",
        "Debian 11 (bullseye) generic cloud image, amd64",
    ),
    CatalogEntry(
        "ubuntu-24.04",
        "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/noble/current/SHA256SUMS",
        "Ubuntu 24.04 LTS (noble) server cloud image, amd64",
    ),
    CatalogEntry(
        "ubuntu-22.04",
        "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/jammy/current/SHA256SUMS",
        "Ubuntu 22.04 LTS (jammy) server cloud image, amd64",
    ),
)


def list_catalog() -> list[CatalogEntry]:
    """Every catalogue entry, by name."""
    return sorted(CATALOG, key=lambda e: e.name)


def lookup(name: str) -> CatalogEntry:
    """The entry called ``name``, or :class:`ImageNotFound` listing the catalogue."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in list_catalog())
    raise errors.ImageNotFound(
        f"{name!r} is neither a URL nor an image in the catalogue ({names})",
        hint="give a catalogue name or an http(s):// URL; `kvmlab image import FILE` for a "
        "local file",
    )
