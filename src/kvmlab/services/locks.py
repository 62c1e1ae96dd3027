"""Operation locks: one snapshot operation on a machine at a time, one download of a URL.

A lock is an ``flock`` on a file (a machine's: ``STATE_DIR/locks/<uri-hash>-<machine>.lock``),
taken without waiting: the second operation fails at once with :class:`~kvmlab.errors.Busy`
naming the first (what it does, its pid, since when), which the holder writes into the file.
The kernel drops the lock when the holder exits, however it exits, so a crash leaves no stale
lock.

This serialises kvmlab processes sharing a state directory on one client host; libvirt's own
job lock still protects the domain against everything else (virsh, another client).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmlab import errors
from kvmlab.timestamps import utc_now


def lock_path(state_dir: Path, uri: str, machine: str) -> Path:
    """Where the lock of ``machine`` on ``uri`` lives."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return state_dir / "locks" / f"{digest}-{machine}.lock"


@contextmanager
def machine_lock(state_dir: Path, uri: str, machine: str, operation: str) -> Iterator[None]:
    """Hold the machine's lock for the block, or raise :class:`Busy` at once."""
    with file_lock(lock_path(state_dir, uri, machine), operation, f"VM {machine} is busy"):
        yield


@contextmanager
def file_lock(path: Path, operation: str, busy: str, remove: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` for the block, or raise :class:`Busy` (``busy``: the holder)
    at once. With ``remove`` the file is deleted when the block ends, so nothing is left; a
    process that opened it just before is then holding a deleted file, sees that after its
    flock, and locks the new one instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise errors.Busy(
                f"{busy}: {holder}",
                hint="wait until that operation ends, then retry",
            ) from None
        if not remove or _is_file_at(fd, path):
            break
        os.close(fd)
    try:
        since = utc_now()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{operation} by pid {os.getpid()} since {since}\n".encode(), 0)
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)  # while still locked
            else:
                os.ftruncate(fd, 0)  # the file stays (unlinking races with a waiting opener)
    finally:
        os.close(fd)  # releases the flock


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    return text or "another kvmlab operation holds its lock"
