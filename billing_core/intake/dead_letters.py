"""Dead letters: Stripe events and usage reports that failed ``MAX_ATTEMPTS`` times, listed for an operator
and replayed on demand (``billing dead``, ``billing replay ID``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, bindparam, literal_column, select, union_all
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import StripeEvent, UsageInboxRow
from billing_core.intake import stripe_events, usage_inbox
from billing_core.intake.inbox import DEAD, sql_constant
from billing_core.stripe.event_handlers import StripeReader


@dataclass(frozen=True)
class DeadLetter:
    id: str  # a Stripe event id, or a usage report's idempotency key
    kind: str  # the event type, or "usage"
    attempts: int
    error: str | None
    received_at: datetime


_events: Table = StripeEvent.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_usage: Table = UsageInboxRow.__table__  # type: ignore[assignment]
# Oldest first across both tables; each side is read through its partial index on received_at (WHERE status =
# 'dead'), hence the status as a literal.
_DEAD_LETTERS = (
    union_all(
        select(
            _events.c.id,
            _events.c.type.label("kind"),
            _events.c.attempts,
            _events.c.last_error.label("error"),
            _events.c.received_at,
        ).where(_events.c.status == sql_constant(DEAD)),
        select(
            _usage.c.idempotency_key,
            sql_constant("usage"),
            _usage.c.attempts,
            _usage.c.reason,
            _usage.c.received_at,
        ).where(_usage.c.status == sql_constant(DEAD)),
    )
    .order_by(literal_column("received_at"))
    .limit(bindparam("n"))
)


def list_dead(session_factory: sessionmaker[Session], *, limit: int = 100) -> list[DeadLetter]:
    with session_factory() as session:
        rows = session.execute(_DEAD_LETTERS, {"n": limit}).all()
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
