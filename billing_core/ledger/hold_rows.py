"""Hold rows: every read and write of the ``holds`` table, on SQLAlchemy Core.

A hold is two-phase (DESIGN rule 3): placed ``pending`` by an entry that moves credits from available to
held, then closed once, by a capture, a release or the expiry sweep. The rules (who may capture, what an
expired hold means) live in ``handlers``; this module only knows the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session

from billing_core.db.tables import Hold, Posting, Wallet


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
    row = session.execute(
        select(Hold.id, Wallet.account, Hold.amount_mc, Hold.status, Hold.expires_at, Hold.captured_mc)
        .join(Wallet, Wallet.id == Hold.wallet_id)
        .where(or_(Hold.placed_entry_id == entry_id, Hold.settled_entry_id == entry_id))
    ).first()
    return None if row is None else HoldView(*row)


def hold_wallet_id(session: Session, hold_id: str) -> int | None:
    """The wallet of a hold, read without a lock: the caller locks that wallet, then reads the hold again."""
    return session.execute(select(Hold.wallet_id).where(Hold.id == hold_id)).scalar()


def read_hold(session: Session, hold_id: str) -> HoldRow:
    row = session.execute(
        select(Hold.amount_mc, Hold.status, Hold.expires_at, Hold.placed_entry_id).where(Hold.id == hold_id)
    ).one()
    return HoldRow(*row)


def hold_allocations(session: Session, placed_entry_id: int, held_account_id: int) -> list[tuple[int, int]]:
    """(grant id, amount) of each credit the hold took, in the order it drew them: the placing entry's
    postings on the held account, which keep every grant's provenance for the capture and the release."""
    rows = session.execute(
        select(Posting.grant_id, Posting.amount_mc)
        .where(Posting.entry_id == placed_entry_id, Posting.account_id == held_account_id)
        .order_by(Posting.line)
    ).all()
    allocations: list[tuple[int, int]] = []
    for grant_id, amount_mc in rows:
        # A held posting always names its grant (place_hold posts every draw with its lot).
        assert grant_id is not None
        allocations.append((grant_id, amount_mc))
    return allocations


def insert_hold(session: Session, hold: HoldView, wallet_id: int, placed_entry_id: int) -> None:
    session.execute(
        insert(Hold).values(
            id=hold.id,
            wallet_id=wallet_id,
            amount_mc=hold.amount_mc,
            status=hold.status,
            expires_at=hold.expires_at,
            placed_entry_id=placed_entry_id,
        )
    )


def close_hold(
    session: Session, hold_id: str, *, status: str, captured_mc: int | None, settled_entry_id: int, now: datetime
) -> None:
    """Mark a pending hold settled by ``settled_entry_id``; a hold already closed is left as it is."""
    session.execute(
        update(Hold)
        .where(Hold.id == hold_id, Hold.status == "pending")
        .values(status=status, captured_mc=captured_mc, settled_entry_id=settled_entry_id, settled_at=now)
        # No ORM objects are loaded in a ledger session: nothing to synchronise.
        .execution_options(synchronize_session=False)
    )


def due_holds(session: Session, now: datetime, limit: int) -> list[tuple[str, int]]:
    """(hold id, wallet id) of up to ``limit`` pending holds whose TTL has run out at ``now``."""
    rows = session.execute(
        select(Hold.id, Hold.wallet_id)
        .where(Hold.status == "pending", Hold.expires_at <= now)
        .order_by(Hold.id)
        .limit(limit)
    ).all()
    return [(hold_id, wallet_id) for hold_id, wallet_id in rows]
