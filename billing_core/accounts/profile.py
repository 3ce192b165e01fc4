"""What the API reads and changes about a customer account: its balance, its ledger history and its
profile (email, name, low-balance threshold, Stripe customer id). Plain SQLAlchemy; no framework.

Balances are the cached ``balance_mc`` of the wallet's two ledger accounts (``billing check`` proves they
equal the sum of postings). ``spendable_mc`` is what a hold or a debit would find instead: the same
grants minus those past their expiry that the sweeper has not closed yet, and never below zero.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import BillingError, UnknownAccount
from billing_core.ledger.balances import AccountBalance, read_balance
from billing_core.types import StripeCustomerId

MAX_PAGE = 100
# Stripe's answer is checked like any input before it is stored.
_STRIPE_CUSTOMER: TypeAdapter[str] = TypeAdapter(StripeCustomerId)
_CURSOR_PREFIX = "e1:"


class InvalidCursor(BillingError):
    """A ``cursor`` query parameter this module did not hand out."""

    code = "invalid_cursor"


class StripeCustomerTaken(BillingError):
    """The Stripe customer id is already attached to another account (details: account, stripe_customer_id)."""

    code = "stripe_customer_taken"


class _Unset(Enum):
    UNSET = 0


# "Not given" as distinct from None, which clears a field.
UNSET = _Unset.UNSET


class CustomerGateway(Protocol):
    def create_customer(
        self, *, account: str, email: str | None = None, name: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]: ...


# -- transactions -------------------------------------------------------------------------------------
def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The entry id a cursor points after; ``InvalidCursor`` for anything ``encode_cursor`` did not make."""
    digits = ""
    if len(cursor) <= 40:
        with contextlib.suppress(binascii.Error, ValueError):
            digits = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    digits = digits.removeprefix(_CURSOR_PREFIX)
    # Re-encoding must give the cursor back: b64decode skips stray characters, and we want none accepted.
    if not (digits.isascii() and digits.isdigit()) or encode_cursor(int(digits)) != cursor or int(digits) <= 0:
        raise InvalidCursor("cursor is not one this API handed out", cursor=cursor[:100])
    return int(digits)


# Entry ids first, then the entries. Each branch of the UNION ALL is a backward scan of
# ix_postings_account_entry for one account, merged in entry order and cut at the page size, so a page
# costs the same on a wallet with ten entries or ten million. GROUP BY because an entry has one posting
# per grant it touches, often several on the same account.
_PAGE_SQL = text(
    """
    WITH page AS (
        SELECT entry_id FROM (
            (SELECT entry_id FROM postings WHERE account_id = :available AND entry_id < :before
             ORDER BY entry_id DESC)
            UNION ALL
            (SELECT entry_id FROM postings WHERE account_id = :held AND entry_id < :before
             ORDER BY entry_id DESC)
        ) p
        GROUP BY entry_id ORDER BY entry_id DESC LIMIT :n
    )
    SELECT e.id, e.kind, e.idempotency_key, e.external_ref, e.metadata, e.occurred_at, e.created_at,
           COALESCE(sum(p.amount_mc) FILTER (WHERE p.account_id = :available), 0) AS available_mc,
           COALESCE(sum(p.amount_mc) FILTER (WHERE p.account_id = :held), 0) AS held_mc
    FROM page JOIN ledger_entries e ON e.id = page.entry_id
    JOIN postings p ON p.entry_id = page.entry_id AND p.account_id IN (:available, :held)
    GROUP BY e.id ORDER BY e.id DESC
    """
)


@dataclass(frozen=True)
class EntryLine:
    """One ledger entry as the wallet saw it: what it moved on the available and held balances."""

    id: int
    kind: str
    idempotency_key: str
    external_ref: str | None
    available_mc: int
    held_mc: int
    metadata: dict[str, Any]
    occurred_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class TransactionPage:
    """A page of the history, newest first; ``next_cursor`` is None on the last page."""

    entries: tuple[EntryLine, ...]
    next_cursor: str | None


def list_transactions(session: Session, account: str, *, cursor: str | None, limit: int) -> TransactionPage:
    """The wallet's ledger entries, newest first, ``limit`` (1 to ``MAX_PAGE``) of them.

    A cursor names the last entry of the previous page, so pages stay put while new entries arrive (they
    land on page one). Entry ids follow allocation, not commit order: an entry committed late behind a
    page already read is not shown to that reader, but is there on the next walk from the top.
    """
    before = decode_cursor(cursor) if cursor is not None else 2**63 - 1
    wallet = session.execute(
        text("SELECT available_account_id, held_account_id FROM wallets WHERE account = :account"),
        {"account": account},
    ).first()
    if wallet is None:
        raise UnknownAccount.named(account)
    rows = session.execute(
        _PAGE_SQL,
        {"available": wallet.available_account_id, "held": wallet.held_account_id, "before": before, "n": limit + 1},
    ).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    entries = tuple(
        EntryLine(
            id=r.id,
            kind=r.kind,
            idempotency_key=r.idempotency_key,
            external_ref=r.external_ref,
            available_mc=int(r.available_mc),
            held_mc=int(r.held_mc),
            metadata=r.metadata,
            occurred_at=r.occurred_at,
            created_at=r.created_at,
        )
        for r in rows
    )
    return TransactionPage(entries=entries, next_cursor=encode_cursor(rows[-1].id) if has_more else None)


# -- profile ------------------------------------------------------------------------------------------
def update_account(
    session_factory: sessionmaker[Session],
    account: str,
    *,
    email: str | _Unset | None = UNSET,
    name: str | _Unset | None = UNSET,
    low_balance_threshold_mc: int | _Unset | None = UNSET,
    stripe_customer_id: str | _Unset | None = UNSET,
) -> AccountBalance:
    """Change the fields given (None clears one), creating the wallet if the account is new; returns the
    account. A Stripe customer id already on another account raises ``StripeCustomerTaken``. The values are
    validated already (``AccountUpdateBody`` of the API, on the shared types)."""
    given = {
        "email": email,
        "name": name,
        "low_balance_threshold_mc": low_balance_threshold_mc,
        "stripe_customer_id": stripe_customer_id,
    }
    changes = {column: value for column, value in given.items() if value is not UNSET}

    def work(uow: unit_of_work.UnitOfWork) -> AccountBalance:
        # The wallet lock orders this change against holds and debits on the same account, like any command.
        wallet = uow.book.lock_wallet(account, create=True)
        if changes:
            assignments = ", ".join(f"{column} = :{column}" for column in changes)
            uow.session.execute(
                text(f"UPDATE wallets SET {assignments}, updated_at = now() WHERE id = :id"),
                {**changes, "id": wallet.id},
            )
        balance = read_balance(uow.session, account)
        assert balance is not None, "the wallet was locked (created) above"
        return balance

    try:
        return unit_of_work.run(session_factory, work)
    except IntegrityError as exc:
        # The only unique column written here is stripe_customer_id: the constraint is the check, so two
        # accounts claiming one customer at the same moment cannot both win.
        if getattr(exc.orig, "sqlstate", None) != "23505":
            raise
        raise StripeCustomerTaken(
            "this Stripe customer is attached to another account",
            account=account,
            stripe_customer_id=changes.get("stripe_customer_id"),
        ) from None


def ensure_stripe_customer(session_factory: sessionmaker[Session], gateway: CustomerGateway, account: str) -> str:
    """The account's Stripe customer id, creating the customer through ``gateway`` on first use.

    The Stripe call happens outside any transaction (no wallet lock held across the network). Its
    idempotency key ``customer:<account>`` makes two concurrent first checkouts get one customer, and the
    id is stored only if the wallet still has none, so both end up using the same one.
    """
    with session_factory() as session:
        balance = read_balance(session, account)
    if balance is not None and balance.stripe_customer_id:
        return balance.stripe_customer_id
    customer = gateway.create_customer(
        account=account,
        email=balance.email if balance else None,
        name=balance.name if balance else None,
        idempotency_key=f"customer:{account}",
    )
    customer_id = _STRIPE_CUSTOMER.validate_python(customer.get("id"))

    def work(uow: unit_of_work.UnitOfWork) -> str:
        wallet = uow.book.lock_wallet(account, create=True)
        stored: str = uow.session.execute(
            text(
                "UPDATE wallets SET stripe_customer_id = COALESCE(stripe_customer_id, :c), updated_at = now() "
                "WHERE id = :id RETURNING stripe_customer_id"
            ),
            {"c": customer_id, "id": wallet.id},
        ).scalar_one()
        return stored

    return unit_of_work.run(session_factory, work)
