"""Connections by URI, libvirt's event loop, and translation of libvirt errors.

libvirt errors are translated here, once, into kvmlab exceptions keyed on the libvirt error
code (the way httpx's ``map_exceptions`` does it), so nothing above this package sees
``libvirt.libvirtError``.
"""

from __future__ import annotations

import _thread
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from kvmlab import errors

# _thread, not threading: net create and ls never start the loop (threading costs ~1.4 ms)
_event_loop_lock = _thread.allocate_lock()
_event_loop_started = False


def _silence(_ctx: Any, _err: Any) -> None:
    """libvirt's default handler prints every error to stderr; kvmlab reports them itself."""


libvirt.registerErrorHandler(_silence, None)


def ensure_event_loop() -> None:
    """Start libvirt's default event loop in a daemon thread (once per process).

    Needed for keepalives, domain events and console streams; must run before the connection
    that uses them is opened.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        import threading

        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def daemon_hint(uri: str) -> str:
    """How to start the daemon a URI points at."""
    if uri.startswith("qemu:///system") or uri == "qemu:///system":
        return (
            "start it with `kvmlab host setup` (or `systemctl start libvirtd`; "
            "without systemd: `virtlogd -d && libvirtd -d`)"
        )
    if "+ssh://" in uri:
        return "check that the host is reachable over ssh and that libvirtd runs there"
    return "check that the libvirt daemon for this URI is running"


def open_connection(uri: str) -> libvirt.virConnect:
    """Open a read-write connection, translating failures into :class:`DaemonUnavailable`."""
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise errors.DaemonUnavailable(
            f"cannot reach the libvirt daemon at {uri}: {_short(e)}", hint=daemon_hint(uri)
        ) from e


def _short(e: libvirt.libvirtError) -> str:
    msg = e.get_error_message() or str(e)
    return msg.strip().rstrip(".")


_NOT_FOUND: dict[int, type[errors.NotFound]] = {
    libvirt.VIR_ERR_NO_DOMAIN: errors.MachineNotFound,
    libvirt.VIR_ERR_NO_NETWORK: errors.NetworkNotFound,
    libvirt.VIR_ERR_NO_STORAGE_POOL: errors.PoolNotFound,
    libvirt.VIR_ERR_NO_STORAGE_VOL: errors.VolumeNotFound,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT: errors.SnapshotNotFound,
}

_CONFLICT: dict[int, type[errors.Conflict]] = {
    libvirt.VIR_ERR_OPERATION_INVALID: errors.InvalidState,
    libvirt.VIR_ERR_DOM_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_STORAGE_VOL_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_NETWORK_EXIST: errors.AlreadyExists,
}

_AGENT = {
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
}

_DAEMON_GONE = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
}


@contextmanager
def map_errors(
    uri: str, *, what: str | None = None, not_found: str | None = None, hint: str | None = None
) -> Iterator[None]:
    """Re-raise libvirt errors inside the block as the most specific kvmlab error.

    ``not_found`` is the message used when libvirt says the object does not exist (e.g.
    "no VM named web on qemu:///system"); ``what`` prefixes other messages ("start web").
    """
    try:
        yield
    except libvirt.libvirtError as e:
        raise translate(e, uri, what=what, not_found=not_found, hint=hint) from e


def translate(
    e: libvirt.libvirtError,
    uri: str,
    *,
    what: str | None = None,
    not_found: str | None = None,
    hint: str | None = None,
) -> errors.KvmlabError:
    """Return the kvmlab exception for a libvirt error."""
    code = e.get_error_code()
    detail = _short(e)
    prefix = f"{what}: " if what else ""
    if code in _NOT_FOUND:
        return _NOT_FOUND[code](not_found or f"{prefix}{detail}", hint=hint)
    if code in _CONFLICT or (code == libvirt.VIR_ERR_OPERATION_FAILED and "exists" in detail):
        cls = _CONFLICT.get(code, errors.AlreadyExists)
        return cls(f"{prefix}{detail}", hint=hint)
    if code in _AGENT:
        return errors.AgentUnavailable(
            f"{prefix}the guest agent does not answer ({detail})",
            hint=hint or "the guest needs qemu-guest-agent running; wait for it to boot",
        )
    if code in _DAEMON_GONE or e.get_error_domain() == libvirt.VIR_FROM_RPC:
        return errors.DaemonUnavailable(
            f"{prefix}lost the libvirt daemon at {uri}: {detail}", hint=daemon_hint(uri)
        )
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return errors.Busy(f"{prefix}{detail}", hint=hint or "another operation holds it; retry")
    return errors.OperationFailed(f"{prefix}{detail}", hint=hint)
