"""Dead letters: Stripe events and usage reports that failed ``MAX_ATTEMPTS`` times, listed for an operator
and replayed on demand (``billing dead``, ``billing replay ID``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.intake import stripe_events, usage_inbox
from billing_core.stripe.event_handlers import StripeReader


@dataclass(frozen=True)
class DeadLetter:
    id: str  # a Stripe event id, or a usage report's idempotency key
    kind: str  # the event type, or "usage"
    attempts: int
    error: str | None
    received_at: datetime


def list_dead(session_factory: sessionmaker[Session], *, limit: int = 100) -> list[DeadLetter]:
    with session_factory() as session:
        rows = session.execute(
            text(
                "(SELECT id, type AS kind, attempts, last_error AS error, received_at FROM stripe_events "
                " WHERE status = 'dead') "
                "UNION ALL "
                "(SELECT idempotency_key, 'usage', attempts, reason, received_at FROM usage_inbox "
                " WHERE status = 'dead') "
                "ORDER BY received_at LIMIT :n"
            ),
            {"n": limit},
        ).all()
    return [DeadLetter(*row) for row in rows]


def replay(session_factory: sessionmaker[Session], gateway: StripeReader | None, letter_id: str) -> str | None:
    """Reopen and process one letter now; its status afterwards, or None when there was nothing to replay."""
    if stripe_events.reopen(session_factory, letter_id):
        return stripe_events.process_event(session_factory, gateway, letter_id)
    row_id = usage_inbox.reopen(session_factory, letter_id)
    if row_id is None:
        return None
    usage_inbox.apply_rows(session_factory, [row_id])
    status = usage_inbox.usage_status(session_factory, letter_id)
    return None if status is None else status.processing
