"""kvmlab's metadata timestamp: UTC, ISO 8601, whole seconds, as datetime writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kvmlab.timestamps import utc_now


def test_utc_now_is_what_datetime_writes() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = utc_now()
    after = datetime.now(UTC)
    parsed = datetime.fromisoformat(stamp)
    assert stamp == parsed.isoformat(timespec="seconds")
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= after
