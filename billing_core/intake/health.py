"""The pipeline's health at a glance, for the operators' console: how far behind the inboxes are, how many
letters are dead, how much the notifications outbox holds, and when reconciliation last ran.

The backlogs are the figures ``/metrics`` reads (``db.gauges.read_gauges``: one statement over partial
indexes), summed the way an operator reads them; only the last runs, with their errors, are read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.db import gauges

# The statuses that still wait for a worker (dead letters are counted apart).
_OPEN_EVENTS = ("pending", "waiting", "failed")
_OPEN_USAGE = ("pending", "failed")
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


def _backlog(rows: dict[str, gauges.Backlog], statuses: tuple[str, ...], now: datetime) -> Backlog:
    found = [rows[s] for s in statuses if s in rows]
    oldest = min((b.oldest for b in found if b.oldest is not None), default=None)
    return Backlog(sum(b.count for b in found), _lag(oldest, now))


def pipeline_health(session: Session, now: datetime) -> PipelineHealth:
    figures = gauges.read_gauges(session.connection())
    runs = tuple(LastRun(*r) for r in session.execute(_LAST_RUNS))
    dead = figures.stripe_events.get("dead"), figures.usage_inbox.get("dead")
    return PipelineHealth(
        stripe_events=_backlog(figures.stripe_events, _OPEN_EVENTS, now),
        usage=_backlog(figures.usage_inbox, _OPEN_USAGE, now),
        dead_letters=sum(b.count for b in dead if b is not None),
        outbox=_backlog(figures.notifications, ("pending",), now),
        outbox_dead=_backlog(figures.notifications, ("dead",), now).open,
        reconciliation=runs,
    )
