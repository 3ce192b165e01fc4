"""Reads of the mirrored subscriptions and invoices (rows written only by the Stripe event handlers): a
wallet's current subscription for its balance, one subscription by id for the plan-change and cancel
endpoints, a wallet's subscription history for the one-trial-per-account rule, and its invoices a page at a
time, newest first.

Statements are built once, on the tables, and run with bound parameters (``ledger/wallet_rows`` says why).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Table, bindparam, case, func, select, tuple_
from sqlalchemy.orm import Session

from billing_core.db.tables import InvoiceRow, SubscriptionRow, Wallet
from billing_core.errors import UnknownAccount
from billing_core.ledger.history import InvalidCursor

MAX_PAGE = 100
# A subscription in one of these is one the account has now: a second cannot be started.
LIVE_STATUSES = ("active", "trialing", "past_due")
# Ended for good: shown only when the account has nothing else.
ENDED_STATUSES = ("canceled", "incomplete_expired")

_SUBS: Table = SubscriptionRow.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_INVOICES: Table = InvoiceRow.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
subs, invoices, wallets = _SUBS.c, _INVOICES.c, _WALLETS.c

_SUB_COLUMNS = (
    subs.id,
    subs.plan,
    subs.interval,
    subs.status,
    subs.current_period_start,
    subs.current_period_end,
    subs.cancel_at_period_end,
    subs.trial_end,
)
_ENDED_LAST = case((subs.status.in_(ENDED_STATUSES), 1), else_=0)
# The balance's one extra query: the newest subscription not ended, else the newest ended one.
_CURRENT = (
    select(*_SUB_COLUMNS)
    .select_from(_SUBS.join(_WALLETS, wallets.id == subs.wallet_id))
    .where(wallets.account == bindparam("account"))
    .order_by(_ENDED_LAST, subs.created_at.desc(), subs.id.desc())
    .limit(1)
)
_BY_ID = (
    select(*_SUB_COLUMNS, subs.stripe_price_id, subs.stripe_customer_id, wallets.account)
    .select_from(_SUBS.join(_WALLETS, wallets.id == subs.wallet_id))
    .where(subs.id == bindparam("id"))
)
# (subscriptions ever, the id of one live now) for one account: the trial rule and the one-at-a-time rule.
_HISTORY = (
    select(func.count(subs.id), func.min(case((subs.status.in_(LIVE_STATUSES), subs.id))))
    .select_from(_SUBS.join(_WALLETS, wallets.id == subs.wallet_id))
    .where(wallets.account == bindparam("account"))
)
_WALLET_ID = select(wallets.id).where(wallets.account == bindparam("account"))
_INVOICE_COLUMNS = (
    invoices.id,
    invoices.number,
    invoices.status,
    invoices.currency,
    invoices.amount_due,
    invoices.amount_paid,
    invoices.total,
    invoices.billing_reason,
    invoices.subscription_id,
    invoices.period_start,
    invoices.period_end,
    invoices.hosted_invoice_url,
    invoices.stripe_created,
    invoices.paid_at,
    invoices.attempt_count,
    invoices.next_payment_attempt,
)
_NEWEST_FIRST = (invoices.stripe_created.desc(), invoices.id.desc())
_INVOICES_FIRST_PAGE = (
    select(*_INVOICE_COLUMNS).where(invoices.wallet_id == bindparam("w")).order_by(*_NEWEST_FIRST).limit(bindparam("n"))
)
_INVOICES_AFTER = (
    select(*_INVOICE_COLUMNS)
    .where(
        invoices.wallet_id == bindparam("w"),
        tuple_(invoices.stripe_created, invoices.id) < tuple_(bindparam("created"), bindparam("after")),
    )
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("n"))
)


@dataclass(frozen=True)
class SubscriptionView:
    id: str
    plan: str
    interval: str
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None


@dataclass(frozen=True)
class StoredSubscription:
    """A mirrored subscription with what the plan-change and cancel endpoints need."""

    view: SubscriptionView
    stripe_price_id: str | None
    stripe_customer_id: str | None
    account: str

    @property
    def ended(self) -> bool:
        return self.view.status in ENDED_STATUSES


@dataclass(frozen=True)
class SubscriptionHistory:
    """How many subscriptions the account ever had, and the one it has now (active, trialing, past due)."""

    count: int
    live: str | None


@dataclass(frozen=True)
class InvoiceLine:
    id: str
    number: str | None
    status: str
    currency: str
    amount_due: int
    amount_paid: int
    total: int
    billing_reason: str | None
    subscription: str | None
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    created: datetime
    paid_at: datetime | None
    attempt_count: int
    next_payment_attempt: datetime | None


@dataclass(frozen=True)
class InvoicePage:
    invoices: tuple[InvoiceLine, ...]
    next_cursor: str | None


def current_subscription(db: Session | Connection, account: str) -> SubscriptionView | None:
    """The account's subscription now: the newest one not ended, else the newest ended one; None if none."""
    row = db.execute(_CURRENT, {"account": account}).first()
    return None if row is None else SubscriptionView(*row)


def find_subscription(db: Session | Connection, subscription_id: str) -> StoredSubscription | None:
    row = db.execute(_BY_ID, {"id": subscription_id}).first()
    if row is None:
        return None
    return StoredSubscription(SubscriptionView(*row[:8]), row[8], row[9], row[10])


def subscription_history(db: Session | Connection, account: str) -> SubscriptionHistory:
    count, live = db.execute(_HISTORY, {"account": account}).one()
    return SubscriptionHistory(int(count), live)


# -- invoices -------------------------------------------------------------------------------------------------
_CURSOR_PREFIX = "i1"


def _encode_cursor(created: datetime, invoice_id: str) -> str:
    micros = int(created.timestamp()) * 1_000_000 + created.microsecond
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}:{micros}:{invoice_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    text = ""
    if len(cursor) <= 400:
        with contextlib.suppress(binascii.Error, ValueError):
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    parts = text.split(":", 2)
    if len(parts) == 3 and parts[0] == _CURSOR_PREFIX and parts[1].isascii() and parts[1].isdigit() and parts[2]:
        seconds, micros = divmod(int(parts[1]), 1_000_000)
        with contextlib.suppress(OverflowError, ValueError, OSError):
            created = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
            if _encode_cursor(created, parts[2]) == cursor:
                return created, parts[2]
    raise InvalidCursor("cursor is not one this API handed out", cursor=cursor[:100])


def list_invoices(session: Session, account: str, *, cursor: str | None, limit: int) -> InvoicePage:
    """The account's invoices, newest first (Stripe's creation time, then id), ``limit`` (1 to ``MAX_PAGE``) at a
    time; a cursor names the last invoice of the previous page. ``UnknownAccount`` for an account without a
    wallet."""
    after = _decode_cursor(cursor) if cursor is not None else None
    wallet_id = session.execute(_WALLET_ID, {"account": account}).scalar()
    if wallet_id is None:
        raise UnknownAccount.named(account)
    if after is None:
        rows = session.execute(_INVOICES_FIRST_PAGE, {"w": wallet_id, "n": limit + 1}).all()
    else:
        params = {"w": wallet_id, "n": limit + 1, "created": after[0], "after": after[1]}
        rows = session.execute(_INVOICES_AFTER, params).all()
    lines = tuple(InvoiceLine(*row) for row in rows[:limit])
    next_cursor = _encode_cursor(lines[-1].created, lines[-1].id) if len(rows) > limit else None
    return InvoicePage(lines, next_cursor)
