"""cloud-init user-data for the NoCloud seed: generated from options, or the user's own file.

Generated YAML never interpolates user values into YAML syntax: every scalar is written
JSON-quoted (a JSON string is a valid YAML double-quoted scalar), so a password hash with
``$`` or a command with ``: #`` stays one string. User-supplied files are checked with
PyYAML's safe loader so a mistake is reported with its line number before a machine exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kvmlab import errors

CLOUD_CONFIG = "#cloud-config"
# Other user-data formats cloud-init accepts; passed through as they are.
_OTHER_FORMATS = ("#!", "#include", "#cloud-boothook", "#part-handler", "Content-Type:")
_KEY_TYPES = ("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")
_DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


@dataclass(frozen=True)
class CloudInitOptions:
    """What ``vm create`` was asked to put into the guest's user-data."""

    user: str | None = None
    ssh_keys: tuple[str, ...] = ()
    password_hash: str | None = None
    packages: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing asked for: the seed keeps its default user-data."""
        return not (self.user or self.ssh_keys or self.password_hash or self.packages
                    or self.run or self.extra)  # fmt: skip


def read_ssh_key(path: Path) -> str:
    """The one-line public key in ``path``; clear errors for a missing or private key."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError as e:
        raise errors.InvalidInput(
            f"no SSH public key file {str(path)!r}",
            hint="give an existing .pub file to --ssh-key, or create one with ssh-keygen",
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise errors.InvalidInput(f"cannot read SSH key {str(path)!r}: {e}") from e
    if "PRIVATE KEY" in text:
        raise errors.InvalidInput(
            f"{str(path)!r} is a private key", hint=f"give the public key, {path}.pub"
        )
    if not text.startswith(_KEY_TYPES) or "\n" in text:
        raise errors.InvalidInput(
            f"{str(path)!r} is not an OpenSSH public key (one line, 'ssh-ed25519 AAAA...')"
        )
    return text


def default_ssh_key(home: Path) -> Path | None:
    """The user's own public key (``~/.ssh/id_ed25519.pub``, ``id_ecdsa``, ``id_rsa``)."""
    for name in _DEFAULT_KEYS:
        if (home / ".ssh" / name).is_file():
            return home / ".ssh" / name
    found = sorted((home / ".ssh").glob("id_*.pub")) if (home / ".ssh").is_dir() else []
    return found[0] if found else None


def render_user_data(opts: CloudInitOptions) -> str:
    """``#cloud-config`` YAML for ``opts`` (keys on ``--user``, or the image's default user)."""
    q = json.dumps
    lines = [CLOUD_CONFIG]
    if opts.user:
        lines += ["users:", "  - default", f"  - name: {q(opts.user)}",
                  '    sudo: "ALL=(ALL) NOPASSWD:ALL"', '    shell: "/bin/bash"',
                  f"    lock_passwd: {'false' if opts.password_hash else 'true'}"]  # fmt: skip
        if opts.password_hash:
            lines.append(f"    passwd: {q(opts.password_hash)}")
        if opts.ssh_keys:
            lines.append("    ssh_authorized_keys:")
            lines += [f"      - {q(k)}" for k in opts.ssh_keys]
    else:
        if opts.ssh_keys:
            lines.append("ssh_authorized_keys:")
            lines += [f"  - {q(k)}" for k in opts.ssh_keys]
        if opts.password_hash:  # for the image's default user (debian, ubuntu, ...)
            lines += ["chpasswd:", "  expire: false", "  users:", '    - name: "default"',
                      f"      password: {q(opts.password_hash)}", '      type: "hash"']  # fmt: skip
    if opts.password_hash:
        lines.append("ssh_pwauth: true")
    if opts.packages:
        lines.append("packages:")
        lines += [f"  - {q(p)}" for p in opts.packages]
    if opts.run:
        lines.append("runcmd:")
        lines += [f"  - {q(c)}" for c in opts.run]
    for key, value in opts.extra.items():
        lines.append(f"{q(key)}: {q(value)}")
    return "\n".join(lines) + "\n"


def check_yaml(text: str, what: str, cloud_config: bool) -> None:
    """Parse ``text`` with PyYAML's safe loader; :class:`InvalidInput` with the line on error."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise errors.InvalidInput(f"{what} is not valid YAML{where}: {problem}") from e
    if not isinstance(doc, dict) and not (doc is None and cloud_config):
        raise errors.InvalidInput(
            f"{what} must be a YAML mapping (key: value lines), not {type(doc).__name__}"
        )


def load_user_data(path: Path) -> str:
    """A user's ``--user-data`` file: ``#cloud-config`` YAML is validated, other cloud-init
    formats (scripts, ``#include``, MIME) are passed through."""
    text = _read(path, "--user-data")
    if text.startswith(_OTHER_FORMATS):
        return text
    if not text.startswith(CLOUD_CONFIG):
        raise errors.InvalidInput(
            f"--user-data {str(path)!r} does not start with '#cloud-config'",
            hint="cloud-init ignores cloud-config without that first line; add it",
        )
    check_yaml(text, f"--user-data {str(path)!r}", cloud_config=True)
    return text


def load_network_config(path: Path) -> str:
    """A user's ``--network-config`` file (network config v1/v2 YAML), validated."""
    text = _read(path, "--network-config")
    check_yaml(text, f"--network-config {str(path)!r}", cloud_config=False)
    return text


def user_data_for(
    *,
    home: Path,
    user: str | None = None,
    ssh_key: Path | None = None,
    password_hash: str | None = None,
    packages: tuple[str, ...] = (),
    run: tuple[str, ...] = (),
    user_data: Path | None = None,
) -> str | None:
    """The seed's user-data for ``vm create``'s options (None: the seed's default).

    ``--user-data`` is used as it is and cannot be mixed with the generating options; without
    ``--ssh-key`` the user's own ``~/.ssh/id_*.pub`` (under ``home``) is installed if present.
    """
    generating = bool(user or ssh_key or password_hash or packages or run)
    if user_data is not None:
        if generating:
            raise errors.InvalidInput(
                "--user-data replaces the generated user-data; it cannot be combined with "
                "--user, --ssh-key, --password-hash, --packages or --run",
                hint="put those settings into the --user-data file",
            )
        return load_user_data(user_data)
    if user is not None:
        from kvmlab.names import validate_name

        validate_name(user, "user")
    key_file = ssh_key if ssh_key is not None else default_ssh_key(home)
    keys = (read_ssh_key(key_file),) if key_file is not None else ()
    opts = CloudInitOptions(user, keys, password_hash, packages, run)
    return None if opts.empty else render_user_data(opts)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError as e:
        raise errors.InvalidInput(f"{what}: no file {str(path)!r}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise errors.InvalidInput(f"{what}: cannot read {str(path)!r}: {e}") from e
