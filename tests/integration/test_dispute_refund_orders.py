"""Refunds and disputes of one purchase in every order they can arrive, with duplicates: the end balance is the
same whatever the order (``docs/refunds-and-disputes.md`` has the table these cases come from).

The purchase: the starter package, 10,000 credits for 1,000 cents (``pi_acme_1``). Every event goes through the
inbox and its handler, with the facts in its payload (no gateway). Each scenario is run in every permutation
of its events, each permutation twice: every event delivered twice in a row (a duplicate delivery), and the
whole sequence delivered again afterwards under new event ids (late replays).

Invariants checked after every sequence: the ledger is consistent (``billing check``), credits taken back never
exceed the purchase, nothing stays held once the dispute is closed, and the end state is the scenario's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from billing_core.intake.stripe_events import PROCESSED
from billing_core.ledger.commands import DebitUsage
from tests.integration.test_stripe_handlers import (
    STARTER_MC,
    buy_starter,
    charge,
    dispute,
    receive,
    refund,
    stripe_event,
)

pytestmark = pytest.mark.integration

CREDIT = 1_000  # mc


def refunded(*refunds: tuple[str, int]) -> tuple[str, dict[str, Any]]:
    """``charge.refunded`` as Stripe sends it: the charge with every refund made by then."""
    made = [refund(rid, amount, created=1_700_000_000 + i) for i, (rid, amount) in enumerate(refunds)]
    return "charge.refunded", charge(made)


def opened(amount: int) -> tuple[str, dict[str, Any]]:
    return "charge.dispute.created", dispute(amount=amount)


def withdrawn(amount: int) -> tuple[str, dict[str, Any]]:
    return "charge.dispute.funds_withdrawn", dispute(amount=amount)


def closed(amount: int, outcome: str) -> tuple[str, dict[str, Any]]:
    return "charge.dispute.closed", dispute(amount=amount, status=outcome)


def reinstated(amount: int) -> tuple[str, dict[str, Any]]:
    return "charge.dispute.funds_reinstated", dispute(amount=amount, status="won")


@dataclass(frozen=True)
class Case:
    events: dict[str, tuple[str, dict[str, Any]]]
    available_mc: int  # at the end, whatever the order
    refunds_mc: int  # taken back in all (the system refunds account)
    spent_mc: int = 0  # spent before any of the events


CASES: dict[str, Case] = {
    # partial refund, then (or before) a dispute of the rest
    "refund 400 + dispute 600 won": Case(
        {"R": refunded(("re_1", 400)), "C": opened(600), "W": closed(600, "won")}, 6_000 * CREDIT, 4_000 * CREDIT
    ),
    "refund 400 + dispute 600 lost": Case(
        {"R": refunded(("re_1", 400)), "C": opened(600), "L": closed(600, "lost")}, 0, STARTER_MC
    ),
    # a dispute of the whole charge and a refund (Stripe refunds after a won dispute; duplicates of both)
    "dispute 1000 won + refund 400": Case(
        {"C": opened(1_000), "W": closed(1_000, "won"), "R": refunded(("re_1", 400))}, 6_000 * CREDIT, 4_000 * CREDIT
    ),
    # the same money refunded and disputed (more than the charge): never more than the purchase is taken back
    "dispute 1000 lost + refund 400": Case(
        {"C": opened(1_000), "L": closed(1_000, "lost"), "R": refunded(("re_1", 400))}, 0, STARTER_MC
    ),
    # funds_withdrawn beside created, won twice over (closed won and funds_reinstated)
    "dispute 500 withdrawn and reinstated": Case(
        {"C": opened(500), "F": withdrawn(500), "W": closed(500, "won"), "I": reinstated(500)}, STARTER_MC, 0
    ),
    # two partial refunds in two events, and a dispute of the rest lost
    "refunds 300 + 200 + dispute 500 lost": Case(
        {
            "R1": refunded(("re_1", 300)),
            "R2": refunded(("re_1", 300), ("re_2", 200)),
            "C": opened(500),
            "L": closed(500, "lost"),
        },
        0,
        STARTER_MC,
    ),
    # credits spent before: the dispute holds what is left, the loss takes the rest as debt
    "7000 spent, refund 300 + dispute 700 lost": Case(
        {"R": refunded(("re_1", 300)), "C": opened(700), "L": closed(700, "lost")},
        -7_000 * CREDIT,
        STARTER_MC,
        spent_mc=7_000 * CREDIT,
    ),
    "7000 spent, refund 300 + dispute 700 won": Case(
        {"R": refunded(("re_1", 300)), "C": opened(700), "W": closed(700, "won")},
        0,
        3_000 * CREDIT,
        spent_mc=7_000 * CREDIT,
    ),
}


def orders() -> list[Any]:
    params = []
    for name, case in CASES.items():
        for order in itertools.permutations(case.events):
            for mode in ("doubled", "replayed"):
                params.append(pytest.param(name, order, mode, id=f"{name}|{'-'.join(order)}|{mode}"))
    return params


@pytest.mark.parametrize(("name", "order", "mode"), orders())
def test_refunds_and_disputes_in_every_order_end_in_the_same_balance(session_factory, probe, name, order, mode):
    case = CASES[name]
    buy_starter(probe, session_factory)
    if case.spent_mc:
        probe.run(DebitUsage("acme", case.spent_mc, "usage:spent"))

    sequence = [e for e in order for _ in range(2)] if mode == "doubled" else list(order) + list(order)
    for n, label in enumerate(sequence):
        event_type, obj = case.events[label]
        assert receive(session_factory, None, stripe_event(f"evt_{label}_{n}", event_type, obj)) == PROCESSED
        # at every step: consistent, and never more taken back than bought
        assert probe.system("refunds") <= STARTER_MC
    probe.assert_consistent()

    wallet = probe.wallet("acme")
    assert wallet is not None
    assert (wallet.available_mc, wallet.held_mc) == (case.available_mc, 0)
    assert probe.system("refunds") == case.refunds_mc
    assert wallet.flagged is (case.available_mc < 0)
    assert probe.scalar("SELECT count(*) FROM disputes WHERE status = 'open'") == 0


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_while_a_dispute_is_open_its_share_is_held_and_not_spendable(session_factory, probe, outcome):
    buy_starter(probe, session_factory)
    receive(session_factory, None, stripe_event("evt_open", *opened(600)))
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.held_mc) == (4_000 * CREDIT, 6_000 * CREDIT)

    # spending more than what is left is refused: the held credits are not spendable
    from billing_core.errors import InsufficientCredits

    with pytest.raises(InsufficientCredits):
        probe.run(DebitUsage("acme", 4_001 * CREDIT, "usage:too_much"))
    probe.run(DebitUsage("acme", 4_000 * CREDIT, "usage:all_left"))

    receive(session_factory, None, stripe_event("evt_close", *closed(600, outcome)))
    expected = 6_000 * CREDIT if outcome == "won" else 0
    assert probe.wallet("acme").available_mc == expected
    assert probe.wallet("acme").held_mc == 0
    probe.assert_consistent()
