"""Spending order of a wallet's grants: pure functions, no database.

DESIGN rule 3: credits expiring soonest are spent first (they would be lost otherwise); among grants
expiring at the same moment (or never), the lower priority goes first, so promotional credits are used
before paid ones and a refund of a purchase finds as much of it untouched as possible; the oldest grant
breaks the remaining ties so the order is total and repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Priority by source: lower is spent first.
PRIORITY_BY_SOURCE: dict[str, int] = {
    "promotional": 10,
    "plan": 20,
    "adjustment": 30,
    "transfer": 35,
    "purchase": 40,
    "debt": 99,
}
GRANT_SOURCES = frozenset(PRIORITY_BY_SOURCE) - {"debt"}

# The names the API and the CLI show for a grant's source (the stored names predate them). ``transfer``
# (credits moved in from another account by ``TransferCredits``) keeps its name. ``refund_credit`` (a refund
# paid back as credits rather than money) is a public name the ledger does not produce yet: it needs its own
# stored source (the ``grants_source`` check constraint), and maps to itself once it has one. The ``debt``
# grant is not a grant the customer holds: the API never lists it (a wallet in debt shows a negative
# ``available``, ``flags.negative`` and ``debt``).
PUBLIC_SOURCE: dict[str, str] = {
    "purchase": "purchase",
    "plan": "plan",
    "promotional": "promotion",
    "adjustment": "admin",
    "transfer": "transfer",
    "refund_credit": "refund_credit",
}
# What an operator may name when granting (``billing grant --source``, ``POST /v1/admin/grants``): public name
# -> stored source. ``promotional`` is the old CLI spelling, still accepted.
GRANTABLE_SOURCES: dict[str, str] = {
    "promotion": "promotional",
    "admin": "adjustment",
    "plan": "plan",
    "promotional": "promotional",
}


def public_source(source: str) -> str:
    """A stored source as the API names it (an unknown one as it is)."""
    return PUBLIC_SOURCE.get(source, source)


@dataclass(eq=False)
class GrantLot:
    """A grant as the ledger sees it during one transaction. ``id`` is None until the grant is inserted."""

    wallet_id: int
    source: str
    remaining_mc: int
    expires_at: datetime | None
    priority: int
    id: int | None = None
    amount_mc: int = 0
    external_ref: str | None = None
    entry_key: str | None = None  # the entry creating it, for new grants
    dirty: bool = False

    def spendable_at(self, now: datetime) -> bool:
        return self.source != "debt" and self.remaining_mc > 0 and (self.expires_at is None or self.expires_at > now)

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def spending_key(lot: GrantLot) -> tuple[int, datetime | int, int, int]:
    # Never-expiring grants sort after every dated one; new grants (id None) after existing ones.
    never = lot.expires_at is None
    return (
        1 if never else 0,
        0 if never else lot.expires_at,  # type: ignore[return-value]
        lot.priority,
        lot.id if lot.id is not None else 2**62,
    )


def in_spending_order(lots: list[GrantLot], now: datetime) -> list[GrantLot]:
    return sorted((lot for lot in lots if lot.spendable_at(now)), key=spending_key)


def plan_draws(lots: list[GrantLot], amount_mc: int, now: datetime) -> tuple[list[tuple[GrantLot, int]], int]:
    """Which grants pay ``amount_mc``, in spending order. Returns the draws and the unpaid shortfall."""
    draws: list[tuple[GrantLot, int]] = []
    left = amount_mc
    for lot in in_spending_order(lots, now):
        if left == 0:
            break
        take = min(lot.remaining_mc, left)
        draws.append((lot, take))
        left -= take
    return draws, left
