"""The batch form of debit_usage: one transaction, per-report idempotency and per-report outcome."""

from __future__ import annotations

import pytest

from billing_core.errors import IdempotencyConflict, InsufficientCredits, UnknownAccount
from billing_core.ledger.batch_debit import APPLIED, DUPLICATE, REJECTED, apply_usage_batch
from billing_core.ledger.commands import DebitUsage, GrantCredits, PurchaseCredits

pytestmark = pytest.mark.integration


def test_a_batch_applies_each_report_and_aggregates_per_wallet(probe, session_factory):
    # given two funded wallets, one of them hot
    probe.run(PurchaseCredits("hot", 100_000, "buy-hot"))
    probe.run(PurchaseCredits("cold", 100_000, "buy-cold"))
    reports = [DebitUsage("hot", 100 + i, f"u{i}") for i in range(40)] + [DebitUsage("cold", 7, "c1")]
    # when
    outcomes = apply_usage_batch(session_factory, reports)
    # then every report is applied with its own entry
    assert [o.status for o in outcomes] == [APPLIED] * 41
    assert len({o.entry_id for o in outcomes}) == 41
    hot_total = sum(100 + i for i in range(40))
    assert probe.available("hot") == 100_000 - hot_total
    assert probe.available("cold") == 100_000 - 7
    assert probe.system("usage_revenue") == hot_total + 7
    probe.assert_consistent()


def test_each_report_gets_its_own_verdict_and_a_refusal_writes_nothing_for_it(probe, session_factory):
    # given a wallet with 2,500 mc
    probe.run(PurchaseCredits("acme", 2_500, "buy"))
    reports = [
        DebitUsage("acme", 1_000, "a"),
        DebitUsage("ghost", 1, "b"),
        DebitUsage("acme", 1_000, "c"),
        DebitUsage("acme", 1_000, "d"),  # only 500 left by now
        DebitUsage("acme", 500, "e"),  # which this one takes exactly
    ]
    # when
    outcomes = apply_usage_batch(session_factory, reports)
    # then
    assert [o.status for o in outcomes] == [APPLIED, REJECTED, APPLIED, REJECTED, APPLIED]
    assert isinstance(outcomes[1].error, UnknownAccount)
    assert isinstance(outcomes[3].error, InsufficientCredits)
    assert outcomes[3].error.details["available"] == "0.500"
    assert probe.available("acme") == 0
    assert probe.wallet("ghost") is None
    keys = {r.idempotency_key for r in probe.rows("SELECT idempotency_key FROM ledger_entries WHERE kind = 'usage'")}
    assert keys == {"a", "c", "e"}
    probe.assert_consistent()


def test_replays_and_conflicts_across_and_within_batches(probe, session_factory):
    # given a report applied earlier
    probe.run(PurchaseCredits("acme", 10_000, "buy"))
    [first] = apply_usage_batch(session_factory, [DebitUsage("acme", 100, "k1")])
    # when a batch repeats it, reuses its key with another body, and repeats a key within itself
    outcomes = apply_usage_batch(
        session_factory,
        [
            DebitUsage("acme", 100, "k1"),  # replay
            DebitUsage("acme", 999, "k1"),  # conflict
            DebitUsage("acme", 200, "k2"),
            DebitUsage("acme", 200, "k2"),  # duplicate within the batch
            DebitUsage("acme", 300, "k2"),  # conflict within the batch
        ],
    )
    # then only k2 is new, once
    assert [o.status for o in outcomes] == [DUPLICATE, REJECTED, APPLIED, DUPLICATE, REJECTED]
    assert outcomes[0].entry_id == first.entry_id
    assert outcomes[3].entry_id == outcomes[2].entry_id
    assert isinstance(outcomes[1].error, IdempotencyConflict)
    assert isinstance(outcomes[4].error, IdempotencyConflict)
    assert probe.available("acme") == 10_000 - 100 - 200
    probe.assert_consistent()


def test_a_batch_spends_grants_in_order_across_reports(probe, session_factory):
    probe.run(GrantCredits("acme", 250, "promo"))
    probe.run(PurchaseCredits("acme", 1_000, "buy"))
    apply_usage_batch(session_factory, [DebitUsage("acme", 100, f"u{i}") for i in range(4)])
    assert [(g.source, g.remaining_mc) for g in probe.grants("acme")] == [("promotional", 0), ("purchase", 850)]
    probe.assert_consistent()


def test_a_batch_whose_every_report_is_refused_writes_nothing(probe, session_factory):
    probe.run(PurchaseCredits("acme", 10, "buy"))
    before = probe.snapshot()
    outcomes = apply_usage_batch(session_factory, [DebitUsage("acme", 11, "x"), DebitUsage("nobody", 1, "y")])
    assert [o.status for o in outcomes] == [REJECTED, REJECTED]
    assert probe.snapshot() == before
