"""Grant rows: the lookups of the ``grants`` table that the handlers and the book make, on SQLAlchemy Core.

``grants.py`` holds the spending order as pure functions; this module reads the rows it orders. A wallet's
open lots are loaded by ``Book.load_lots`` (the hot path, kept as measured SQL there); what is here finds
grants by their cause (an entry, a Stripe reference), the wallet's debt grant, and the grants due to expire.
Grants inserted or changed by a transaction are written by ``Book.flush``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, any_, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.db.tables import Grant
from billing_core.ledger.grants import GrantLot

# The columns a GrantLot is built from, in ``lot_from_row``'s order.
LOT_COLUMNS = (
    Grant.id,
    Grant.wallet_id,
    Grant.source,
    Grant.amount_mc,
    Grant.remaining_mc,
    Grant.expires_at,
    Grant.priority,
    Grant.external_ref,
)


def lot_from_row(row: Any) -> GrantLot:
    """A lot from a row of ``LOT_COLUMNS`` (by name: ``Book.load_lots`` selects the same names in SQL)."""
    return GrantLot(
        wallet_id=row.wallet_id,
        source=row.source,
        remaining_mc=row.remaining_mc,
        expires_at=row.expires_at,
        priority=row.priority,
        id=row.id,
        amount_mc=row.amount_mc,
        external_ref=row.external_ref,
    )


def lots_by_id(session: Session, grant_ids: list[int]) -> list[GrantLot]:
    """These grants as lots, open or exhausted (their wallets must be locked by the caller). The ids go as one
    array, as in ``wallet_rows.account_names``."""
    rows = session.execute(select(*LOT_COLUMNS).where(Grant.id == any_(literal(grant_ids, ARRAY(BigInteger))))).all()
    return [lot_from_row(r) for r in rows]


def grant_of_entry(session: Session, entry_id: int) -> int | None:
    """The grant an entry created (a purchase, a grant, a positive adjustment), not the debt lot it may have
    opened: what a replay of that command answers with."""
    return session.execute(
        select(Grant.id).where(Grant.entry_id == entry_id, Grant.source != "debt").order_by(Grant.id).limit(1)
    ).scalar()


def grant_ids_by_ref(session: Session, wallet_id: int, external_ref: str) -> list[int]:
    """The wallet's grants bought by one Stripe payment (``external_ref``), oldest first: what a refund of
    that payment takes back first."""
    return list(
        session.execute(
            select(Grant.id)
            .where(Grant.wallet_id == wallet_id, Grant.external_ref == external_ref, Grant.source != "debt")
            .order_by(Grant.id)
        ).scalars()
    )


def debt_grant_id(session: Session, wallet_id: int) -> int | None:
    """The wallet's debt grant, settled or not (a wallet has at most one for life)."""
    return session.execute(select(Grant.id).where(Grant.wallet_id == wallet_id, Grant.source == "debt")).scalar()


def due_grants(session: Session, now: datetime, limit: int) -> list[tuple[int, int]]:
    """(grant id, wallet id) of up to ``limit`` grants expired at ``now`` with credits left."""
    rows = session.execute(
        select(Grant.id, Grant.wallet_id)
        .where(Grant.expires_at <= now, Grant.remaining_mc > 0, Grant.source != "debt")
        .order_by(Grant.id)
        .limit(limit)
    ).all()
    return [(grant_id, wallet_id) for grant_id, wallet_id in rows]
