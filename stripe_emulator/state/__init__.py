"""The emulator's state: its memory (``store``) and Stripe's rules, one class per resource.

Every operation holds the store's lock for its whole run (see ``store``), so resources may call each other
(paying a session may create its customer) and their events still arrive as one burst.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stripe_emulator.state.billing_portal import BillingPortal
from stripe_emulator.state.cards import Cards
from stripe_emulator.state.catalog import Prices, Products
from stripe_emulator.state.checkout import CheckoutSessions
from stripe_emulator.state.customers import Customers
from stripe_emulator.state.disputes import Disputes
from stripe_emulator.state.invoices import Invoices
from stripe_emulator.state.payments import Payments
from stripe_emulator.state.refunds import Refunds
from stripe_emulator.state.store import Store
from stripe_emulator.state.subscriptions import Subscriptions
from stripe_emulator.state.test_clocks import TestClocks


class EmulatorState(Store):
    """One emulator: the memory, and the operations on each resource (``state.customers.create(...)``)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(wall_clock)
        self.customers = Customers(self)
        self.products = Products(self)
        self.prices = Prices(self, self.products)
        self.checkout = CheckoutSessions(self)
        self.payments = Payments(self, self.customers)
        self.refunds = Refunds(self)
        self.disputes = Disputes(self)
        self.cards = Cards(self, self.customers, self.payments)
        self.invoices = Invoices(self)
        self.subscriptions = Subscriptions(self, self.customers, self.cards, self.invoices)
        self.payments.subscription_checkout = self.subscriptions.checkout_paid
        self.test_clocks = TestClocks(self, self.subscriptions)
        self.billing_portal = BillingPortal(self)

    def advance_clock(self, seconds: int) -> int:
        """Move the emulator's clock forward; open sessions past ``expires_at`` expire, as Stripe's would, and
        subscriptions of customers without a test clock are billed for what fell due meanwhile."""
        with self.lock:
            self.clock_offset += seconds
            for session in list(self.objects["checkout.session"].values()):
                if session["status"] == "open" and session["expires_at"] <= self.now():
                    self.checkout.expire(session["id"])
            self.subscriptions.run_until(None, self.now())
            return self.now()


__all__ = ["EmulatorState"]
