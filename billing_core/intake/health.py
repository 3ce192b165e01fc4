"""The pipeline's health at a glance, for the operators' console: how far behind the inboxes are, how many
letters are dead, how much the notifications outbox holds, and when reconciliation last ran.

One statement of scalar subqueries, each answered from a partial index (the open, dead and due rows are few
next to the processed ones), so the console's front page stays cheap however long the history grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

_SNAPSHOT = text(
    """
    SELECT
        (SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'waiting', 'failed')) AS events_open,
        (SELECT min(received_at) FROM stripe_events WHERE status IN ('pending', 'waiting', 'failed'))
            AS events_oldest,
        (SELECT count(*) FROM usage_inbox WHERE status IN ('pending', 'failed')) AS usage_open,
        (SELECT min(received_at) FROM usage_inbox WHERE status IN ('pending', 'failed')) AS usage_oldest,
        (SELECT count(*) FROM stripe_events WHERE status = 'dead')
            + (SELECT count(*) FROM usage_inbox WHERE status = 'dead') AS dead_letters,
        (SELECT count(*) FROM notifications WHERE status = 'pending') AS outbox_pending,
        (SELECT min(created_at) FROM notifications WHERE status = 'pending') AS outbox_oldest,
        (SELECT count(*) FROM notifications WHERE status = 'dead') AS outbox_dead
    """
)
# The newest run of each kind (the index on (kind, id) answers each from its end).
_LAST_RUNS = text(
    """
    SELECT r.kind, r.status, r.started_at, r.finished_at, r.error
    FROM (VALUES ('events'), ('objects')) AS k(kind)
    CROSS JOIN LATERAL (
        SELECT kind, status, started_at, finished_at, error FROM reconciliation_runs
        WHERE kind = k.kind ORDER BY id DESC LIMIT 1
    ) AS r
    """
)


@dataclass(frozen=True)
class Backlog:
    """Rows still to be handled, and how long the oldest has waited (None when there are none)."""

    open: int
    lag_seconds: float | None


@dataclass(frozen=True)
class LastRun:
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class PipelineHealth:
    stripe_events: Backlog
    usage: Backlog
    dead_letters: int
    outbox: Backlog
    outbox_dead: int
    reconciliation: tuple[LastRun, ...]


def _lag(oldest: datetime | None, now: datetime) -> float | None:
    return None if oldest is None else max(0.0, (now - oldest).total_seconds())


def pipeline_health(session: Session, now: datetime) -> PipelineHealth:
    row = session.execute(_SNAPSHOT).one()
    runs = tuple(LastRun(*r) for r in session.execute(_LAST_RUNS))
    return PipelineHealth(
        stripe_events=Backlog(row.events_open, _lag(row.events_oldest, now)),
        usage=Backlog(row.usage_open, _lag(row.usage_oldest, now)),
        dead_letters=row.dead_letters,
        outbox=Backlog(row.outbox_pending, _lag(row.outbox_oldest, now)),
        outbox_dead=row.outbox_dead,
        reconciliation=runs,
    )
