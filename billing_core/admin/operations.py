"""Operators' repairs through the admin API, audited: a dead letter replayed, a discrepancy resolved, a refund
asked of Stripe.

A replay is its own work (reopen, then the normal processing, in the inbox's transactions) and a refund is a
call to Stripe, so neither can share a transaction with its audit row: each is audited right after it
succeeded. A discrepancy's resolution commits together with its audit row (see ``resolve_discrepancy``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.admin.audit import record_audit
from billing_core.intake.dead_letters import replay
from billing_core.reconcile.discrepancies import Found, resolve
from billing_core.stripe.event_handlers import StripeReader

REPLAY_ACTION, RESOLVE_ACTION, REFUND_ACTION = "dead_letter.replay", "discrepancy.resolve", "refund.create"

_DEAD_EVENT = text("SELECT type, attempts, last_error FROM stripe_events WHERE id = :id AND status = 'dead'")
_DEAD_USAGE = text("SELECT 'usage', attempts, reason FROM usage_inbox WHERE idempotency_key = :id AND status = 'dead'")


@dataclass(frozen=True)
class Replayed:
    id: str
    kind: str
    status: str


def replay_dead_letter(
    session_factory: sessionmaker[Session],
    gateway: StripeReader | None,
    letter_id: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> Replayed | None:
    """Replay one dead letter now; None when ``letter_id`` is no dead letter (nothing replayed, nothing
    audited)."""
    with session_factory() as session:
        row = session.execute(_DEAD_EVENT, {"id": letter_id}).first()
        row = row or session.execute(_DEAD_USAGE, {"id": letter_id}).first()
    if row is None:
        return None
    kind, attempts, error = row
    status = replay(session_factory, gateway, letter_id)
    if status is None:
        return None  # replayed by someone else between the read and the reopen
    with session_factory() as session, session.begin():
        record_audit(
            session,
            actor=actor,
            action=REPLAY_ACTION,
            target=f"dead_letter:{letter_id}",
            before={"status": "dead", "kind": kind, "attempts": attempts, "error": error},
            after={"status": status},
            now=now,
        )
    return Replayed(letter_id, kind, status)


class _InTransaction:
    """A stand-in for a sessionmaker whose ``begin()`` yields a session already in a transaction, without
    committing it: ``reconcile.discrepancies.resolve`` opens ``session_factory.begin()``, and handing it this
    makes the resolution part of the caller's transaction, so it commits with its audit row."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @contextmanager
    def begin(self) -> Iterator[Session]:
        yield self._session


def resolve_discrepancy(session_factory: sessionmaker[Session], discrepancy_id: int, *, note: str, actor: str) -> Found:
    """Resolve with a note, audited in the same transaction. Raises what ``resolve`` raises."""
    with session_factory() as session, session.begin():
        found = resolve(_InTransaction(session), discrepancy_id, note=note, by=actor)  # type: ignore[arg-type]
        record_audit(
            session,
            actor=actor,
            action=RESOLVE_ACTION,
            target=f"discrepancy:{discrepancy_id}",
            before={"status": "open", "kind": found.kind, "stripe_id": found.stripe_id},
            after={
                "status": "resolved",
                "resolved_by": found.resolved_by,
                "resolved_at": found.resolved_at.isoformat() if found.resolved_at else None,
            },
            note=note,
        )
    return found


def audit_refund(
    session_factory: sessionmaker[Session],
    *,
    actor: str,
    account: str,
    request_id: str,
    reason: str,
    after: dict[str, Any],
) -> int:
    """The audit row of a refund Stripe made (written after Stripe answered; a replayed refund is not)."""
    with session_factory() as session, session.begin():
        return record_audit(
            session,
            actor=actor,
            action=REFUND_ACTION,
            target=f"account:{account}",
            before=None,
            after=after,
            request_id=request_id,
            note=reason,
        )
