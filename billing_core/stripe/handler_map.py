"""Every Stripe event type the pipeline handles, and what it does: the payments' map (purchases, refunds,
disputes, customers: ``event_handlers``) and the subscriptions' (``subscription_handlers``), which also takes
``checkout.session.completed`` to tell a subscription's session from a package's."""

from __future__ import annotations

from billing_core.stripe.event_handlers import HANDLERS as PAYMENT_HANDLERS
from billing_core.stripe.event_handlers import EventHandler
from billing_core.stripe.subscription_handlers import SUBSCRIPTION_HANDLERS

HANDLERS: dict[str, EventHandler] = {**PAYMENT_HANDLERS, **SUBSCRIPTION_HANDLERS}
