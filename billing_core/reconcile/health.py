"""Internal checks on beat (every 5 minutes): what reconciliation against Stripe cannot see, checked inside.

* the ledger's invariants (``billing check``, ``ledger/checks.py``): any violation is an admin alert, once per
  distinct set of findings (their fingerprint), so a corruption that stays is reported once, and a new one
  again;
* inbox lag: a Stripe event or usage report ``pending`` for longer than ``inbox_lag`` means the workers are not
  draining (down, stuck, or Redis lost its messages and the sweep is not running); once per oldest such row;
* the notifications outbox: rows due and still unsent, more than ``outbox_backlog`` of them or the oldest
  created more than ``outbox_age`` ago (SMTP or the webhook peer down, no worker delivering); once per hour
  the backlog lasts.

Alerts go through ``record_alert`` (``admin_alerts``), which the outbox delivers to the operators like every
admin kind; ``billing health`` prints the same findings without recording them. Only reads, and one short
transaction for the alerts: nothing here waits on a lock the pipeline holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.unit_of_work import utcnow
from billing_core.ledger.checks import check_ledger
from billing_core.notify.alerts import record_alert

INVARIANT_KIND = "ledger_invariant_violated"
INBOX_LAG_KIND = "inbox_lag"
OUTBOX_BACKLOG_KIND = "outbox_backlog"
KINDS = (INVARIANT_KIND, INBOX_LAG_KIND, OUTBOX_BACKLOG_KIND)

# At most this many findings of the ledger check go into an alert (the fingerprint covers all it returned).
_SHOWN_FINDINGS = 10


@dataclass(frozen=True)
class Thresholds:
    inbox_lag: timedelta = timedelta(minutes=5)
    outbox_backlog: int = 500
    outbox_age: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class Problem:
    """One finding: the admin alert it becomes (``kind``, ``dedupe_key``, ``payload``) and a line for people."""

    kind: str
    dedupe_key: str
    summary: str
    payload: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}: {self.summary}"


@dataclass(frozen=True)
class HealthReport:
    checked_at: datetime
    problems: tuple[Problem, ...]
    alerted: tuple[int, ...] = ()  # ids of the alerts this run recorded (a problem already alerted: none)

    @property
    def ok(self) -> bool:
        return not self.problems


# The oldest pending row of each inbox and how many are pending past the cutoff. ``status = 'pending'`` implies
# the partial open-row indexes' predicates, so the planner reads them, not the tables (a few rows when healthy).
_STALE_STRIPE_EVENTS = text(
    """
    SELECT id, type, received_at, count(*) OVER () AS stale
    FROM stripe_events WHERE status = 'pending' AND received_at < :cutoff
    ORDER BY received_at, id LIMIT 1
    """
)
_STALE_USAGE = text(
    """
    SELECT id::text AS id, account, received_at, count(*) OVER () AS stale
    FROM usage_inbox WHERE status = 'pending' AND received_at < :cutoff
    ORDER BY received_at, id LIMIT 1
    """
)
_OUTBOX_DUE = text(
    """
    SELECT count(*) AS due, min(created_at) AS oldest
    FROM notifications WHERE status = 'pending' AND next_attempt_at <= :now
    """
)


def _plain(value: Any) -> Any:
    """A finding's value as JSON has it (ids, amounts, timestamps as strings where JSON has no type)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def ledger_problems(session_factory: sessionmaker[Session]) -> list[Problem]:
    engine = session_factory.kw["bind"]
    report = check_ledger(engine)
    if report.ok:
        return []
    lines = sorted(str(f) for f in report.findings)
    # The same findings again (the corruption is still there): the same key, no second alert.
    fingerprint = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    checks = sorted({f.check for f in report.findings})
    return [
        Problem(
            INVARIANT_KIND,
            f"{INVARIANT_KIND}:{fingerprint}",
            f"{len(report.findings)} finding(s) of {', '.join(checks)}",
            {
                "checks": checks,
                "count": len(report.findings),
                "findings": [
                    {"check": f.check, "description": f.description, **{k: _plain(v) for k, v in f.row.items()}}
                    for f in report.findings[:_SHOWN_FINDINGS]
                ],
                "fingerprint": fingerprint,
            },
        )
    ]


def inbox_problems(session: Session, *, now: datetime, lag: timedelta) -> list[Problem]:
    problems = []
    cutoff = now - lag
    for inbox, statement in (("stripe_events", _STALE_STRIPE_EVENTS), ("usage_inbox", _STALE_USAGE)):
        row = session.execute(statement, {"cutoff": cutoff}).mappings().first()
        if row is None:
            continue
        age = now - row["received_at"]
        problems.append(
            Problem(
                INBOX_LAG_KIND,
                # Per oldest stale row: a stuck inbox alerts once, and again only when that row moved on
                # and another is stuck behind it.
                f"{INBOX_LAG_KIND}:{inbox}:{row['id']}",
                f"{row['stale']} row(s) of {inbox} pending for over {lag}; the oldest, {row['id']}, for {age}",
                {
                    "inbox": inbox,
                    "oldest_id": str(row["id"]),
                    "oldest_received_at": row["received_at"].isoformat(),
                    "oldest_age_seconds": int(age.total_seconds()),
                    "stale": int(row["stale"]),
                    "lag_seconds": int(lag.total_seconds()),
                },
            )
        )
    return problems


def outbox_problems(session: Session, *, now: datetime, backlog: int, age: timedelta) -> list[Problem]:
    row = session.execute(_OUTBOX_DUE, {"now": now}).mappings().one()
    due, oldest = int(row["due"]), row["oldest"]
    if due == 0 or (due <= backlog and oldest is not None and now - oldest <= age):
        return []
    oldest_age = now - oldest if oldest is not None else timedelta(0)
    hour = now.replace(minute=0, second=0, microsecond=0)
    return [
        Problem(
            OUTBOX_BACKLOG_KIND,
            f"{OUTBOX_BACKLOG_KIND}:{hour.isoformat()}",  # once per hour the backlog lasts
            f"{due} notification(s) due and unsent; the oldest created {oldest_age} ago",
            {
                "due": due,
                "oldest_created_at": oldest.isoformat() if oldest is not None else None,
                "oldest_age_seconds": int(oldest_age.total_seconds()),
                "backlog_threshold": backlog,
                "age_threshold_seconds": int(age.total_seconds()),
            },
        )
    ]


def find_problems(
    session_factory: sessionmaker[Session], *, now: datetime | None = None, thresholds: Thresholds | None = None
) -> HealthReport:
    """Every check, nothing recorded (``billing health``)."""
    at = now or utcnow()
    limits = thresholds or Thresholds()
    problems = ledger_problems(session_factory)
    with session_factory() as session:
        problems += inbox_problems(session, now=at, lag=limits.inbox_lag)
        problems += outbox_problems(session, now=at, backlog=limits.outbox_backlog, age=limits.outbox_age)
    return HealthReport(at, tuple(problems))


def run_health_checks(
    session_factory: sessionmaker[Session], *, now: datetime | None = None, thresholds: Thresholds | None = None
) -> HealthReport:
    """Every check; each problem recorded as an admin alert unless its occurrence was alerted before."""
    report = find_problems(session_factory, now=now, thresholds=thresholds)
    alerted: list[int] = []
    if report.problems:
        with session_factory.begin() as session:
            for problem in report.problems:
                payload = {"summary": problem.summary, **json.loads(json.dumps(problem.payload, default=str))}
                alert_id = record_alert(session, problem.kind, problem.dedupe_key, payload, now=report.checked_at)
                if alert_id is not None:
                    alerted.append(alert_id)
    return HealthReport(report.checked_at, report.problems, tuple(alerted))
