"""Balance reads: the one query for what a wallet holds, and the one rule for what it can spend.

A balance is the cached ``balance_mc`` of the wallet's two ledger accounts (``billing check`` proves they equal
the sum of their postings). What a hold or a debit placed now could use is less: the same grants minus those
past their expiry that the sweeper has not closed yet, and nothing at all while the wallet is flagged negative.
Both are written here once, on SQLAlchemy Core; the API, the CLI and the tests read through them. Their
statements are built once, on the tables, and run with bound parameters, as in ``wallet_rows`` (whose docstring
has the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Connection, DateTime, Table, and_, bindparam, func, literal_column, or_, select
from sqlalchemy.orm import Session

from billing_core.db.engine import compiled_sql
from billing_core.db.tables import Grant, LedgerAccount, Wallet
from billing_core.ledger.grant_rows import DEBT, ZERO

_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_GRANTS: Table = Grant.__table__  # type: ignore[assignment]
_ACCOUNTS: Table = LedgerAccount.__table__  # type: ignore[assignment]
wallets = _WALLETS.c
grants = _GRANTS.c


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


def spendable_grants(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """The spendable rule as SQL: a grant that is not the debt lot, has credits left and has not expired at
    ``now`` (a datetime, or a bound parameter in a statement built once). Mirrors
    ``grants.GrantLot.spendable_at``, which the ledger applies to grants it has loaded."""
    return and_(
        grants.source != DEBT,
        # A literal, as in grant_rows: it lets the generic plan use the wallet's partial index of open lots.
        grants.remaining_mc > ZERO,
        or_(grants.expires_at.is_(None), grants.expires_at > now),
    )


_available = _ACCOUNTS.alias("available")
_held = _ACCOUNTS.alias("held")
_BALANCE = (
    select(
        wallets.account,
        _available.c.balance_mc.label("available_mc"),
        _held.c.balance_mc.label("held_mc"),
        wallets.negative_since,
        wallets.email,
        wallets.name,
        wallets.low_balance_threshold_mc,
        wallets.stripe_customer_id,
    )
    .select_from(
        _WALLETS.join(_available, _available.c.id == wallets.available_account_id).join(
            _held, _held.c.id == wallets.held_account_id
        )
    )
    .where(wallets.account == bindparam("account"))
)
_SPENDABLE = (
    select(wallets.negative_since, func.coalesce(func.sum(grants.remaining_mc), literal_column("0")))
    .select_from(
        _WALLETS.outerjoin(
            _GRANTS,
            and_(grants.wallet_id == wallets.id, spendable_grants(bindparam("now", type_=DateTime(timezone=True)))),
        )
    )
    .where(wallets.account == bindparam("account"))
    .group_by(wallets.id)
)
# Run on the driver's connection (``db.engine.raw_read``).
_SPENDABLE_SQL = compiled_sql(_SPENDABLE)
# The same, with the wallet's plan and limit overrides: the one read of every ``POST /v1/check``.
_SPENDABLE_AND_PLAN_SQL = compiled_sql(_SPENDABLE.add_columns(wallets.plan, wallets.limit_overrides))


@dataclass(frozen=True)
class SpendableState:
    """What a hold placed now could reserve, whether the wallet is flagged negative, and its stored plan and
    limit overrides (those of the token limits: ``pricing.limits``). An unknown account: 0, not flagged, no plan."""

    spendable_mc: int
    flagged: bool
    plan: str | None
    limit_overrides: dict[str, Any]


def spendable_state_and_plan(conn: psycopg.Connection[Any], account: str, now: datetime) -> SpendableState:
    """``spendable_state`` and the wallet's plan in one query, on a driver connection."""
    row = conn.execute(_SPENDABLE_AND_PLAN_SQL, {"account": account, "now": now}).fetchone()
    if row is None:
        return SpendableState(0, False, None, {})
    flagged = row[0] is not None
    return SpendableState(0 if flagged else int(row[1]), flagged, row[2], dict(row[3] or {}))


def read_balance(db: Session | Connection, account: str) -> AccountBalance | None:
    """The account's balance and profile, or None when it has no wallet."""
    row = db.execute(_BALANCE, {"account": account}).first()
    return None if row is None else AccountBalance(*row)


def spendable_mc(conn: psycopg.Connection[Any], account: str, now: datetime) -> int:
    """Credits a hold placed at ``now`` could reserve: 0 for an unknown or flagged (negative) account.
    Mirrors the flag check of ``handlers.place_hold``."""
    return spendable_state(conn, account, now)[0]


def spendable_state(conn: psycopg.Connection[Any], account: str, now: datetime) -> tuple[int, bool]:
    """``(spendable_mc(...), flagged)``: the credits a hold placed at ``now`` could reserve, and whether the
    account is flagged negative (it then can reserve nothing). An unknown account: ``(0, False)``. On a
    driver connection (``db.engine.raw_read``)."""
    row = conn.execute(_SPENDABLE_SQL, {"account": account, "now": now}).fetchone()
    if row is None:
        return 0, False
    if row[0] is not None:
        return 0, True
    return int(row[1]), False
