"""The operation journal: what a multi-step operation is making, so a crash can be undone.

libvirt cannot say "these volumes belong to a clone that was never finished", so before
``kvmlab clone`` makes anything it writes a journal file under ``STATE_DIR/journal/`` naming
every machine it will make and the volumes each will own, and removes it when it is done.
A machine's domain is defined *last*, after its volumes exist, so after a crash (SIGKILL,
power loss) the journal and libvirt together tell what is left half-made: listed volumes that
no defined domain owns. The next kvmlab command deletes those (:func:`kvmlab.services.clones.
recover`).

Standard library only, and :func:`has_pending` is one ``listdir``: ``kvmlab ls`` calls it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from kvmlab.env import Env

JOURNAL_SUBDIR = "journal"
SUFFIX = ".json"


class PlannedMachine(NamedTuple):
    """A machine an operation is making, and the volumes (pool, name) it will own."""

    name: str
    volumes: tuple[tuple[str, str], ...]


class Journal(NamedTuple):
    """One in-progress operation, as read back from its file."""

    path: Path
    op: str
    uri: str
    pid: int
    pid_start: str | None
    machines: tuple[PlannedMachine, ...]

    def owner_alive(self) -> bool:
        """Whether the process that wrote it still runs (then it is not a leftover)."""
        return process_start_time(self.pid) is not None and (
            self.pid_start is None or process_start_time(self.pid) == self.pid_start
        )


def journal_dir(state_dir: Path) -> Path:
    """Where the journal files live."""
    return state_dir / JOURNAL_SUBDIR


def has_pending(state_dir: Path) -> bool:
    """Whether any journal file exists (cheap: one ``listdir``, no libvirt call)."""
    try:
        return any(n.endswith(SUFFIX) for n in os.listdir(journal_dir(state_dir)))
    except OSError:
        return False


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` (field 22 of /proc/PID/stat), None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def begin(state_dir: Path, op: str, uri: str, machines: list[PlannedMachine]) -> Path:
    """Write a journal for an operation about to start; returns its path (for :func:`end`).

    Written to a temporary file, synced and renamed, so a crash never leaves half a journal.
    """
    d = journal_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    data = {
        "op": op,
        "uri": uri,
        "pid": pid,
        "pid_start": process_start_time(pid),
        "machines": [{"name": m.name, "volumes": [list(v) for v in m.volumes]} for m in machines],
    }
    path = d / f"{op}-{pid}-{os.urandom(4).hex()}{SUFFIX}"
    _write_atomic(path, data)
    return path


def rewrite(journal: Journal, machines: list[PlannedMachine]) -> None:
    """Keep only ``machines`` in a journal (what recovery could not clean up yet)."""
    if not machines:
        end(journal.path)
        return
    data = {
        "op": journal.op,
        "uri": journal.uri,
        "pid": journal.pid,
        "pid_start": journal.pid_start,
        "machines": [{"name": m.name, "volumes": [list(v) for v in m.volumes]} for m in machines],
    }
    _write_atomic(journal.path, data)


def end(path: Path) -> None:
    """The operation finished (or was rolled back): forget its journal."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_all(state_dir: Path, uri: str | None = None) -> list[Journal]:
    """Every readable journal (of ``uri`` only, if given); unreadable files are skipped."""
    d = journal_dir(state_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(SUFFIX))
    except OSError:
        return []
    out = []
    for n in names:
        j = parse(d / n)
        if j is not None and (uri is None or j.uri == uri):
            out.append(j)
    return out


def parse(path: Path) -> Journal | None:
    """One journal file, or None if it is not a journal kvmlab wrote."""
    try:
        data: Any = json.loads(path.read_text())
        machines = tuple(
            PlannedMachine(str(m["name"]), tuple((str(p), str(v)) for p, v in m.get("volumes", [])))
            for m in data["machines"]
        )
        return Journal(
            path=path,
            op=str(data["op"]),
            uri=str(data["uri"]),
            pid=int(data["pid"]),
            pid_start=data.get("pid_start"),
            machines=machines,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def leftovers(
    journal: Journal, defined: set[str], owned: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The journal's volumes to delete: listed, and owned by no defined domain.

    ``defined`` are the names of the domains that exist, ``owned`` every (pool, volume) a
    defined domain owns. A planned machine whose domain exists is whole (domains are defined
    last), so its volumes stay even if its metadata were to list fewer.
    """
    out = []
    for m in journal.machines:
        if m.name in defined:
            continue
        out += [v for v in m.volumes if v not in owned]
    return out


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recover_if_pending(env: Env) -> list[str]:
    """Undo what crashed operations left, if a journal exists (else no libvirt call at all)."""
    if not has_pending(env.state_dir):
        return []
    from kvmlab.services.clones import recover

    return recover(env)
