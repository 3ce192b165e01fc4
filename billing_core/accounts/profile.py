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
import re
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import BillingError, InvalidAmount, InvalidCommand, UnknownAccount
from billing_core.ledger.balances import read_balance
from billing_core.ledger.commands import check_account
from billing_core.units import MAX_MC, format_credits

MAX_PAGE = 100
# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is the mail server's call;
# this only stops an obviously wrong value from reaching the notifications outbox.
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
MAX_EMAIL_LEN = 320
MAX_NAME_LEN = 200
STRIPE_CUSTOMER_RE = re.compile(r"cus_[A-Za-z0-9]{1,250}")
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def account_view(session: Session, account: str) -> dict[str, Any] | None:
    """The public shape of an account (balances as credit strings), or None when it has no wallet."""
    balance = read_balance(session, account)
    if balance is None:
        return None
    threshold = balance.low_balance_threshold_mc
    return {
        "account": balance.account,
        "available": format_credits(balance.available_mc),
        "held": format_credits(balance.held_mc),
        "total": format_credits(balance.total_mc),
        "currency": "credits",
        "flags": {"negative": balance.negative, "negative_since": _iso(balance.negative_since)},
        "email": balance.email,
        "name": balance.name,
        "low_balance_threshold": None if threshold is None else format_credits(threshold),
        "stripe_customer_id": balance.stripe_customer_id,
    }


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


def list_transactions(session: Session, account: str, *, cursor: str | None, limit: int) -> dict[str, Any]:
    """The wallet's ledger entries, newest first: ``{"data", "has_more", "next_cursor"}``.

    A cursor names the last entry of the previous page, so pages stay put while new entries arrive (they
    land on page one). Entry ids follow allocation, not commit order: an entry committed late behind a
    page already read is not shown to that reader, but is there on the next walk from the top.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidCommand(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit")
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
    return {
        "data": [
            {
                "id": r.id,
                "kind": r.kind,
                "idempotency_key": r.idempotency_key,
                "external_ref": r.external_ref,
                "available": format_credits(int(r.available_mc)),
                "held": format_credits(int(r.held_mc)),
                "metadata": r.metadata,
                "occurred_at": _iso(r.occurred_at),
                "created_at": _iso(r.created_at),
            }
            for r in rows
        ],
        "has_more": has_more,
        "next_cursor": encode_cursor(rows[-1].id) if has_more else None,
    }


# -- profile ------------------------------------------------------------------------------------------
def _check_email(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_EMAIL_LEN or not EMAIL_RE.fullmatch(value):
        raise InvalidCommand("email must be an email address such as ada@example.com", field="email")
    return value


def _check_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LEN:
        raise InvalidCommand(f"name must be a non-empty string of at most {MAX_NAME_LEN} characters", field="name")
    return value


def _check_threshold(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MC:
        raise InvalidAmount(
            "low_balance_threshold must be zero or a positive amount of credits", field="low_balance_threshold"
        )
    return value


def _check_customer(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not STRIPE_CUSTOMER_RE.fullmatch(value):
        raise InvalidCommand("stripe_customer_id must be a Stripe customer id (cus_...)", field="stripe_customer_id")
    return value


def update_account(
    session_factory: sessionmaker[Session],
    account: str,
    *,
    email: str | _Unset | None = UNSET,
    name: str | _Unset | None = UNSET,
    low_balance_threshold_mc: int | _Unset | None = UNSET,
    stripe_customer_id: str | _Unset | None = UNSET,
) -> dict[str, Any]:
    """Change the fields given (None clears one), creating the wallet if the account is new; returns the
    account view. A Stripe customer id already on another account raises ``StripeCustomerTaken``."""
    check_account(account)
    checks = {
        "email": (email, _check_email),
        "name": (name, _check_name),
        "low_balance_threshold_mc": (low_balance_threshold_mc, _check_threshold),
        "stripe_customer_id": (stripe_customer_id, _check_customer),
    }
    changes = {column: check(value) for column, (value, check) in checks.items() if value is not UNSET}

    def work(uow: unit_of_work.UnitOfWork) -> dict[str, Any]:
        # The wallet lock orders this change against holds and debits on the same account, like any command.
        wallet = uow.book.lock_wallet(account, create=True)
        if changes:
            assignments = ", ".join(f"{column} = :{column}" for column in changes)
            uow.session.execute(
                text(f"UPDATE wallets SET {assignments}, updated_at = now() WHERE id = :id"),
                {**changes, "id": wallet.id},
            )
        view = account_view(uow.session, account)
        assert view is not None
        return view

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
    check_account(account)
    with session_factory() as session:
        view = account_view(session, account)
    if view is not None and view["stripe_customer_id"]:
        return view["stripe_customer_id"]
    customer = gateway.create_customer(
        account=account,
        email=view["email"] if view else None,
        name=view["name"] if view else None,
        idempotency_key=f"customer:{account}",
    )
    customer_id = _check_customer(customer.get("id"))
    assert customer_id is not None

    def work(uow: unit_of_work.UnitOfWork) -> str:
        wallet = uow.book.lock_wallet(account, create=True)
        return uow.session.execute(
            text(
                "UPDATE wallets SET stripe_customer_id = COALESCE(stripe_customer_id, :c), updated_at = now() "
                "WHERE id = :id RETURNING stripe_customer_id"
            ),
            {"c": customer_id, "id": wallet.id},
        ).scalar_one()

    return unit_of_work.run(session_factory, work)
