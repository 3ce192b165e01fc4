"""Price catalog versions: which ``PriceTable`` prices work done at a given time.

The seam every caller uses: ``PriceBook.current(now)`` (the version in effect at ``now``, default the wall
clock). Versions loaded ahead of time (``billing pricing load FILE --effective-at ...``) live in the
``price_versions`` table and take effect at their time without a deploy.
"""

from __future__ import annotations

from datetime import datetime

from billing_core.pricing.catalog import PriceTable


class PriceBook:
    """The catalog versions one process prices with. Until versions are loaded from the database this holds
    the file's table alone (the pricing issue fills in the rest)."""

    def __init__(self, base: PriceTable) -> None:
        self._base = base

    @property
    def base(self) -> PriceTable:
        """The table of the shipped (or ``BILLING_PRICING_FILE``) catalog file."""
        return self._base

    def current(self, now: datetime | None = None) -> PriceTable:
        """The table in effect at ``now`` (UTC; the wall clock when None)."""
        return self._base
