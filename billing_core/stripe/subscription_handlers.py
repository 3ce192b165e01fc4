"""What the subscription and invoice events do (``SUBSCRIPTION_HANDLERS``); the rules are ``subscriptions``'.

Each handler reads what it needs from Stripe first, outside any transaction (the subscription or the invoice as
Stripe shows it now, and an invoice's subscription), then writes the mirror rows and the ledger effects in the
event's transaction. Without a gateway (tests, replays from the payload) the payload is taken as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime

from billing_core.ledger.book import Book
from billing_core.notify.outbox import notify
from billing_core.stripe.event_handlers import (
    EventHandler,
    PurchaseKnown,
    StripeFacts,
    StripeObject,
    StripeReader,
    on_checkout_completed,
    read_checkout_session,
)
from billing_core.stripe.purchases import IGNORED, PROCESSED, Waiting
from billing_core.stripe.subscriptions import (
    account_of,
    customer_of,
    grant_for_invoice,
    invoice_subscription,
    store_invoice,
    store_subscription,
)


def _subscription_id(obj: StripeObject) -> str | None:
    found = obj.get("subscription")
    if isinstance(found, dict):
        found = found.get("id")
    return str(found) if found else None


# -- subscriptions ------------------------------------------------------------------------------------------
def read_subscription(stripe: StripeReader, sub: StripeObject, known: PurchaseKnown) -> StripeFacts:
    return StripeFacts(subscription=stripe.retrieve_subscription(sub["id"]))


def on_subscription_changed(book: Book, sub: StripeObject, facts: StripeFacts) -> str:
    """Created, updated, deleted, trial ending: the row becomes what Stripe shows now."""
    return PROCESSED if store_subscription(book, facts.subscription or sub) is not None else IGNORED


def on_trial_will_end(book: Book, sub: StripeObject, facts: StripeFacts) -> str:
    """Stripe's warning three days before a trial ends: the row as Stripe shows it, and the customer told once
    per trial end (``trial_ending:<sub_id>:<trial_end>``)."""
    current = facts.subscription or sub
    stored = store_subscription(book, current)
    if stored is None:
        return IGNORED
    account, terms = stored
    # The event's own object: by the time it is handled Stripe may show the trial over already (then too late).
    trial_end = sub.get("trial_end")
    if isinstance(trial_end, int) and trial_end > book.now.timestamp():
        notify(
            book.session,
            "trial_ending",
            f"trial_ending:{sub['id']}:{trial_end}",
            account=account,
            payload={
                "account": account,
                "subscription": sub["id"],
                "plan": terms.plan,
                "trial_end": datetime.fromtimestamp(trial_end, UTC).isoformat(),
            },
            now=book.now,
        )
    return PROCESSED


# -- checkout in subscription mode ------------------------------------------------------------------------------
def read_checkout(stripe: StripeReader, session: StripeObject, known: PurchaseKnown) -> StripeFacts:
    facts = read_checkout_session(stripe, session, known)
    current = facts.checkout_session or session
    sub_id = _subscription_id(current) if current.get("mode") == "subscription" else None
    if sub_id is None:
        return facts
    return StripeFacts(checkout_session=current, subscription=stripe.retrieve_subscription(sub_id))


def on_checkout_completed_any(book: Book, session: StripeObject, facts: StripeFacts) -> str:
    """A package's session credits it (``event_handlers``); a subscription's records the subscription (its
    invoice's ``invoice.paid`` grants the allowance)."""
    current = facts.checkout_session or session
    if current.get("mode") != "subscription":
        return on_checkout_completed(book, session, facts)
    if facts.subscription is not None:
        return on_subscription_changed(book, facts.subscription, facts)
    return IGNORED  # replayed without Stripe: the subscription's own events record it


# -- invoices -----------------------------------------------------------------------------------------------
def read_invoice(stripe: StripeReader, invoice: StripeObject, known: PurchaseKnown) -> StripeFacts:
    """The invoice and its subscription as Stripe shows them; for an attempt that failed, its PaymentIntent
    (the invoice itself does not say why the card was declined)."""
    current = stripe.retrieve_invoice(invoice["id"])
    sub_id = invoice_subscription(current)
    intent = None
    pi_id = current.get("payment_intent")
    if current.get("status") == "open" and int(current.get("attempt_count") or 0) > 0 and isinstance(pi_id, str):
        intent = stripe.retrieve_payment_intent(pi_id)
    return StripeFacts(
        invoice=current,
        subscription=stripe.retrieve_subscription(sub_id) if sub_id else None,
        payment_intent=intent,
    )


def on_invoice_changed(book: Book, invoice: StripeObject, facts: StripeFacts) -> str:
    """Mirror the invoice; a paid subscription invoice grants its allowance (once: key ``invoice:<in_id>``)."""
    current = facts.invoice or invoice
    sub = facts.subscription
    if sub is not None:
        store_subscription(book, sub)
    account = account_of(book.session, sub, customer_of(current))
    if account is None:
        if invoice_subscription(current) and facts.subscription is None and facts.invoice is None:
            # From the payload alone, before its subscription was recorded: wait for it.
            raise Waiting(f"invoice {current['id']}: its subscription is not recorded yet")
        return IGNORED  # not one of our customers' invoices
    error = ((facts.payment_intent or {}).get("last_payment_error") or {}).get("code")
    store_invoice(book, current, account, payment_error=error)
    if error and current.get("status") == "open" and current.get("billing_reason") == "subscription_cycle":
        attempt = int(current.get("attempt_count") or 0)
        retry_at = current.get("next_payment_attempt")
        notify(
            book.session,
            "renewal_failed",
            f"renewal_failed:{current['id']}:{attempt}",  # once per failed attempt, however many events tell it
            account=account,
            payload={
                "account": account,
                "invoice": current["id"],
                "subscription": invoice_subscription(current),
                "amount": current.get("amount_due"),
                "currency": current.get("currency"),
                "code": error,
                "attempt_count": attempt,
                "next_payment_attempt": (
                    datetime.fromtimestamp(retry_at, UTC).isoformat() if isinstance(retry_at, int) else None
                ),
            },
            now=book.now,
        )
    if current.get("status") == "paid":
        grant_for_invoice(book, account, current, sub)
    return PROCESSED


SUBSCRIPTION_HANDLERS: dict[str, EventHandler] = {
    "checkout.session.completed": EventHandler(on_checkout_completed_any, read=read_checkout),
    "customer.subscription.created": EventHandler(on_subscription_changed, read=read_subscription),
    "customer.subscription.updated": EventHandler(on_subscription_changed, read=read_subscription),
    "customer.subscription.deleted": EventHandler(on_subscription_changed, read=read_subscription),
    "customer.subscription.trial_will_end": EventHandler(on_trial_will_end, read=read_subscription),
    "invoice.created": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.finalized": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.updated": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.paid": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.payment_succeeded": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.payment_failed": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.payment_action_required": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.voided": EventHandler(on_invoice_changed, read=read_invoice),
    "invoice.marked_uncollectible": EventHandler(on_invoice_changed, read=read_invoice),
}
