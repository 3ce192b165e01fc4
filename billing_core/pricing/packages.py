"""Credit packages sold through Stripe Checkout, as the price table lists them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Package:
    """``credits_mc`` for ``unit_amount`` minor units of ``currency``."""

    id: str
    name: str
    credits_mc: int
    unit_amount: int
    currency: str
