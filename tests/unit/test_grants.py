"""Spending order of grants, as a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing_core.ledger.grants import PRIORITY_BY_SOURCE, GrantLot, plan_draws

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def lot(gid: int, source: str, remaining: int, days: float | None = None) -> GrantLot:
    expires = None if days is None else NOW + timedelta(days=days)
    return GrantLot(1, source, remaining, expires, PRIORITY_BY_SOURCE[source], id=gid)


def test_soonest_expiry_first_then_promotional_before_paid_then_oldest():
    lots = [
        lot(1, "purchase", 10),
        lot(2, "promotional", 10),
        lot(3, "purchase", 10, days=5),
        lot(4, "promotional", 10, days=5),
        lot(5, "purchase", 10, days=1),
        lot(6, "promotional", 10),
    ]
    draws, shortfall = plan_draws(lots, 60, NOW)
    assert [d[0].id for d in draws] == [5, 4, 3, 2, 6, 1]
    assert shortfall == 0


def test_expired_exhausted_and_debt_lots_are_never_drawn():
    lots = [lot(1, "promotional", 10, days=-1), lot(2, "purchase", 0), lot(3, "debt", -5), lot(4, "purchase", 3)]
    draws, shortfall = plan_draws(lots, 10, NOW)
    assert [(d[0].id, d[1]) for d in draws] == [(4, 3)]
    assert shortfall == 7


def test_a_grant_expiring_exactly_now_is_expired():
    draws, shortfall = plan_draws([lot(1, "purchase", 10, days=0)], 1, NOW)
    assert draws == [] and shortfall == 1
