"""The audit log of admin actions: who, what, on what, when, the state before and after.

``record_audit`` takes the caller's session and writes in its transaction, so an action and its audit row
commit together or not at all: an audit row never describes an action that was rolled back, and no committed
action lacks its row. A replayed request (an idempotency key seen before) did nothing and records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from billing_core.clock import utcnow
from billing_core.db.tables import AdminAuditRow

_AUDIT: Table = AdminAuditRow.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
audit = _AUDIT.c

MAX_LIST = 500


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    note: str | None


def record_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime | None = None,
    request_id: str | None = None,
    note: str | None = None,
) -> int:
    """Write one audit row in the caller's transaction; its id."""
    row_id: int = session.execute(
        insert(_AUDIT)
        .values(
            at=now or utcnow(),
            actor=actor,
            action=action,
            target=target,
            before=before,
            after=after,
            request_id=request_id,
            note=note,
        )
        .returning(audit.id)
    ).scalar_one()
    return row_id


def list_audit(
    session: Session,
    *,
    limit: int = 50,
    before_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[AuditRow]:
    """Newest first; ``before_id`` pages on (the last id of the previous page). Each filter has its own
    (column, id) index."""
    query = select(_AUDIT).order_by(audit.id.desc()).limit(max(1, min(limit, MAX_LIST)))
    if before_id is not None:
        query = query.where(audit.id < before_id)
    if actor is not None:
        query = query.where(audit.actor == actor)
    if action is not None:
        query = query.where(audit.action == action)
    if target is not None:
        query = query.where(audit.target == target)
    return [
        AuditRow(r.id, r.at, r.actor, r.action, r.target, r.before, r.after, r.request_id, r.note)
        for r in session.execute(query)
    ]
