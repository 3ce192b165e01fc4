"""Wallet rows outside the locking path: lookups by name or id, and the negative flag.

Locking and creating wallets is ``Book.lock_wallets``'s job (one statement per transaction on the hot path,
kept as measured SQL there); these are the other reads and writes of the ``wallets`` table, on SQLAlchemy Core.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, any_, func, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.db.tables import Wallet


def wallet_exists(session: Session, account: str) -> bool:
    return session.execute(select(Wallet.id).where(Wallet.account == account)).first() is not None


def account_names(session: Session, wallet_ids: list[int]) -> list[str]:
    """The account names of these wallets (unlocked: the caller locks them by name). The ids go as one array,
    not an IN list: a sweep names up to 10,000 of them, and one statement shape keeps one prepared plan."""
    ids = literal(wallet_ids, ARRAY(BigInteger))
    return list(session.execute(select(Wallet.account).where(Wallet.id == any_(ids))).scalars())


def set_negative_since(session: Session, wallet_id: int, since: datetime | None) -> None:
    """Flag a wallet as carrying debt since ``since``, or clear the flag (None)."""
    session.execute(
        update(Wallet)
        .where(Wallet.id == wallet_id)
        .values(negative_since=since, updated_at=func.now())
        # No ORM objects are loaded in a ledger session: nothing to synchronise.
        .execution_options(synchronize_session=False)
    )
