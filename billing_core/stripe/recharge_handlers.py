"""The Stripe events of auto-recharge's PaymentIntents (``billing_core.stripe.auto_recharge``), merged into
``handler_map.HANDLERS``.

``payment_intent.succeeded`` credits the package the attempt charged for (key ``auto_recharge:<pi id>``: a
duplicate delivery, or the gateway's own answer recorded first, makes it a replay) and re-arms;
``payment_intent.payment_failed`` records the failure and stops auto-recharge until the customer acts. Both
trust the signed payload (a PaymentIntent's ``succeeded`` is final, and the credited amount comes from our own
attempt row, not from the payload); every other PaymentIntent (a Checkout's, an invoice's) is left alone, as
the no-op ``on_payment_failed`` did before.
"""

from __future__ import annotations

from billing_core.ledger.book import Book
from billing_core.stripe.auto_recharge import StripeObject, apply_payment_intent, is_auto_recharge
from billing_core.stripe.event_handlers import EventHandler, StripeFacts, on_payment_failed
from billing_core.stripe.purchases import PROCESSED


def on_payment_intent(book: Book, intent: StripeObject, facts: StripeFacts) -> str:
    """Ours: recorded (``processed``); another integration's succeeded PaymentIntent: ``ignored``; any other
    failed PaymentIntent (a Checkout's, an invoice's) is what the payments' map records as a payment failure."""
    if intent.get("status") == "succeeded" or is_auto_recharge(intent):
        outcome = apply_payment_intent(book, intent)
        return outcome if intent.get("status") == "succeeded" else PROCESSED
    return on_payment_failed(book, intent, facts)


# Its ``payment_intent.payment_failed`` replaces the payments map's no-op.
RECHARGE_HANDLERS: dict[str, EventHandler] = {
    "payment_intent.succeeded": EventHandler(on_payment_intent),
    "payment_intent.payment_failed": EventHandler(on_payment_intent),
}
