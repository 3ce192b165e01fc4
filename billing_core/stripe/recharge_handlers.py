"""The Stripe events of auto-recharge's PaymentIntents (``billing_core.stripe.auto_recharge``), merged into
``event_handlers.HANDLERS``.

``payment_intent.succeeded`` credits the package the attempt charged for (key ``auto_recharge:<pi id>``: a
duplicate delivery, or the gateway's own answer recorded first, makes it a replay) and re-arms;
``payment_intent.payment_failed`` records the failure and stops auto-recharge until the customer acts. Both
trust the signed payload (a PaymentIntent's ``succeeded`` is final, and the credited amount comes from our own
attempt row, not from the payload); every other PaymentIntent (a Checkout's, an invoice's) is left alone, as
the no-op ``on_payment_failed`` did before.
"""

from __future__ import annotations

from billing_core.ledger.book import Book
from billing_core.stripe.auto_recharge import StripeObject, apply_payment_intent
from billing_core.stripe.purchases import PROCESSED

# Defined before ``event_handlers`` is imported: when this module is the first imported, ``event_handlers``
# imports it back (to merge it) while it is half loaded, and finds this dict, filled in below and merged again.
RECHARGE_HANDLERS: dict[str, EventHandler] = {}

from billing_core.stripe.event_handlers import HANDLERS, EventHandler, StripeFacts  # noqa: E402


def on_payment_intent(book: Book, intent: StripeObject, facts: StripeFacts) -> str:
    """Ours: recorded (``processed``); another integration's succeeded PaymentIntent: ``ignored``; a failed
    one that is not ours: ``processed``, nothing moves (what ``payment_intent.payment_failed`` always did)."""
    outcome = apply_payment_intent(book, intent)
    if intent.get("status") != "succeeded":
        return PROCESSED
    return outcome


RECHARGE_HANDLERS.update(
    {
        "payment_intent.succeeded": EventHandler(on_payment_intent),
        "payment_intent.payment_failed": EventHandler(on_payment_intent),
    }
)
HANDLERS.update(RECHARGE_HANDLERS)  # a no-op when ``event_handlers`` was imported first (it merged this already)
