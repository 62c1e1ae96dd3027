"""Validation of the names people give to machines, networks, images and snapshots.

A name ends up in libvirt XML, in volume file names on a storage pool and in shell-visible
places (bridge names, log files), so only a conservative character set is accepted, and it is
checked before anything is created.
"""

from __future__ import annotations

import re

from kvmlab.errors import InvalidInput

MAX_NAME_LENGTH = 64
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_name(name: str, kind: str = "machine") -> str:
    """Return ``name`` if it is a safe kvmlab name, else raise :class:`InvalidInput`.

    Allowed: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most
    64 characters, and never ``.`` or ``..``-containing path tricks.
    """
    rule = (
        "use letters, digits, '.', '_' and '-', start with a letter or digit, "
        f"at most {MAX_NAME_LENGTH} characters"
    )
    if not name:
        raise InvalidInput(f"a {kind} name cannot be empty", hint=rule)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"{kind} name is {len(name)} characters long, more than {MAX_NAME_LENGTH}", hint=rule
        )
    if ".." in name:
        raise InvalidInput(f"{kind} name {name!r} contains '..'", hint=rule)
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9._-]", c)})
        if name[0] in "-._":
            what = f"starts with {name[0]!r}"
        else:
            what = "contains " + ", ".join(repr(c) for c in bad)
        raise InvalidInput(f"{kind} name {name!r} {what}", hint=rule)
    return name
