"""The time of day, as the domain reads it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    # datetime.now(UTC) rather than utcnow(): aware, and freezegun patches it in tests.
    return datetime.now(UTC)
