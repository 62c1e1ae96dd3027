"""File locks (kvmlab.services.locks): Busy at once naming the holder; removable lock files."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.services import locks


def test_second_holder_is_told_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    busy = pytest.raises(errors.Busy, match=r"x is busy: first job by pid \d+ since 20")
    with (
        locks.file_lock(path, "first job", "x is busy"),
        busy,
        locks.file_lock(path, "second job", "x is busy"),
    ):
        pass
    with locks.file_lock(path, "second job", "x is busy"):
        assert "second job" in path.read_text()
    assert path.exists() and path.read_text() == ""  # kept, emptied


def test_a_removable_lock_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "y.lock"
    with locks.file_lock(path, "job", "y is busy", remove=True):
        assert path.exists()
    assert not path.exists()
    with pytest.raises(RuntimeError), locks.file_lock(path, "job", "y is busy", remove=True):
        raise RuntimeError("the block failed")
    assert not path.exists()


def test_a_lock_file_removed_under_a_late_opener_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The holder finishes (and removes the file) between our open and our flock: the flock
    # then succeeds on a deleted file, which locks nothing. file_lock must notice and lock the
    # file that is at the path now.
    path = tmp_path / "z.lock"
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            path.unlink()
            path.write_text("")  # a later process created the file again
        real_flock(fd, op)

    monkeypatch.setattr("fcntl.flock", flock)
    with locks.file_lock(path, "job", "z is busy", remove=True):
        assert len(calls) == 2
        assert os.fstat(calls[1]).st_ino == path.stat().st_ino
    assert not path.exists()
