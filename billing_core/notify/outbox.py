"""The notifications outbox (DESIGN.md rules 2, 6 and 10).

``notify`` writes one row per channel (``email``, ``webhook``) in the caller's transaction, keyed by
``(dedupe_key, channel)``: the notice exists exactly when its cause does, and a replayed cause writes nothing.
``deliver_due`` claims due rows in a short transaction (``FOR UPDATE SKIP LOCKED``, taking a lease by moving
``next_attempt_at`` forward), sends them with no transaction open, then records each outcome: ``sent``;
``pending`` again after an exponential backoff; ``dead`` after ``MAX_ATTEMPTS``; ``skipped`` when the channel
has nowhere to send (not configured, no recipient), which is final. ``replay`` puts a row back to pending.
Admin alerts (``admin_alerts``) enter the outbox through ``deliver_due`` as well, once each (``alert:<id>``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, sessionmaker

from billing_core.clock import utcnow

log = logging.getLogger(__name__)

CHANNELS = ("email", "webhook")
STATUSES = ("pending", "sent", "dead", "skipped")
# Kinds for the operators (BILLING_ADMIN_EMAILS), whatever account they mention.
ADMIN_KINDS = frozenset(
    {"sales_paused", "sales_resumed", "reconciliation_discrepancy", "dead_letter", "dead_lettered_event"}
    | {"ledger_invariant_violated", "inbox_lag", "outbox_backlog"}  # internal checks (reconcile/health.py)
)
MAX_ATTEMPTS = 10
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
# A claimed row is due again this much later if its sender never records an outcome (a crashed worker).
LEASE = timedelta(minutes=5)
BATCH = 50


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: 30 s, 1 min, 2 min, ... capped at 1 h."""
    wait: timedelta = BACKOFF_BASE * (2 ** min(max(attempts - 1, 0), 20))
    return min(wait, BACKOFF_MAX)


def event_id(dedupe_key: str) -> str:
    """The notification's public id (the webhook's ``id``): the same for every channel and every attempt,
    so a receiver can drop a repeat."""
    return "ntf_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:24]


_INSERT = text(
    """
    INSERT INTO notifications (kind, dedupe_key, channel, account, audience, payload, next_attempt_at, created_at)
    SELECT :kind, :dedupe_key, channel, :account, :audience, :payload, :now, :now
    FROM unnest(CAST(:channels AS text[])) AS channel
    ON CONFLICT (dedupe_key, channel) DO NOTHING
    RETURNING id
    """
).bindparams(bindparam("payload", type_=JSONB))


def notify(
    session: Session,
    kind: str,
    dedupe_key: str,
    *,
    payload: dict[str, Any],
    account: str | None = None,
    audience: str | None = None,
    now: datetime | None = None,
) -> int:
    """Queue ``kind`` for every channel in the caller's transaction; how many rows were new (0: a replay)."""
    who = audience or ("admins" if kind in ADMIN_KINDS else "account")
    if who not in ("account", "admins"):
        raise ValueError(f"unknown audience {who!r}")
    rows = session.execute(
        _INSERT,
        {
            "kind": kind,
            "dedupe_key": dedupe_key,
            "account": account,
            "audience": who,
            "payload": payload,
            "now": now or utcnow(),
            "channels": list(CHANNELS),
        },
    ).all()
    return len(rows)


@dataclass(frozen=True)
class Message:
    """A claimed row, with what its sender needs (the account's email, read when claimed)."""

    id: int
    kind: str
    dedupe_key: str
    channel: str
    account: str | None
    audience: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    email: str | None

    @property
    def event_id(self) -> str:
        return event_id(self.dedupe_key)


class Skip(Exception):
    """Raised by a sender: nowhere to send this message (final, not retried)."""


Sender = Callable[[Message], None]

_CLAIM = text(
    """
    WITH due AS (
        SELECT id FROM notifications
        WHERE status = 'pending' AND next_attempt_at <= :now
        ORDER BY next_attempt_at, id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    UPDATE notifications n
    SET attempts = n.attempts + 1, next_attempt_at = :lease_until
    FROM due
    WHERE n.id = due.id
    RETURNING n.id, n.kind, n.dedupe_key, n.channel, n.account, n.audience, n.payload, n.attempts, n.created_at,
        (SELECT w.email FROM wallets w WHERE w.account = n.account) AS email
    """
)
_UNDELIVERED_ALERTS = text(
    """
    SELECT id, kind, payload FROM admin_alerts WHERE delivered_at IS NULL
    ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED
    """
)
_ALERT_DELIVERED = text("UPDATE admin_alerts SET delivered_at = :now WHERE id = ANY(CAST(:ids AS bigint[]))")
_SENT = text(
    "UPDATE notifications SET status = 'sent', sent_at = :now, last_error = NULL WHERE id = :id AND status = 'pending'"
)
_SKIPPED = text(
    "UPDATE notifications SET status = 'skipped', last_error = :error WHERE id = :id AND status = 'pending'"
)
_FAILED = text(
    """
    UPDATE notifications
    SET status = CASE WHEN attempts >= :max_attempts THEN 'dead' ELSE 'pending' END,
        next_attempt_at = :retry_at, last_error = :error
    WHERE id = :id AND status = 'pending'
    RETURNING status
    """
)


def enqueue_admin_alerts(session: Session, *, now: datetime | None = None, batch: int = 100) -> int:
    """Copy undelivered ``admin_alerts`` into the outbox (``alert:<id>``) and mark them delivered."""
    rows = session.execute(_UNDELIVERED_ALERTS, {"batch": batch}).all()
    for alert_id, kind, payload in rows:
        notify(session, kind, f"alert:{alert_id}", payload=dict(payload or {}), audience="admins", now=now)
    if rows:
        session.execute(_ALERT_DELIVERED, {"now": now or utcnow(), "ids": [r[0] for r in rows]})
    return len(rows)


def claim(session: Session, *, now: datetime, batch: int = BATCH) -> list[Message]:
    rows = session.execute(_CLAIM, {"now": now, "lease_until": now + LEASE, "batch": batch}).all()
    return [Message(*row) for row in rows]


def deliver_due(
    session_factory: sessionmaker[Session],
    senders: Mapping[str, Sender],
    *,
    now: datetime | None = None,
    batch: int = BATCH,
) -> Counter[str]:
    """Send what is due now; a count per outcome (``sent``, ``retry``, ``dead``, ``skipped``, ``alerts``)."""
    at = now or utcnow()
    outcomes: Counter[str] = Counter()
    with session_factory.begin() as session:
        outcomes["alerts"] = enqueue_admin_alerts(session, now=at)
        messages = claim(session, now=at, batch=batch)
    # No transaction is open from here on: SMTP and HTTP peers may take their time (rule 10).
    results: list[tuple[Message, str, str | None]] = []
    for message in messages:
        sender = senders.get(message.channel)
        try:
            if sender is None:
                raise Skip(f"the {message.channel} channel is not configured")
            sender(message)
        except Skip as exc:
            results.append((message, "skipped", str(exc)))
        except Exception as exc:
            log.warning(
                "notification %s (%s, %s) attempt %d failed: %s",
                message.id,
                message.kind,
                message.channel,
                message.attempts,
                exc,
            )
            results.append((message, "failed", f"{type(exc).__name__}: {exc}"[:2000]))
        else:
            results.append((message, "sent", None))
    if results:
        with session_factory.begin() as session:
            for message, outcome, error in results:
                if outcome == "sent":
                    session.execute(_SENT, {"id": message.id, "now": at})
                elif outcome == "skipped":
                    session.execute(_SKIPPED, {"id": message.id, "error": error})
                else:
                    status = session.execute(
                        _FAILED,
                        {
                            "id": message.id,
                            "max_attempts": MAX_ATTEMPTS,
                            "retry_at": at + backoff(message.attempts),
                            "error": error,
                        },
                    ).scalar()
                    outcome = "dead" if status == "dead" else "retry"
                outcomes[outcome] += 1
    return outcomes


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    dedupe_key: str
    channel: str
    account: str | None
    audience: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


_LIST = text(
    """
    SELECT id, kind, dedupe_key, channel, account, audience, status, attempts, next_attempt_at, last_error,
        created_at, sent_at
    FROM notifications
    WHERE CAST(:status AS text) IS NULL OR status = :status
    ORDER BY id DESC
    LIMIT :limit
    """
)
_REPLAY = text(
    """
    UPDATE notifications
    SET status = 'pending', attempts = 0, next_attempt_at = :now, last_error = NULL, sent_at = NULL
    WHERE id = :id
    RETURNING id
    """
)


def list_notifications(
    session_factory: sessionmaker[Session], *, status: str | None = None, limit: int = 50
) -> list[Row]:
    with session_factory() as session:
        return [Row(*r) for r in session.execute(_LIST, {"status": status, "limit": limit}).all()]


def replay(session_factory: sessionmaker[Session], notification_id: int, *, now: datetime | None = None) -> bool:
    """Send row ``notification_id`` again (whatever its status), with a fresh attempt count; False if unknown."""
    with session_factory.begin() as session:
        found = session.execute(_REPLAY, {"id": notification_id, "now": now or utcnow()}).first()
    return found is not None
