"""The credit purchase behind a Stripe payment: found in the ledger, or credited from its Checkout Session.

A refund or a dispute names a payment (its PaymentIntent); what it takes back is a share of the credits that
payment bought. Out of order is normal (DESIGN rule 7): the refund may be handled before the purchase's own
completion event, so the purchase is then credited from the Checkout Session Stripe shows as paid (read
before the ledger transaction, see ``event_handlers``), and when Stripe does not show it paid either the
event waits (``Waiting``) and is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from billing_core.ledger.book import Book
from billing_core.ledger.commands import PurchaseCredits, check_account
from billing_core.ledger.handlers import purchase_credits
from billing_core.units import parse_credits, round_mc

PROCESSED, IGNORED = "processed", "ignored"


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
    row = session.execute(
        text(
            "SELECT w.account, g.amount_mc, e.metadata FROM ledger_entries e "
            "JOIN grants g ON g.entry_id = e.id AND g.source = 'purchase' JOIN wallets w ON w.id = g.wallet_id "
            "WHERE e.external_ref = :pi AND e.kind = 'purchase' AND e.idempotency_key LIKE 'checkout:%' "
            "ORDER BY e.id LIMIT 1"
        ),
        {"pi": payment_intent},
    ).first()
    if row is None:
        return None
    return Purchase(row.account, row.amount_mc, int(row.metadata.get("amount_total") or 0), payment_intent)


def is_paid(session: dict[str, Any]) -> bool:
    return session.get("payment_status") in ("paid", "no_payment_required") and session.get("status") == "complete"


def credit_checkout(book: Book, session: dict[str, Any]) -> str:
    """Credit the package a paid Checkout Session sold, once (key ``checkout:<cs_id>``)."""
    metadata = session.get("metadata") or {}
    account = metadata.get("account") or session.get("client_reference_id")
    credits = metadata.get("credits")
    if not account or credits is None:
        return IGNORED  # not a credit package sold by us (another integration on the same Stripe account)
    cmd = PurchaseCredits(
        account=check_account(account),
        amount_mc=parse_credits(credits),
        idempotency_key=f"checkout:{session['id']}",
        external_ref=session.get("payment_intent"),
        metadata={
            "checkout_session": session["id"],
            "package": metadata.get("package"),
            "amount_total": session.get("amount_total"),
            "currency": session.get("currency"),
        },
    )
    purchase_credits(book, cmd)
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
