"""The timestamps kvmlab writes (machine and network metadata, lock holders)."""

import time


def utc_now() -> str:
    """Now in UTC, ISO 8601 to the second: ``2026-11-27T06:40:00+00:00``.

    What ``datetime.now(UTC).isoformat(timespec="seconds")`` gives, without importing
    :mod:`datetime` (~1.5 ms of ``net create``'s start).
    """
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
