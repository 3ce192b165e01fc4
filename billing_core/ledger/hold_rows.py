"""Hold rows: every read and write of the ``holds`` table, on SQLAlchemy Core.

A hold is two-phase (DESIGN rule 3): placed ``pending`` by an entry that moves credits from available to
held, then closed once, by a capture, a release or the expiry sweep. The rules (who may capture, what an
expired hold means) live in ``handlers``; this module only knows the rows it reads. Holds are opened and
closed by the ``Book``, in the same statement as the entry that opens or closes them (``book._HOLD_ROWS``).

Each statement is built once, on the tables, and run with bound parameters, as in ``wallet_rows`` (whose
docstring has the measurements). The constant ``'pending'`` is written into the SQL, not bound: the pending
expiry index is partial (``WHERE status = 'pending'``), and the generic plan of a prepared statement can only
use it when the query says so in a literal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

from sqlalchemy import BigInteger, Integer, String, Table, bindparam, literal_column, or_, select
from sqlalchemy.orm import Session

from billing_core.db.tables import Hold, Posting, Wallet

_HOLDS: Table = Hold.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_POSTINGS: Table = Posting.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
holds = _HOLDS.c
postings = _POSTINGS.c
wallets = _WALLETS.c
_PENDING = literal_column("'pending'", String)

_entry = bindparam("e", type_=BigInteger)
_FOR_ENTRY = (
    select(holds.id, wallets.account, holds.amount_mc, holds.status, holds.expires_at, holds.captured_mc)
    .select_from(_HOLDS.join(_WALLETS, wallets.id == holds.wallet_id))
    .where(or_(holds.placed_entry_id == _entry, holds.settled_entry_id == _entry))
)
# A hold and the postings of its placing entry on its wallet's held account, in drawing order (raw SQL: it runs
# in the lock's pipeline, ``Book.lock_wallet_of_hold``).
_READ_WITH_ALLOCATIONS: LiteralString = (
    "SELECT h.amount_mc, h.status, h.expires_at, h.placed_entry_id, p.grant_id, p.amount_mc AS held_mc "
    "FROM holds h JOIN wallets w ON w.id = h.wallet_id "
    "LEFT JOIN postings p ON p.entry_id = h.placed_entry_id AND p.account_id = w.held_account_id "
    "WHERE h.id = %(h)s ORDER BY p.line"
)
_DUE = (
    select(holds.id, holds.wallet_id)
    .where(holds.status == _PENDING, holds.expires_at <= bindparam("now"))
    .order_by(holds.id)
    .limit(bindparam("n", type_=Integer))
)


@dataclass(frozen=True)
class HoldView:
    """A hold as the API shows it."""

    id: str
    account: str
    amount_mc: int
    status: str
    expires_at: datetime
    captured_mc: int | None = None


@dataclass(frozen=True)
class HoldRow:
    """What a capture or release needs of a hold, read under its wallet's lock."""

    amount_mc: int
    status: str
    expires_at: datetime
    placed_entry_id: int


def hold_for_entry(session: Session, entry_id: int) -> HoldView | None:
    """The hold an entry placed or settled: what a replayed hold command answers with."""
    row = session.execute(_FOR_ENTRY, {"e": entry_id}).first()
    return None if row is None else HoldView(*row)


def read_with_allocations(hold_id: str) -> tuple[LiteralString, dict[str, Any]]:
    """The statement that reads a hold with its allocations (``hold_with_allocations`` reads its rows), for the
    pipeline of its wallet's lock."""
    return _READ_WITH_ALLOCATIONS, {"h": hold_id}


def hold_with_allocations(rows: list[Any]) -> tuple[HoldRow, list[tuple[int, int]]]:
    """The hold, and (grant id, amount) of each credit it took in the order it drew them: the placing entry's
    postings on the held account, which keep every grant's provenance for the capture and the release. One
    statement (the hold's row repeats on each of its postings)."""
    if not rows:
        raise LookupError("no such hold")  # the caller found it under the same lock: cannot happen
    first = rows[0]
    hold = HoldRow(first.amount_mc, first.status, first.expires_at, first.placed_entry_id)
    allocations: list[tuple[int, int]] = []
    for row in rows:
        # A held posting always names its grant (place_hold posts every draw with its lot).
        if row.grant_id is not None:
            allocations.append((row.grant_id, row.held_mc))
    return hold, allocations


def due_holds(session: Session, now: datetime, limit: int) -> list[tuple[str, int]]:
    """(hold id, wallet id) of up to ``limit`` pending holds whose TTL has run out at ``now``."""
    rows = session.execute(_DUE, {"now": now, "n": limit}).all()
    return [(hold_id, wallet_id) for hold_id, wallet_id in rows]
