"""The credit purchase behind a Stripe payment: found in the ledger, or credited from its Checkout Session.

A refund or a dispute names a payment (its PaymentIntent); what it takes back is a share of the credits that
payment bought. Out of order is normal (DESIGN rule 7): the refund may be handled before the purchase's own
completion event, so the purchase is then credited from the Checkout Session Stripe shows as paid (read
before the ledger transaction, see ``event_handlers``), and when Stripe does not show it paid either the
event waits (``Waiting``) and is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import String, Table, and_, bindparam, literal_column, or_, select, text
from sqlalchemy.orm import Session

from billing_core.db.tables import Grant, LedgerEntry, Wallet
from billing_core.ledger.book import Book
from billing_core.ledger.commands import PurchaseCredits
from billing_core.ledger.handlers import purchase_credits
from billing_core.notify.outbox import notify
from billing_core.units import format_credits, parse_credits, round_mc

PROCESSED, IGNORED = "processed", "ignored"

_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_GRANTS: Table = Grant.__table__  # type: ignore[assignment]
_WALLETS: Table = Wallet.__table__  # type: ignore[assignment]
entries, grants, wallets = _ENTRIES.c, _GRANTS.c, _WALLETS.c
_PURCHASE = literal_column("'purchase'", String)
# Built once on the tables, as ``ledger/wallet_rows`` does (its docstring says why); the constants stay
# literals, as they were in the SQL text this replaced.
_FIND_PURCHASE = (
    select(wallets.account, grants.amount_mc, entries.metadata)
    .select_from(
        _ENTRIES.join(_GRANTS, and_(grants.entry_id == entries.id, grants.source == _PURCHASE)).join(
            _WALLETS, wallets.id == grants.wallet_id
        )
    )
    .where(
        entries.external_ref == bindparam("pi"),
        entries.kind == _PURCHASE,
        # A Checkout's purchase, or an auto-recharge's (``stripe.auto_recharge``): never a won dispute's.
        or_(
            entries.idempotency_key.like(literal_column("'checkout:%'")),
            entries.idempotency_key.like(literal_column("'auto_recharge:%'")),
        ),
    )
    .order_by(entries.id)
    .limit(1)
)


class Waiting(Exception):
    """The event depends on something not seen yet (a refund before its purchase); retry it later."""


@dataclass(frozen=True)
class Purchase:
    account: str
    amount_mc: int
    amount_total: int  # what the customer paid, in the currency's minor unit
    payment_intent: str

    def share(self, amount: int) -> int:
        """Credits matching ``amount`` of the payment, rounded half-up once."""
        if self.amount_total <= 0:
            return self.amount_mc
        return round_mc(Decimal(self.amount_mc) * Decimal(amount) / Decimal(self.amount_total))


def find_purchase(session: Session, payment_intent: str) -> Purchase | None:
    """The purchase ``payment_intent`` paid for, as credited in the ledger (a plain read: it takes no lock)."""
    row = session.execute(_FIND_PURCHASE, {"pi": payment_intent}).first()
    if row is None:
        return None
    account, amount_mc, metadata = row
    return Purchase(account, amount_mc, int(metadata.get("amount_total") or 0), payment_intent)


def is_paid(session: dict[str, Any]) -> bool:
    return session.get("payment_status") in ("paid", "no_payment_required") and session.get("status") == "complete"


def credit_checkout(book: Book, session: dict[str, Any]) -> str:
    """Credit the package a paid Checkout Session sold, once (key ``checkout:<cs_id>``)."""
    metadata = session.get("metadata") or {}
    account = metadata.get("account") or session.get("client_reference_id")
    credits = metadata.get("credits")
    if not account or credits is None:
        return IGNORED  # not a credit package sold by us (another integration on the same Stripe account)
    extra = {}
    if metadata.get("bonus_credits"):
        # Part of ``credits`` (one grant, refunded in proportion); named on the entry for history and support.
        # Added only when present: a session credited before bonuses existed replays with its first body.
        extra["bonus_credits"] = metadata["bonus_credits"]
    # Everything here comes from Stripe's object (metadata anyone with the Stripe key could edit): the command
    # is built through its types, so a malformed value refuses the event (dead letter) instead of posting it.
    cmd = PurchaseCredits.validated(
        account=account,
        amount_mc=parse_credits(credits),
        idempotency_key=f"checkout:{session['id']}",
        external_ref=session.get("payment_intent"),
        metadata={
            "checkout_session": session["id"],
            "package": metadata.get("package"),
            "amount_total": session.get("amount_total"),
            "currency": session.get("currency"),
            **extra,
        },
    )
    purchase_credits(book, cmd)
    # The receipt, in the same transaction as the purchase: a replayed event writes nothing new.
    notify(
        book.session,
        "purchase_receipt",
        f"purchase_receipt:{session['id']}",
        account=cmd.account,
        payload={
            "account": cmd.account,
            "credits": format_credits(cmd.amount_mc),
            "package": metadata.get("package"),
            "amount_total": session.get("amount_total"),
            "currency": session.get("currency"),
            "checkout_session": session["id"],
        },
        now=book.now,
    )
    return PROCESSED


def purchase_for(book: Book, payment_intent: str | None, sessions: list[dict[str, Any]]) -> Purchase:
    """The purchase paid by ``payment_intent``; credited now from ``sessions`` (its Checkout Sessions as
    Stripe showed them) when its completion event has not arrived yet; ``Waiting`` when none is paid."""
    if not payment_intent:
        raise Waiting("the object names no payment intent")
    found = find_purchase(book.session, payment_intent)
    if found is None and sessions:
        for session in sessions:
            if is_paid(session):
                credit_checkout(book, session)
        found = find_purchase(book.session, payment_intent)
    if found is None:
        raise Waiting(f"no paid purchase for {payment_intent} yet")
    return found


# Keys of a refund's metadata written by ``billing_core.stripe.refunds`` (an operator's refund through
# ``POST /v1/admin/refunds``); the clawback that refund causes carries them into the ledger, for the history.
ADMIN_REFUND_KEYS = {"admin_actor": "actor", "admin_reason": "refund_reason", "admin_request": "admin_request"}


def admin_refund_metadata(refund: dict[str, Any]) -> dict[str, str]:
    """Who refunded and why, when an operator's request made the refund; empty otherwise."""
    metadata = refund.get("metadata") or {}
    return {ours: str(metadata[theirs]) for theirs, ours in ADMIN_REFUND_KEYS.items() if metadata.get(theirs)}


_RECORD_FAILURE = text(
    """
    INSERT INTO payment_failures (id, object, account, wallet_id, payment_intent, amount, currency, payment_method,
                                  code, message, failed_at)
    VALUES (:id, :object, CAST(:account AS text), (SELECT id FROM wallets WHERE account = CAST(:account AS text)),
            :pi, :amount, :currency, :method, :code, :message, :now)
    ON CONFLICT (id) DO UPDATE SET code = EXCLUDED.code, message = EXCLUDED.message, failed_at = EXCLUDED.failed_at,
        payment_method = coalesce(EXCLUDED.payment_method, payment_failures.payment_method)
    """
)


def _short(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def record_payment_failure(session: Session, obj: dict[str, Any], now: datetime) -> None:
    """Record a failed payment: a Checkout Session whose delayed method (PIX, boleto, bank debit) bounced, or a
    payment intent whose attempt failed. Nothing was credited; this row (one per failed object, the latest
    failure kept) is what support and the account's history can find."""
    metadata = obj.get("metadata") or {}
    account = metadata.get("account") or obj.get("client_reference_id")
    is_intent = obj.get("object") == "payment_intent"
    error = obj.get("last_payment_error") or {}
    # A payment intent's methods are the one it was paid with by then; a session's are those it offered.
    methods = (obj.get("payment_method_types") or []) if is_intent else []
    amount = obj.get("amount") if is_intent else obj.get("amount_total")
    session.execute(
        _RECORD_FAILURE,
        {
            "id": obj["id"],
            "object": _short(obj.get("object"), 32) or "unknown",
            "account": _short(account, 128),
            "pi": obj["id"] if is_intent else _short(obj.get("payment_intent"), 255),
            "amount": amount if isinstance(amount, int) else None,
            "currency": _short(obj.get("currency"), 3),
            "method": _short((error.get("payment_method") or {}).get("type") or (methods[0] if methods else None), 64),
            "code": _short(error.get("code"), 200),
            "message": _short(error.get("message"), 2000),
            "now": now,
        },
    )
