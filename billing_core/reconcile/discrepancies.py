"""Discrepancies: what a reconciliation pass found that it must not heal by itself (an amount or state that
differs from Stripe's, a ledger entry without its Stripe object). Each is recorded once (``dedupe_key``) and
stays open until an operator resolves it with a note (``billing discrepancies resolve``,
``POST /v1/admin/discrepancies/<id>/resolve``); a resolution is never overwritten."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import Discrepancy
from billing_core.errors import BillingError, InvalidCommand

_TABLE: Table = Discrepancy.__table__  # type: ignore[assignment]
columns = _TABLE.c
_MAX_ID = 2**63


class UnknownDiscrepancy(BillingError):
    code = "unknown_discrepancy"


class DiscrepancyResolved(BillingError):
    """Resolved before (by whom, when and how: in its details); the first resolution stands."""

    code = "discrepancy_resolved"


@dataclass(frozen=True)
class Found:
    id: int
    kind: str
    stripe_id: str | None
    account: str | None
    expected: Any
    found: Any
    found_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None


def record(
    session: Session,
    *,
    kind: str,
    dedupe_key: str,
    stripe_id: str | None = None,
    account: str | None = None,
    expected: Any = None,
    found: Any = None,
    run_id: int | None = None,
) -> int | None:
    """Record a discrepancy unless one with ``dedupe_key`` is known; its id when new (then notify), else None."""
    statement = (
        pg_insert(_TABLE)
        .values(
            kind=kind,
            dedupe_key=dedupe_key,
            stripe_id=stripe_id,
            account=account,
            expected=expected,
            found=found,
            run_id=run_id,
        )
        .on_conflict_do_nothing(index_elements=[columns.dedupe_key])
        .returning(columns.id)
    )
    new: int | None = session.execute(statement).scalar_one_or_none()
    return new


def _found(row: Any) -> Found:
    return Found(
        row.id,
        row.kind,
        row.stripe_id,
        row.account,
        row.expected,
        row.found,
        row.found_at,
        row.resolved_at,
        row.resolved_by,
        row.note,
    )


def listed(
    session_factory: sessionmaker[Session],
    *,
    include_resolved: bool = False,
    limit: int = 100,
    after: int | None = None,
) -> list[Found]:
    """Open discrepancies (all with ``include_resolved``), oldest first; ``after``: those after this id."""
    query = select(_TABLE).order_by(columns.id).limit(limit)
    if not include_resolved:
        query = query.where(columns.resolved_at.is_(None))
    if after is not None:
        query = query.where(columns.id > after)
    with session_factory() as session:
        return [_found(row) for row in session.execute(query)]


def resolve(session_factory: sessionmaker[Session], discrepancy_id: int, *, note: str, by: str) -> Found:
    """Close an open discrepancy with a note. Raises ``InvalidCommand`` (a blank note), ``UnknownDiscrepancy``,
    ``DiscrepancyResolved`` (the first resolution is kept)."""
    if not note.strip():
        raise InvalidCommand("a resolution needs a note", field="note")
    if not 0 < discrepancy_id < _MAX_ID:
        raise UnknownDiscrepancy(f"no discrepancy {discrepancy_id}", id=discrepancy_id)  # not a bigint: none
    with session_factory.begin() as session:
        row = session.execute(
            update(_TABLE)
            .where(columns.id == discrepancy_id, columns.resolved_at.is_(None))
            .values(resolved_at=func.now(), resolved_by=by, note=note)
            .returning(*_TABLE.c)
        ).first()
        if row is not None:
            return _found(row)
        row = session.execute(select(_TABLE).where(columns.id == discrepancy_id)).first()
    if row is None:
        raise UnknownDiscrepancy(f"no discrepancy {discrepancy_id}", id=discrepancy_id)
    raise DiscrepancyResolved(
        f"discrepancy {discrepancy_id} was resolved already by {row.resolved_by}",
        id=discrepancy_id,
        resolved_by=row.resolved_by,
        resolved_at=row.resolved_at.isoformat(),
        note=row.note,
    )
