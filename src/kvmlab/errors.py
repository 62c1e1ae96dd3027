"""kvmlab's exceptions and exit codes.

Every error kvmlab raises is a :class:`KvmlabError` whose message tells a person what
happened and what to do. The library never exits; the CLI maps :attr:`KvmlabError.exit_status`
to a process exit code and the API to an HTTP status, each in one place.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes of the ``kvmlab`` command (documented in docs/cli.md)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFLICT = 4
    UNAVAILABLE = 5
    INTERRUPTED = 130


class KvmlabError(Exception):
    """Base of all kvmlab errors: a message a person can act on."""

    exit_status: ExitStatus = ExitStatus.ERROR
    http_status: int = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InvalidInput(KvmlabError):
    """A value given by the user is not acceptable (refused before anything is made)."""

    exit_status = ExitStatus.USAGE
    http_status = 400


class NotFound(KvmlabError):
    """Something named by the user does not exist."""

    exit_status = ExitStatus.NOT_FOUND
    http_status = 404


class MachineNotFound(NotFound):
    """No machine (libvirt domain) of that name."""


class NetworkNotFound(NotFound):
    """No libvirt network of that name."""


class ImageNotFound(NotFound):
    """No image volume of that name in kvmlab's image pool."""


class VolumeNotFound(NotFound):
    """No storage volume of that name."""


class PoolNotFound(NotFound):
    """No storage pool of that name."""


class SnapshotNotFound(NotFound):
    """No snapshot of that name."""


class Conflict(KvmlabError):
    """The operation clashes with what exists or what is running."""

    exit_status = ExitStatus.CONFLICT
    http_status = 409


class AlreadyExists(Conflict):
    """Something of that name exists already."""


class InvalidState(Conflict):
    """The object is in a state where the operation cannot run (e.g. start a running VM)."""


class Busy(Conflict):
    """Another operation holds the object."""


class DaemonUnavailable(KvmlabError):
    """The libvirt daemon behind a URI cannot be reached."""

    exit_status = ExitStatus.UNAVAILABLE
    http_status = 503


class HostNotReady(KvmlabError):
    """The host lacks something kvmlab needs (a tool, a package, a device)."""

    exit_status = ExitStatus.UNAVAILABLE
    http_status = 503


class AgentUnavailable(KvmlabError):
    """The QEMU guest agent in a machine does not answer."""

    exit_status = ExitStatus.UNAVAILABLE
    http_status = 503


class OperationFailed(KvmlabError):
    """libvirt or QEMU refused an operation for a reason not mapped more specifically."""


class Timeout(KvmlabError):
    """Waited for something that did not happen in time."""


class SnapshotUnsupported(Conflict):
    """The machine cannot hold a kvmlab snapshot (a raw disk, external snapshots, ...)."""


class HasDependents(Conflict):
    """A machine's volumes are the base of other machines' disks (linked clones)."""

    def __init__(self, message: str, dependents: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.dependents = dependents
