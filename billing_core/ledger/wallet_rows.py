"""Wallet rows outside the locking path: lookups by name or id, the negative flag, the profile and the
Stripe customer link.

Locking and creating wallets is ``Book.lock_wallets``'s job (one statement per transaction on the hot path,
kept as measured SQL there); these are the other reads and writes of the ``wallets`` table, on SQLAlchemy Core.
Each statement is built once, here, on the table (not the ORM class) and run with bound parameters: building
a statement per call, or going through the ORM's bulk-update path, cost 2.5 to 3.5 times the CPU of the SQL
text it replaced (``customer.updated`` is the worker's most common event), while a prebuilt Core statement
costs no more than the text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Table, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing_core.db.tables import Wallet

_TABLE: Table = Wallet.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
wallets = _TABLE.c

_EXISTS = select(wallets.id).where(wallets.account == bindparam("account"))
# The ids go as one array, not an IN list: a sweep names up to 10,000 of them, and one statement shape keeps
# one prepared plan.
_NAMES = select(wallets.account).where(wallets.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
_LEDGER_ACCOUNTS = select(wallets.available_account_id, wallets.held_account_id).where(
    wallets.account == bindparam("account")
)
_SET_NEGATIVE = (
    update(_TABLE).where(wallets.id == bindparam("w")).values(negative_since=bindparam("since"), updated_at=func.now())
)
_KEEP_FIRST_CUSTOMER = (
    update(_TABLE)
    .where(wallets.id == bindparam("w"))
    .values(
        stripe_customer_id=func.coalesce(wallets.stripe_customer_id, bindparam("c")),
        updated_at=func.now(),
    )
    .returning(wallets.stripe_customer_id)
)
_UNLINK_OTHERS = (
    update(_TABLE)
    .where(wallets.stripe_customer_id == bindparam("c"), wallets.id != bindparam("w"))
    .values(stripe_customer_id=None, updated_at=func.now())
)
_LINK = (
    update(_TABLE)
    .where(wallets.id == bindparam("w"))
    .values(
        stripe_customer_id=bindparam("c"),
        email=func.coalesce(bindparam("email"), wallets.email),
        name=func.coalesce(bindparam("name"), wallets.name),
        updated_at=func.now(),
    )
)
_UNLINK = (
    update(_TABLE)
    .where(wallets.stripe_customer_id == bindparam("c"))
    .values(stripe_customer_id=None, updated_at=func.now())
)
PROFILE_COLUMNS = frozenset({"email", "name", "low_balance_threshold_mc", "stripe_customer_id"})


def wallet_exists(session: Session, account: str) -> bool:
    return session.execute(_EXISTS, {"account": account}).first() is not None


def account_names(session: Session, wallet_ids: list[int]) -> list[str]:
    """The account names of these wallets (unlocked: the caller locks them by name)."""
    return list(session.execute(_NAMES, {"ids": wallet_ids}).scalars())


def ledger_account_ids(session: Session, account: str) -> tuple[int, int] | None:
    """The ids of the account's available and held ledger accounts, or None when it has no wallet."""
    row = session.execute(_LEDGER_ACCOUNTS, {"account": account}).first()
    return None if row is None else (row[0], row[1])


def set_negative_since(session: Session, wallet_id: int, since: datetime | None) -> None:
    """Flag a wallet as carrying debt since ``since``, or clear the flag (None)."""
    session.execute(_SET_NEGATIVE, {"w": wallet_id, "since": since})


def update_profile(session: Session, wallet_id: int, changes: Mapping[str, Any]) -> None:
    """Set profile columns (``PROFILE_COLUMNS``); None clears one. The caller holds the wallet's lock; a
    customer id already on another wallet fails on the unique index. (An operator's edit, rare: the
    statement is built for the columns given.)"""
    unknown = set(changes) - PROFILE_COLUMNS
    if unknown:
        raise ValueError(f"not profile columns: {sorted(unknown)}")
    session.execute(update(_TABLE).where(wallets.id == wallet_id).values(**changes, updated_at=func.now()))


def keep_first_stripe_customer(session: Session, wallet_id: int, customer_id: str) -> str:
    """Store ``customer_id`` unless the wallet has one already; returns the one it keeps (two first checkouts
    racing both end up with the first stored)."""
    stored = session.execute(_KEEP_FIRST_CUSTOMER, {"w": wallet_id, "c": customer_id}).scalar_one()
    assert stored is not None, "coalesce with a non-null id"
    return str(stored)


def link_stripe_customer(
    session: Session, wallet_id: int, customer_id: str, *, email: str | None, name: str | None, move: bool
) -> None:
    """Point the customer at this wallet, taking its email and name when Stripe has them. ``move``: the wallet
    does not have this customer yet, so another may: one customer, one wallet, the other lets it go first."""
    if move:
        session.execute(_UNLINK_OTHERS, {"c": customer_id, "w": wallet_id})
    session.execute(_LINK, {"w": wallet_id, "c": customer_id, "email": email, "name": name})


def unlink_stripe_customer(session: Session, customer_id: str) -> None:
    session.execute(_UNLINK, {"c": customer_id})
