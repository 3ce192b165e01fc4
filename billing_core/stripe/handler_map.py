"""Every Stripe event type the pipeline handles, and what it does: the payments' map (purchases, refunds,
disputes, customers: ``event_handlers``), auto-recharge's PaymentIntents (``recharge_handlers``: its
``payment_intent.payment_failed`` replaces the payments' no-op) and the subscriptions' (``subscription_handlers``,
which also takes ``checkout.session.completed`` to tell a subscription's session from a package's)."""

from __future__ import annotations

from billing_core.stripe.event_handlers import HANDLERS as PAYMENT_HANDLERS
from billing_core.stripe.event_handlers import EventHandler
from billing_core.stripe.recharge_handlers import RECHARGE_HANDLERS
from billing_core.stripe.subscription_handlers import SUBSCRIPTION_HANDLERS

HANDLERS: dict[str, EventHandler] = {**PAYMENT_HANDLERS, **RECHARGE_HANDLERS, **SUBSCRIPTION_HANDLERS}
