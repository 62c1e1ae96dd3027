"""Per-machine operation locks: one snapshot operation on a machine at a time.

A lock is an ``flock`` on ``STATE_DIR/locks/<uri-hash>-<machine>.lock``, taken without
waiting: the second operation fails at once with :class:`~kvmlab.errors.Busy` naming the
first (what it does, its pid, since when), which the holder writes into the file. The kernel
drops the lock when the holder exits, however it exits, so a crash leaves no stale lock.

This serialises kvmlab processes sharing a state directory on one client host; libvirt's own
job lock still protects the domain against everything else (virsh, another client).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from kvmlab import errors


def lock_path(state_dir: Path, uri: str, machine: str) -> Path:
    """Where the lock of ``machine`` on ``uri`` lives."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return state_dir / "locks" / f"{digest}-{machine}.lock"


@contextmanager
def machine_lock(state_dir: Path, uri: str, machine: str, operation: str) -> Iterator[None]:
    """Hold the machine's lock for the block, or raise :class:`Busy` at once."""
    path = lock_path(state_dir, uri, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise errors.Busy(
                f"VM {machine} is busy: {holder}",
                hint="wait until that operation ends, then retry",
            ) from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{operation} by pid {os.getpid()} since {since}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays (unlinking races with a waiting opener)
    finally:
        os.close(fd)  # releases the flock


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    return text or "another kvmlab operation holds its lock"
