"""The emulator's state: its memory (``store``) and Stripe's rules, one class per resource.

Every operation holds the store's lock for its whole run (see ``store``), so resources may call each other
(paying a session may create its customer) and their events still arrive as one burst.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stripe_emulator.state.catalog import Prices, Products
from stripe_emulator.state.checkout import CheckoutSessions
from stripe_emulator.state.customers import Customers
from stripe_emulator.state.disputes import Disputes
from stripe_emulator.state.payments import Payments
from stripe_emulator.state.refunds import Refunds
from stripe_emulator.state.store import Store


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

    def advance_clock(self, seconds: int) -> int:
        """Move the test clock forward; open sessions past ``expires_at`` expire, as Stripe's would."""
        with self.lock:
            self.clock_offset += seconds
            for session in list(self.objects["checkout.session"].values()):
                if session["status"] == "open" and session["expires_at"] <= self.now():
                    self.checkout.expire(session["id"])
            return self.now()


__all__ = ["EmulatorState"]
