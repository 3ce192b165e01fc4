"""Grant rows: the lookups of the ``grants`` table that the handlers and the book make, on SQLAlchemy Core.

``grants.py`` holds the spending order as pure functions; this module reads the rows it orders. A wallet's
open lots are loaded by ``Book.load_lots`` (the hot path, kept as measured SQL there); what is here finds
grants by their cause (an entry, a Stripe reference), the wallet's debt grant, and the grants due to expire.
Grants inserted or changed by a transaction are written by ``Book.flush``.

Each statement is built once, on the table, and run with bound parameters, as in ``wallet_rows`` (whose
docstring has the measurements). The constants ``'debt'`` and ``0`` are written into the SQL, not bound: the
indexes these reads use are partial (``source = 'debt'``, ``remaining_mc > 0``), and the generic plan of a
prepared statement can only use one when the query states its condition in literals.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Integer, String, Table, and_, any_, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.db.tables import Grant
from billing_core.ledger.grants import GrantLot

_TABLE: Table = Grant.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
grants = _TABLE.c
DEBT = literal_column("'debt'", String)
ZERO = literal_column("0", Integer)

# The columns a GrantLot is built from, in ``lot_from_row``'s order.
LOT_COLUMNS = (
    grants.id,
    grants.wallet_id,
    grants.source,
    grants.amount_mc,
    grants.remaining_mc,
    grants.expires_at,
    grants.priority,
    grants.external_ref,
)

# The ids go as one array, as in ``wallet_rows.account_names``.
_LOTS_BY_ID = select(*LOT_COLUMNS).where(grants.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
_OF_ENTRY = (
    select(grants.id).where(grants.entry_id == bindparam("e"), grants.source != DEBT).order_by(grants.id).limit(1)
)
_BY_REF = (
    select(grants.id)
    .where(grants.wallet_id == bindparam("w"), grants.external_ref == bindparam("ref"), grants.source != DEBT)
    .order_by(grants.id)
)
_DEBT = select(grants.id).where(grants.wallet_id == bindparam("w"), grants.source == DEBT)
# A subscription's plan grants (external_ref ``sub_...``) wait ROLLOVER_GRACE past their expiry before the
# sweeper takes them: the renewal's ``invoice.paid`` (Stripe pays a renewal about an hour after the period
# ends) carries what is left of them into the next period (``handlers.roll_over``). Waiting costs nothing:
# a grant past its expiry is not spendable whether it was swept or not.
ROLLOVER_GRACE = timedelta(hours=3)
_PLAN = literal_column("'plan'", String)
_SUBSCRIPTION_REF = literal_column("'sub\\_%'", String)
_DUE = (
    select(grants.id, grants.wallet_id)
    .where(
        grants.expires_at <= bindparam("now"),
        grants.remaining_mc > ZERO,
        grants.source != DEBT,
        ~and_(
            grants.source == _PLAN,
            # coalesce: a plan grant without a reference (an operator's) must not make the test NULL
            func.coalesce(grants.external_ref, literal_column("''", String)).like(_SUBSCRIPTION_REF),
            grants.expires_at > bindparam("waited"),
        ),
    )
    .order_by(grants.id)
    .limit(bindparam("n", type_=Integer))
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
    """These grants as lots, open or exhausted (their wallets must be locked by the caller)."""
    return [lot_from_row(r) for r in session.execute(_LOTS_BY_ID, {"ids": grant_ids})]


def grant_of_entry(session: Session, entry_id: int) -> int | None:
    """The grant an entry created (a purchase, a grant, a positive adjustment), not the debt lot it may have
    opened: what a replay of that command answers with."""
    grant_id: int | None = session.execute(_OF_ENTRY, {"e": entry_id}).scalar()
    return grant_id


def grant_ids_by_ref(session: Session, wallet_id: int, external_ref: str) -> list[int]:
    """The wallet's grants bought by one Stripe payment (``external_ref``), oldest first: what a refund of
    that payment takes back first."""
    return list(session.execute(_BY_REF, {"w": wallet_id, "ref": external_ref}).scalars())


def debt_grant_id(session: Session, wallet_id: int) -> int | None:
    """The wallet's debt grant, settled or not (a wallet has at most one for life)."""
    grant_id: int | None = session.execute(_DEBT, {"w": wallet_id}).scalar()
    return grant_id


def due_grants(session: Session, now: datetime, limit: int) -> list[tuple[int, int]]:
    """(grant id, wallet id) of up to ``limit`` grants expired at ``now`` with credits left."""
    rows = session.execute(_DUE, {"now": now, "waited": now - ROLLOVER_GRACE, "n": limit}).all()
    return [(grant_id, wallet_id) for grant_id, wallet_id in rows]
