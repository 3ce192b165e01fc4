"""What each Stripe event type does to the ledger: ``HANDLERS`` below is the whole map; read it top to bottom.

Every effect goes through a ledger command whose idempotency key comes from the Stripe object that caused it
(``checkout:cs_...``, ``refund:re_...``, ``dispute:dp_...``, ``dispute_won:`` / ``dispute_lost:dp_...``), so a
duplicate delivery, a retry after a crash or a replay by an operator finds the first entry (or the dispute's
row) and writes nothing.

A handler works in two steps, because no transaction may hold row locks while waiting on Stripe (DESIGN
rule 10: a debit on the same wallet would wait on Stripe's latency). First ``read`` asks Stripe what the
handler needs (the payload may be stale or forged, so a Checkout Session is re-read; a refund lists its
charge's refunds), outside any transaction; then ``apply`` writes the effect in the ledger transaction with
those facts, re-checking the ledger under its locks (the purchase may have been credited meanwhile). A
handler without ``read`` needs nothing from Stripe, and when there is no gateway at all (tests, replays from
the payload) ``apply`` trusts the payload as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import String, Table, and_, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from billing_core.db.tables import LedgerEntry, Posting
from billing_core.ledger.book import Book
from billing_core.ledger.commands import ClawBack, HoldDisputed, SettleDispute, check_account
from billing_core.ledger.disputes import hold_disputed, settle_dispute, taken_for_payment
from billing_core.ledger.handlers import claw_back
from billing_core.ledger.wallet_rows import link_stripe_customer, unlink_stripe_customer
from billing_core.notify.outbox import notify
from billing_core.stripe.purchases import (
    IGNORED,
    PROCESSED,
    admin_refund_metadata,
    credit_checkout,
    is_paid,
    purchase_for,
    record_payment_failure,
)
from billing_core.units import format_credits

StripeObject = dict[str, Any]

_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
_POSTINGS: Table = Posting.__table__  # type: ignore[assignment]
entries, postings = _ENTRIES.c, _POSTINGS.c
# Built once on the tables, as ``ledger/wallet_rows`` does (its docstring says why). The keys go as one array,
# as in ``wallet_rows.account_names``: a key matches one entry at most (it is unique), so ``= ANY`` finds the
# rows the text's join on ``unnest`` found.
_REFUNDS_TAKEN = (
    select(entries.idempotency_key, postings.amount_mc)
    .select_from(
        _ENTRIES.join(_POSTINGS, and_(postings.entry_id == entries.id, postings.account_id == bindparam("refunds")))
    )
    .where(entries.idempotency_key == any_(bindparam("keys", type_=ARRAY(String))))
)
# Whether the ledger already holds the purchase a payment intent paid for (a read that takes no lock).
PurchaseKnown = Callable[[str], bool]


class StripeReader(Protocol):
    """What handlers read from Stripe (``billing_core.stripe.gateway.StripeGateway`` in production)."""

    def retrieve_checkout_session(self, session_id: str) -> StripeObject: ...
    def list_checkout_sessions(self, *, payment_intent: str | None = None, limit: int = 10) -> list[StripeObject]: ...
    def list_refunds(self, *, charge: str) -> list[StripeObject]: ...
    def retrieve_subscription(self, subscription_id: str) -> StripeObject: ...
    def retrieve_invoice(self, invoice_id: str) -> StripeObject: ...
    def retrieve_payment_intent(self, payment_intent_id: str) -> StripeObject: ...


@dataclass(frozen=True)
class StripeFacts:
    """What a handler read from Stripe before its transaction; empty when Stripe was not asked."""

    checkout_session: StripeObject | None = None  # the session as Stripe shows it now
    sessions: list[StripeObject] = field(default_factory=list)  # a payment's sessions, when its purchase is unknown
    refunds: list[StripeObject] | None = None  # every refund of a charge
    subscription: StripeObject | None = None  # a subscription as Stripe shows it now (subscription_handlers)
    invoice: StripeObject | None = None  # an invoice as Stripe shows it now
    payment_intent: StripeObject | None = None  # a failed invoice attempt's PaymentIntent (why it failed)


@dataclass(frozen=True)
class EventHandler:
    apply: Callable[[Book, StripeObject, StripeFacts], str]
    read: Callable[[StripeReader, StripeObject, PurchaseKnown], StripeFacts] | None = None


# -- checkout --------------------------------------------------------------------------------------------
def read_checkout_session(stripe: StripeReader, session: StripeObject, known: PurchaseKnown) -> StripeFacts:
    return StripeFacts(checkout_session=stripe.retrieve_checkout_session(session["id"]))


def on_checkout_completed(book: Book, session: StripeObject, facts: StripeFacts) -> str:
    """Paid now: credit the package. Unpaid (a delayed method such as a bank debit): nothing yet, the
    ``async_payment_succeeded`` event credits it. Stripe's own view of the session decides, not the payload."""
    current = facts.checkout_session or session
    if not is_paid(current):
        return PROCESSED
    return credit_checkout(book, current)


def on_payment_failed(book: Book, obj: StripeObject, facts: StripeFacts) -> str:
    """Nothing was credited, so nothing moves; the failure is recorded (``payment_failures``, by the failed
    session or payment intent) with the account it was for."""
    record_payment_failure(book.session, obj, book.now)
    account = (obj.get("metadata") or {}).get("account") or obj.get("client_reference_id")
    if isinstance(account, str) and account:
        error = obj.get("last_payment_error") or {}
        amount = obj.get("amount") if obj.get("object") == "payment_intent" else obj.get("amount_total")
        notify(
            book.session,
            "payment_failed",
            f"payment_failed:{obj['id']}",  # one notice per failed session or payment intent
            account=account,
            payload={
                "account": account,
                "payment": obj["id"],
                "amount": amount if isinstance(amount, int) else None,
                "currency": obj.get("currency"),
                "code": error.get("decline_code") or error.get("code"),
                "message": error.get("message"),
            },
            now=book.now,
        )
    return PROCESSED


# -- refunds ---------------------------------------------------------------------------------------------
def _payment_sessions(stripe: StripeReader, payment_intent: str | None, known: PurchaseKnown) -> list[StripeObject]:
    """The payment's Checkout Sessions, asked for only when its purchase is not in the ledger yet."""
    if not payment_intent or known(payment_intent):
        return []
    return stripe.list_checkout_sessions(payment_intent=payment_intent, limit=3)


def read_charge_refunds(stripe: StripeReader, charge: StripeObject, known: PurchaseKnown) -> StripeFacts:
    return StripeFacts(
        sessions=_payment_sessions(stripe, charge.get("payment_intent"), known),
        refunds=stripe.list_refunds(charge=charge["id"]),
    )


def on_charge_refunded(book: Book, charge: StripeObject, facts: StripeFacts) -> str:
    """Claw back credits in proportion to each refund, once per refund (key ``refund:<re_id>``).

    What a new refund takes is the rounded proportion of everything refunded so far minus what the earlier
    refunds actually took, so partial refunds that add up to the whole payment take back exactly the whole
    purchase, whatever order they settle in (a pending refund may succeed after a later one). Refunds and lost
    disputes together never take back more than the purchase bought: what the others took is read under the
    wallet's lock, and each refund takes at most what is left.
    """
    purchase = purchase_for(book, charge.get("payment_intent"), facts.sessions)
    refunds = facts.refunds if facts.refunds is not None else ((charge.get("refunds") or {}).get("data")) or []
    succeeded = sorted((r for r in refunds if r.get("status") == "succeeded"), key=lambda r: (r["created"], r["id"]))
    if not succeeded:
        return PROCESSED
    Book(book.session, book.now).lock_wallet(purchase.account)  # held to the end of the transaction
    taken = _refunds_taken(book, [f"refund:{r['id']}" for r in succeeded])
    others = sum(v for k, v in taken_for_payment(book, purchase.payment_intent).items() if k not in taken)
    refunded = sum(r["amount"] for r in succeeded if f"refund:{r['id']}" in taken)
    taken_mc = sum(taken.values())
    for refund in succeeded:
        key = f"refund:{refund['id']}"
        if key in taken:
            continue
        refunded += refund["amount"]
        amount_mc = min(purchase.share(refunded) - taken_mc, purchase.amount_mc - taken_mc - others)
        if amount_mc <= 0:
            continue
        cmd = ClawBack.validated(
            account=purchase.account,
            amount_mc=amount_mc,
            idempotency_key=key,
            reason="refund",
            grant_ref=purchase.payment_intent,
            external_ref=refund["id"],
            metadata={
                "charge": charge["id"],
                "amount": refund["amount"],
                "payment_intent": purchase.payment_intent,
                **admin_refund_metadata(refund),
            },
        )
        claw_back(Book(book.session, book.now), cmd)
        taken_mc += amount_mc
        notify(
            book.session,
            "refund_processed",
            f"refund_processed:{refund['id']}",
            account=purchase.account,
            payload={
                "account": purchase.account,
                "refund": refund["id"],
                "credits": format_credits(amount_mc),
                "amount": refund["amount"],
                "currency": refund.get("currency") or charge.get("currency"),
                "payment_intent": purchase.payment_intent,
            },
            now=book.now,
        )
    return PROCESSED


def _refunds_taken(book: Book, keys: list[str]) -> dict[str, int]:
    """What each refund already handled took, by its key: its line on the system refunds account."""
    if not keys:
        return {}
    rows = book.session.execute(_REFUNDS_TAKEN, {"keys": keys, "refunds": book.system_account("refunds")})
    return {key: amount_mc for key, amount_mc in rows}


def _settled_refund_charge(refund: StripeObject) -> StripeObject | None:
    """The charge of a refund that has succeeded, as ``charge.refunded`` would carry it; None for a refund
    still pending, failed or canceled: those moved no money, so they take nothing."""
    if refund.get("status") != "succeeded" or not refund.get("charge"):
        return None
    return {"id": refund["charge"], "payment_intent": refund.get("payment_intent"), "refunds": {"data": [refund]}}


def read_refund_update(stripe: StripeReader, refund: StripeObject, known: PurchaseKnown) -> StripeFacts:
    charge = _settled_refund_charge(refund)
    return StripeFacts() if charge is None else read_charge_refunds(stripe, charge, known)


def on_refund_updated(book: Book, refund: StripeObject, facts: StripeFacts) -> str:
    """A refund still pending when ``charge.refunded`` arrived (bank transfers, some cards) settles later:
    once it has succeeded, its charge's refunds are clawed back as ``charge.refunded`` does (each refund once,
    by its key)."""
    charge = _settled_refund_charge(refund)
    if charge is None:
        return IGNORED
    return on_charge_refunded(book, charge, facts)


# -- disputes --------------------------------------------------------------------------------------------
# A chargeback holds the disputed share back (not spendable, not yet gone); won releases it, lost takes it.
# ``billing_core.ledger.disputes`` has the design, ``docs/refunds-and-disputes.md`` every order of events.
def _is_inquiry(dispute: StripeObject) -> bool:
    # An inquiry (statuses ``warning_*``) withdraws no money, and the payment may still be refunded: holding
    # credits then would hold them for a refund that takes them anyway, or for nothing (closed unescalated).
    # An inquiry that escalates to a chargeback keeps its id and moves to ``needs_response``.
    return str(dispute.get("status", "")).startswith("warning_")


def read_dispute(stripe: StripeReader, dispute: StripeObject, known: PurchaseKnown) -> StripeFacts:
    return StripeFacts(sessions=_payment_sessions(stripe, dispute.get("payment_intent"), known))


def read_dispute_unless_inquiry(stripe: StripeReader, dispute: StripeObject, known: PurchaseKnown) -> StripeFacts:
    return StripeFacts() if _is_inquiry(dispute) else read_dispute(stripe, dispute, known)


def _dispute_fields(book: Book, dispute: StripeObject, facts: StripeFacts) -> dict[str, Any]:
    """What the ledger's dispute commands need, from the dispute and the purchase its payment made."""
    purchase = purchase_for(book, dispute.get("payment_intent"), facts.sessions)
    amount = int(dispute["amount"])
    return {
        "account": purchase.account,
        "dispute_id": dispute["id"],
        "payment_intent": purchase.payment_intent,
        "amount_mc": purchase.share(amount),
        "purchase_mc": purchase.amount_mc,
        "amount": amount,
        "currency": dispute.get("currency"),
        "charge": dispute.get("charge") if isinstance(dispute.get("charge"), str) else None,
        "metadata": {"dispute_reason": dispute.get("reason"), "status": dispute.get("status")},
    }


def _hold_dispute(book: Book, dispute: StripeObject, facts: StripeFacts) -> str:
    cmd = HoldDisputed.validated(**_dispute_fields(book, dispute, facts))
    view = hold_disputed(Book(book.session, book.now), cmd)
    if view.status == "open":  # not when it was closed before this event came
        notify(
            book.session,
            "dispute_opened",
            f"dispute_opened:{dispute['id']}",  # created and funds_withdrawn both hold: one notice
            account=cmd.account,
            payload={
                "account": cmd.account,
                "dispute": dispute["id"],
                "amount": cmd.amount,
                "currency": cmd.currency,
                "credits_held": format_credits(view.held_mc),
                "reason": dispute.get("reason"),
            },
            now=book.now,
        )
    return PROCESSED


def _settle_dispute(book: Book, dispute: StripeObject, facts: StripeFacts, outcome: str) -> str:
    cmd = SettleDispute.validated(**_dispute_fields(book, dispute, facts), outcome=outcome)
    settle_dispute(Book(book.session, book.now), cmd)
    return PROCESSED


def on_dispute_created(book: Book, dispute: StripeObject, facts: StripeFacts) -> str:
    """A chargeback holds the disputed share back (``dispute:<dp_id>``); an inquiry holds nothing."""
    if _is_inquiry(dispute):
        return PROCESSED
    return _hold_dispute(book, dispute, facts)


def on_dispute_funds_withdrawn(book: Book, dispute: StripeObject, facts: StripeFacts) -> str:
    """Money left (also when an inquiry escalates): the same hold as ``created``, once per dispute."""
    return _hold_dispute(book, dispute, facts)


def on_dispute_closed(book: Book, dispute: StripeObject, facts: StripeFacts) -> str:
    """Won: the held credits go back (``dispute_won:<dp_id>``). Lost: the disputed share is taken
    (``dispute_lost:<dp_id>``), held credits first. A close with no open dispute seen (its ``created`` never
    came, or comes later) settles from nothing: lost takes the share from what is spendable, won records the
    dispute closed so a late ``created`` holds nothing. An inquiry closed without escalating took nothing."""
    if _is_inquiry(dispute):
        return PROCESSED
    return _settle_dispute(book, dispute, facts, "won" if dispute.get("status") == "won" else "lost")


def on_dispute_funds_reinstated(book: Book, dispute: StripeObject, facts: StripeFacts) -> str:
    """The money came back: the dispute is won (the same settlement as a won ``closed``, once)."""
    return _settle_dispute(book, dispute, facts, "won")


# -- customers -------------------------------------------------------------------------------------------
def on_customer_changed(book: Book, customer: StripeObject, facts: StripeFacts) -> str:
    """Link the Stripe customer to the account named in its metadata (created by our gateway)."""
    account = (customer.get("metadata") or {}).get("account")
    if not account:
        return IGNORED
    wallet = book.lock_wallet(check_account(account), create=True)
    link_stripe_customer(
        book.session,
        wallet.id,
        customer["id"],
        email=customer.get("email"),
        name=customer.get("name"),
        # When the wallet already has it no other can (the column is unique): nothing to take away.
        move=wallet.stripe_customer_id != customer["id"],
    )
    wallet.stripe_customer_id = customer["id"]
    return PROCESSED


def on_customer_deleted(book: Book, customer: StripeObject, facts: StripeFacts) -> str:
    unlink_stripe_customer(book.session, customer["id"])
    return PROCESSED


HANDLERS: dict[str, EventHandler] = {
    "checkout.session.completed": EventHandler(on_checkout_completed, read=read_checkout_session),
    "checkout.session.async_payment_succeeded": EventHandler(on_checkout_completed, read=read_checkout_session),
    "checkout.session.async_payment_failed": EventHandler(on_payment_failed),
    "payment_intent.payment_failed": EventHandler(on_payment_failed),
    "charge.refunded": EventHandler(on_charge_refunded, read=read_charge_refunds),
    "charge.refund.updated": EventHandler(on_refund_updated, read=read_refund_update),
    "refund.updated": EventHandler(on_refund_updated, read=read_refund_update),
    "charge.dispute.created": EventHandler(on_dispute_created, read=read_dispute_unless_inquiry),
    "charge.dispute.funds_withdrawn": EventHandler(on_dispute_funds_withdrawn, read=read_dispute),
    "charge.dispute.closed": EventHandler(on_dispute_closed, read=read_dispute_unless_inquiry),
    "charge.dispute.funds_reinstated": EventHandler(on_dispute_funds_reinstated, read=read_dispute),
    "customer.created": EventHandler(on_customer_changed),
    "customer.updated": EventHandler(on_customer_changed),
    "customer.deleted": EventHandler(on_customer_deleted),
}
