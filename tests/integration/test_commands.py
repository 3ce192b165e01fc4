"""Every command: what it posts, its replay (the same entry back) and its conflict (nothing written)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from billing_core.errors import (
    AccountFlagged,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidCommand,
    UnknownAccount,
    UnknownHold,
)
from billing_core.ledger.commands import (
    Adjust,
    CaptureHold,
    ClawBack,
    DebitUsage,
    ExpireGrants,
    ExpireHolds,
    GrantCredits,
    PlaceHold,
    PurchaseCredits,
    ReleaseHold,
    TransferCredits,
)

pytestmark = pytest.mark.integration


def buy(probe, account: str = "acme", mc: int = 10_000, key: str = "buy-1", ref: str | None = "cs_1"):
    return probe.run(PurchaseCredits(account, mc, key, external_ref=ref))


# -- replay and conflict, for every command ------------------------------------------------------------
@dataclass
class Case:
    name: str
    given: Callable  # probe -> context dict
    command: Callable  # (ctx, variant) -> command; variant 0 is the original, 1 a different body


def _with_credits(probe):
    buy(probe)
    return {}


def _with_hold(probe):
    buy(probe)
    return {"hold": probe.run(PlaceHold("acme", 3_000, "hold-1")).hold.id}


CASES = [
    Case("purchase", lambda p: {}, lambda c, v: PurchaseCredits("acme", 5_000 + v, "k", external_ref="cs_9")),
    Case("grant", lambda p: {}, lambda c, v: GrantCredits("acme", 5_000, "k", reason=f"welcome {v}")),
    Case("debit_usage", _with_credits, lambda c, v: DebitUsage("acme", 1_000 + v, "k")),
    Case("place_hold", _with_credits, lambda c, v: PlaceHold("acme", 2_000, "k", ttl_seconds=60 + v)),
    Case("capture_hold", _with_hold, lambda c, v: CaptureHold(c["hold"], 2_500 + v, "k")),
    Case(
        "release_hold",
        _with_hold,
        lambda c, v: ReleaseHold(c["hold"], "k") if v == 0 else CaptureHold(c["hold"], 1, "k"),
    ),
    Case("claw_back", _with_credits, lambda c, v: ClawBack("acme", 4_000, "k", reason=("refund", "dispute")[v])),
    Case("adjust_up", lambda p: {}, lambda c, v: Adjust("acme", 700, "k", reason="goodwill", actor=f"ops{v}")),
    Case("adjust_down", _with_credits, lambda c, v: Adjust("acme", -700 - v, "k", reason="fix", actor="ops")),
    Case("transfer", _with_credits, lambda c, v: TransferCredits("acme", ("team", "other")[v], 1_500, "k")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_returns_the_first_entry_and_changes_nothing(probe, case):
    # given
    ctx = case.given(probe)
    first = probe.run(case.command(ctx, 0))
    before = probe.snapshot()
    # when
    again = probe.run(case.command(ctx, 0))
    # then
    assert again.replayed and not first.replayed
    assert again.entry_id == first.entry_id
    assert again.grant_id == first.grant_id
    assert (again.hold and again.hold.id) == (first.hold and first.hold.id)
    assert probe.snapshot() == before
    probe.assert_consistent()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_key_with_another_body_is_a_conflict_and_writes_nothing(probe, case):
    # given
    ctx = case.given(probe)
    probe.run(case.command(ctx, 0))
    before = probe.snapshot()
    # when / then
    with pytest.raises(IdempotencyConflict) as err:
        probe.run(case.command(ctx, 1))
    assert err.value.details["idempotency_key"] == "k"
    assert probe.snapshot() == before


def test_sweeps_are_idempotent_by_state(probe):
    # given a hold and a grant, both past their time
    now = datetime(2026, 1, 1, tzinfo=UTC)
    probe.run(GrantCredits("acme", 1_000, "promo", expires_at=now + timedelta(hours=1)), now=now)
    buy(probe)
    probe.run(PlaceHold("acme", 500, "h", ttl_seconds=60), now=now)
    later = now + timedelta(days=1)
    # when swept twice
    first = (probe.run(ExpireHolds(now=later)), probe.run(ExpireGrants(now=later)))
    before = probe.snapshot()
    second = (probe.run(ExpireHolds(now=later)), probe.run(ExpireGrants(now=later)))
    # then the second sweep finds nothing left to do
    assert [r.count for r in first] == [1, 1]
    assert [r.count for r in second] == [0, 0]
    assert probe.snapshot() == before
    probe.assert_consistent()


# -- what each command posts ---------------------------------------------------------------------------
def test_purchase_creates_the_wallet_and_a_paid_grant(probe):
    # given an account never named before
    assert probe.wallet("acme") is None
    # when
    receipt = buy(probe, mc=12_345)
    # then
    assert probe.available("acme") == 12_345
    assert probe.system("stripe_clearing") == -12_345
    [grant] = probe.grants("acme")
    assert (grant.id, grant.source, grant.amount_mc, grant.remaining_mc, grant.external_ref) == (
        receipt.grant_id,
        "purchase",
        12_345,
        12_345,
        "cs_1",
    )
    probe.assert_consistent()


def test_grant_is_promotional_and_funded_by_the_promotional_account(probe):
    probe.run(GrantCredits("acme", 2_000, "promo", reason="launch"))
    assert probe.available("acme") == 2_000
    assert probe.system("promotional") == -2_000
    assert [g.source for g in probe.grants("acme")] == ["promotional"]
    assert probe.scalar("SELECT metadata->>'reason' FROM ledger_entries") == "launch"


def test_grant_expiry_must_be_in_the_future(probe):
    with pytest.raises(InvalidCommand):
        probe.run(GrantCredits("acme", 2_000, "promo", expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    assert probe.wallet("acme") is None


def test_debit_moves_credits_to_usage_revenue(probe):
    buy(probe)
    probe.run(DebitUsage("acme", 1_234, "use-1", metadata={"model": "gpt-4o"}))
    assert probe.available("acme") == 10_000 - 1_234
    assert probe.system("usage_revenue") == 1_234
    probe.assert_consistent()


def test_debit_short_of_credits_is_refused_with_figures_and_writes_nothing(probe):
    buy(probe, mc=1_000)
    before = probe.snapshot()
    with pytest.raises(InsufficientCredits) as err:
        probe.run(DebitUsage("acme", 1_001, "use-1"))
    assert err.value.details == {"account": "acme", "required": "1.001", "available": "1.000"}
    assert probe.snapshot() == before


def test_debit_of_an_unknown_account_is_refused_and_creates_nothing(probe):
    with pytest.raises(UnknownAccount):
        probe.run(DebitUsage("ghost", 1, "use-1"))
    assert probe.wallet("ghost") is None
    assert probe.scalar("SELECT count(*) FROM ledger_entries") == 0


def test_hold_reserves_credits_and_refusal_carries_required_and_available(probe):
    buy(probe, mc=5_000)
    receipt = probe.run(PlaceHold("acme", 3_000, "h1", ttl_seconds=120))
    assert receipt.hold.status == "pending" and receipt.hold.amount_mc == 3_000
    view = probe.wallet("acme")
    assert (view.available_mc, view.held_mc) == (2_000, 3_000)
    with pytest.raises(InsufficientCredits) as err:
        probe.run(PlaceHold("acme", 2_001, "h2"))
    assert (err.value.details["required"], err.value.details["available"]) == ("2.001", "2.000")
    probe.assert_consistent()


def test_capture_below_the_hold_returns_the_rest(probe):
    buy(probe, mc=5_000)
    hold = probe.run(PlaceHold("acme", 3_000, "h1")).hold
    receipt = probe.run(CaptureHold(hold.id, 1_200, "c1"))
    assert receipt.hold.status == "captured" and receipt.hold.captured_mc == 1_200
    view = probe.wallet("acme")
    assert (view.available_mc, view.held_mc) == (3_800, 0)
    assert probe.system("usage_revenue") == 1_200
    probe.assert_consistent()


def test_capture_above_the_hold_takes_the_excess_from_available(probe):
    buy(probe, mc=5_000)
    hold = probe.run(PlaceHold("acme", 3_000, "h1")).hold
    probe.run(CaptureHold(hold.id, 4_500, "c1"))
    view = probe.wallet("acme")
    assert (view.available_mc, view.held_mc, view.flagged) == (500, 0, False)
    assert probe.system("usage_revenue") == 4_500


def test_capture_beyond_available_leaves_a_flagged_negative_balance(probe):
    buy(probe, mc=5_000)
    hold = probe.run(PlaceHold("acme", 3_000, "h1")).hold
    probe.run(CaptureHold(hold.id, 6_000, "c1"))
    view = probe.wallet("acme")
    assert (view.available_mc, view.held_mc, view.flagged) == (-1_000, 0, True)
    probe.assert_consistent()


def test_settled_hold_cannot_be_captured_or_released_again(probe):
    buy(probe)
    hold = probe.run(PlaceHold("acme", 3_000, "h1")).hold
    probe.run(ReleaseHold(hold.id, "r1"))
    before = probe.snapshot()
    with pytest.raises(HoldNotPending) as err:
        probe.run(CaptureHold(hold.id, 1, "c-late"))
    assert err.value.details["status"] == "released"
    with pytest.raises(HoldNotPending):
        probe.run(ReleaseHold(hold.id, "r2"))
    assert probe.snapshot() == before


def test_unknown_hold_is_a_typed_error(probe):
    with pytest.raises(UnknownHold):
        probe.run(CaptureHold("hold_doesnotexist", 1, "c1"))


def test_release_returns_credits_to_the_grants_they_came_from(probe):
    # given promotional credits that a hold drew first
    probe.run(GrantCredits("acme", 1_000, "promo"))
    buy(probe, mc=10_000)
    hold = probe.run(PlaceHold("acme", 1_500, "h1")).hold
    assert [g.remaining_mc for g in probe.grants("acme")] == [0, 9_500]
    # when
    probe.run(ReleaseHold(hold.id, "r1"))
    # then the promotional grant is whole again
    assert [g.remaining_mc for g in probe.grants("acme")] == [1_000, 10_000]
    probe.assert_consistent()


def test_clawback_of_a_purchase_takes_from_its_grant_first_then_goes_negative_and_flags(probe):
    # given a purchase mostly spent, and a promotion
    buy(probe, mc=10_000, key="buy-1", ref="cs_paid")
    probe.run(GrantCredits("acme", 1_000, "promo"))
    probe.run(DebitUsage("acme", 7_000, "use-1"))  # promo first (1,000), then 6,000 of the purchase
    # when the purchase is refunded in full
    probe.run(ClawBack("acme", 10_000, "refund:re_1", grant_ref="cs_paid", external_ref="re_1"))
    # then its 4,000 left are taken and 6,000 become debt
    view = probe.wallet("acme")
    assert (view.available_mc, view.flagged) == (-6_000, True)
    assert probe.system("refunds") == 10_000
    probe.assert_consistent()
    # and new holds are blocked until it is settled
    with pytest.raises(AccountFlagged):
        probe.run(PlaceHold("acme", 1, "h1"))
    # when credits arrive, the debt is paid first and the flag clears
    buy(probe, mc=8_000, key="buy-2", ref="cs_2")
    view = probe.wallet("acme")
    assert (view.available_mc, view.flagged) == (2_000, False)
    assert probe.run(PlaceHold("acme", 2_000, "h2")).hold.status == "pending"
    probe.assert_consistent()


def test_adjust_requires_reason_and_actor_and_records_them(probe):
    with pytest.raises(InvalidCommand):
        Adjust.validated("acme", 100, "a1", reason="", actor="ops")
    with pytest.raises(InvalidCommand):
        Adjust.validated("acme", 100, "a1", reason="why", actor=" ")
    probe.run(Adjust("acme", 100, "a1", reason="goodwill", actor="ops@example.com"))
    assert probe.available("acme") == 100
    meta = probe.scalar("SELECT metadata FROM ledger_entries")
    assert meta == {"reason": "goodwill", "actor": "ops@example.com"}


def test_negative_adjustment_never_overdraws(probe):
    buy(probe, mc=500)
    with pytest.raises(InsufficientCredits):
        probe.run(Adjust("acme", -501, "a1", reason="fix", actor="ops"))
    probe.run(Adjust("acme", -500, "a2", reason="fix", actor="ops"))
    assert probe.available("acme") == 0
    assert probe.system("adjustments") == 500


def test_transfer_keeps_each_grants_expiry(probe):
    soon = datetime.now(UTC) + timedelta(days=3)
    probe.run(GrantCredits("acme", 1_000, "promo", expires_at=soon))
    buy(probe, mc=5_000)
    probe.run(TransferCredits("acme", "team", 1_500, "t1"))
    assert (probe.available("acme"), probe.available("team")) == (4_500, 1_500)
    expiries = sorted((g.amount_mc, g.expires_at is not None) for g in probe.grants("team"))
    assert expiries == [(500, False), (1_000, True)]
    with pytest.raises(UnknownAccount):
        probe.run(TransferCredits("ghost", "team", 1, "t2"))
    assert probe.wallet("ghost") is None
    probe.assert_consistent()


def test_a_wallet_whose_debt_was_paid_off_can_go_into_debt_again(probe):
    # Regression: the settled debt grant (remaining 0) was not loaded, and a second one broke the unique index.
    probe.run(PurchaseCredits("acme", 1_000, "p1"))
    probe.run(ClawBack("acme", 1_500, "c1"))
    probe.run(PurchaseCredits("acme", 1_000, "p2"))
    assert probe.wallet("acme").flagged is False
    probe.run(ClawBack("acme", 1_000, "c2"))
    view = probe.wallet("acme")
    assert (view.available_mc, view.flagged) == (-500, True)
    assert probe.scalar("SELECT count(*) FROM grants WHERE source = 'debt'") == 1
    probe.assert_consistent()


def test_a_hold_past_its_ttl_cannot_be_captured_even_before_the_sweep(probe):
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    buy(probe)
    hold = probe.run(PlaceHold("acme", 1_000, "h1", ttl_seconds=60), now=t0).hold
    before = probe.snapshot()
    with pytest.raises(HoldNotPending) as err:
        probe.run(CaptureHold(hold.id, 500, "late"), now=t0 + timedelta(seconds=60))
    assert err.value.details["status"] == "expired"
    assert probe.snapshot() == before
    # a release is still accepted: it only gives the credits back sooner
    probe.run(ReleaseHold(hold.id, "r1"), now=t0 + timedelta(seconds=61))
    assert probe.wallet("acme").available_mc == 10_000
