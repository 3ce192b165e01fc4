"""Balance reads: the one query for what a wallet holds, and the one rule for what it can spend.

A balance is the cached ``balance_mc`` of the wallet's two ledger accounts (``billing check`` proves they equal
the sum of their postings). What a hold or a debit placed now could use is less: the same grants minus those
past their expiry that the sweeper has not closed yet, and nothing at all while the wallet is flagged negative.
Both are written here once, on SQLAlchemy Core; the API, the CLI and the tests read through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from billing_core.db.tables import Grant, LedgerAccount, Wallet


@dataclass(frozen=True)
class AccountBalance:
    """A wallet as the API shows it: balances in millicredits, the negative flag, and the profile."""

    account: str
    available_mc: int
    held_mc: int
    negative_since: datetime | None
    email: str | None = None
    name: str | None = None
    low_balance_threshold_mc: int | None = None
    stripe_customer_id: str | None = None

    @property
    def total_mc(self) -> int:
        return self.available_mc + self.held_mc

    @property
    def negative(self) -> bool:
        return self.negative_since is not None


_available = aliased(LedgerAccount, name="available")
_held = aliased(LedgerAccount, name="held")
_BALANCE = (
    select(
        Wallet.account,
        _available.balance_mc.label("available_mc"),
        _held.balance_mc.label("held_mc"),
        Wallet.negative_since,
        Wallet.email,
        Wallet.name,
        Wallet.low_balance_threshold_mc,
        Wallet.stripe_customer_id,
    )
    .join(_available, _available.id == Wallet.available_account_id)
    .join(_held, _held.id == Wallet.held_account_id)
)


def read_balance(db: Session | Connection, account: str) -> AccountBalance | None:
    """The account's balance and profile, or None when it has no wallet."""
    row = db.execute(_BALANCE.where(Wallet.account == account)).first()
    return None if row is None else AccountBalance(*row)


def spendable_grants(now: datetime) -> ColumnElement[bool]:
    """The spendable rule as SQL: a grant that is not the debt lot, has credits left and has not expired at
    ``now``. Mirrors ``grants.GrantLot.spendable_at``, which the ledger applies to grants it has loaded."""
    return and_(
        Grant.source != "debt",
        Grant.remaining_mc > 0,
        or_(Grant.expires_at.is_(None), Grant.expires_at > now),
    )


def spendable_mc(db: Session | Connection, account: str, now: datetime) -> int:
    """Credits a hold placed at ``now`` could reserve: 0 for an unknown or flagged (negative) account.
    Mirrors the flag check of ``handlers.place_hold``."""
    row = db.execute(
        select(Wallet.negative_since, func.coalesce(func.sum(Grant.remaining_mc), 0))
        .select_from(Wallet)
        .outerjoin(Grant, and_(Grant.wallet_id == Wallet.id, spendable_grants(now)))
        .where(Wallet.account == account)
        .group_by(Wallet.id)
    ).first()
    if row is None or row[0] is not None:
        return 0
    return int(row[1])
