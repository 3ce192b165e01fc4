"""Time: hold and grant expiry under freezegun, and the order in which grants are spent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from billing_core.errors import HoldNotPending, InsufficientCredits
from billing_core.ledger.commands import (
    CaptureHold,
    DebitUsage,
    ExpireGrants,
    ExpireHolds,
    GrantCredits,
    PlaceHold,
    PurchaseCredits,
    ReleaseHold,
)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_hold_expires_after_its_ttl_and_its_credits_come_back(probe):
    with freeze_time(T0) as clock:
        # given a hold of 60 seconds
        probe.run(PurchaseCredits("acme", 5_000, "buy"))
        hold = probe.run(PlaceHold("acme", 2_000, "h1", ttl_seconds=60)).hold
        assert hold.expires_at == T0 + timedelta(seconds=60)
        # when the sweeper runs before the TTL ends, nothing happens
        clock.tick(59)
        assert probe.run(ExpireHolds()).count == 0
        assert probe.wallet("acme").held_mc == 2_000
        # when it runs after
        clock.tick(2)
        assert probe.run(ExpireHolds()).count == 1
    # then the credits are available again, the hold is expired, and it cannot be captured any more
    view = probe.wallet("acme")
    assert (view.available_mc, view.held_mc) == (5_000, 0)
    assert probe.scalar("SELECT status FROM holds WHERE id = :id", id=hold.id) == "expired"
    with pytest.raises(HoldNotPending):
        probe.run(CaptureHold(hold.id, 100, "late-capture"))
    probe.assert_consistent()


def test_a_grant_expires_at_its_time_and_only_what_is_left_of_it(probe):
    with freeze_time(T0) as clock:
        # given a promotion that lasts one day, partly spent, and paid credits that never expire
        probe.run(GrantCredits("acme", 3_000, "promo", expires_at=T0 + timedelta(days=1)))
        probe.run(PurchaseCredits("acme", 5_000, "buy"))
        probe.run(DebitUsage("acme", 1_000, "use"))
        # when the sweeper runs just before, then just after the expiry
        clock.tick(timedelta(days=1) - timedelta(seconds=1))
        assert probe.run(ExpireGrants()).count == 0
        clock.tick(2)
        result = probe.run(ExpireGrants())
    # then the 2,000 left of the promotion expire, the paid credits stay
    assert result.count == 1
    assert probe.available("acme") == 5_000
    assert probe.system("expiry") == 2_000
    assert [(g.source, g.remaining_mc) for g in probe.grants("acme")] == [("promotional", 0), ("purchase", 5_000)]
    assert probe.scalar("SELECT occurred_at FROM ledger_entries WHERE kind = 'grant_expiry'") == T0 + timedelta(days=1)
    probe.assert_consistent()


def test_expired_credits_are_not_spendable_even_before_the_sweep(probe):
    with freeze_time(T0) as clock:
        probe.run(GrantCredits("acme", 3_000, "promo", expires_at=T0 + timedelta(hours=1)))
        clock.tick(timedelta(hours=2))
        with pytest.raises(InsufficientCredits) as err:
            probe.run(DebitUsage("acme", 1, "use"))
    assert err.value.details["available"] == "0.000"


def test_credits_released_from_a_hold_after_their_grant_expired_expire_instead_of_returning(probe):
    with freeze_time(T0) as clock:
        # given a hold drawn from a promotion that expires while the hold is open
        probe.run(GrantCredits("acme", 3_000, "promo", expires_at=T0 + timedelta(hours=1)))
        hold = probe.run(PlaceHold("acme", 2_000, "h1", ttl_seconds=7_200)).hold
        clock.tick(timedelta(hours=1, minutes=1))
        assert probe.run(ExpireGrants()).count == 1  # the 1,000 not held
        # when the hold is released
        probe.run(ReleaseHold(hold.id, "r1"))
    # then the returning 2,000 expire too: nothing revives a dead grant
    view = probe.wallet("acme")
    assert (view.available_mc, view.held_mc) == (0, 0)
    assert probe.system("expiry") == 3_000
    probe.assert_consistent()


def test_spending_order_soonest_expiry_first_then_promotional_before_paid(probe):
    with freeze_time(T0):
        # given four grants (created in this order)
        probe.run(PurchaseCredits("acme", 1_000, "paid-forever"))
        probe.run(GrantCredits("acme", 1_000, "promo-forever"))
        probe.run(PurchaseCredits("acme", 1_000, "paid-in-10d", expires_at=T0 + timedelta(days=10)))
        probe.run(GrantCredits("acme", 1_000, "promo-in-10d", expires_at=T0 + timedelta(days=10)))
        probe.run(GrantCredits("acme", 1_000, "plan-in-30d", source="plan", expires_at=T0 + timedelta(days=30)))
        probe.run(PurchaseCredits("acme", 1_000, "paid-in-2d", expires_at=T0 + timedelta(days=2)))
        keys = dict(
            probe.rows(
                "SELECT e.idempotency_key, g.id FROM grants g JOIN ledger_entries e ON e.id = g.entry_id ORDER BY g.id"
            )
        )
        # when credits are spent one grant's worth at a time
        drained = []
        for i in range(6):
            probe.run(DebitUsage("acme", 1_000, f"use-{i}"))
            remaining = {g.id: g.remaining_mc for g in probe.grants("acme")}
            drained.append(next(k for k, gid in keys.items() if remaining[gid] == 0 and k not in drained))
    # then
    assert drained == ["paid-in-2d", "promo-in-10d", "paid-in-10d", "plan-in-30d", "promo-forever", "paid-forever"]


def test_one_debit_spanning_several_grants_posts_one_line_per_grant(probe):
    probe.run(GrantCredits("acme", 300, "promo"))
    probe.run(PurchaseCredits("acme", 1_000, "buy"))
    entry = probe.run(DebitUsage("acme", 800, "use")).entry_id
    lines = probe.rows(
        "SELECT g.source, p.amount_mc FROM postings p JOIN grants g ON g.id = p.grant_id "
        "WHERE p.entry_id = :e ORDER BY p.line",
        e=entry,
    )
    assert [(r.source, r.amount_mc) for r in lines] == [("promotional", -300), ("purchase", -500)]
