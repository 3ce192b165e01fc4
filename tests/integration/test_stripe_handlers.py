"""Stripe event handlers on real PostgreSQL: events built from Stripe's own fixtures, stored with
the receiver's ``EventInbox`` and handled by ``process_event``; Stripe itself is a small in-test reader over dicts."""

from __future__ import annotations

import copy
import json
import threading
from functools import cache
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.db.unit_of_work import UnitOfWork
from billing_core.intake import dead_letters
from billing_core.intake.stripe_events import (
    DEAD,
    FAILED,
    IGNORED,
    MAX_ATTEMPTS,
    PROCESSED,
    WAITING,
    DueEvents,
    MalformedEvent,
    check_event,
    due_events,
    process_event,
    process_pending,
)
from billing_core.ledger.commands import DebitUsage
from billing_core.ledger.handlers import debit_usage
from billing_core.stripe.gateway import StripeNotFound
from tests.fixtures import STRIPE_FIXTURES
from tests.integration.conftest import event_inbox_for

pytestmark = pytest.mark.integration

FIXTURES = STRIPE_FIXTURES
STARTER_MC = 10_000_000  # 10,000 credits
STARTER_CENTS = 1_000


@cache
def _resources() -> dict[str, Any]:
    return json.loads(FIXTURES.read_text())["resources"]


def stripe_object(kind: str, **overrides: Any) -> dict[str, Any]:
    """A fresh copy of Stripe's fixture of ``kind`` with the given fields replaced."""
    obj = copy.deepcopy(_resources()[kind])
    obj.update(overrides)
    return obj


# -- Stripe objects in the shapes the handlers read ------------------------------------------------------
def checkout_session(
    session_id: str = "cs_test_acme_1",
    *,
    account: str = "acme",
    credits: str = "10000",
    payment_intent: str = "pi_acme_1",
    amount_total: int = STARTER_CENTS,
    paid: bool = True,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    return stripe_object(
        "checkout.session",
        id=session_id,
        status="complete",
        payment_status="paid" if paid else "unpaid",
        payment_intent=payment_intent,
        amount_total=amount_total,
        amount_subtotal=amount_total,
        currency="usd",
        metadata={"account": account, "package": "starter", "credits": credits} if metadata is None else metadata,
    )


def refund(refund_id: str, amount: int, *, charge: str = "ch_acme_1", created: int = 1_700_000_000) -> dict[str, Any]:
    return stripe_object(
        "refund", id=refund_id, amount=amount, charge=charge, created=created, status="succeeded", payment_intent=None
    )


def charge(
    refunds: list[dict[str, Any]], *, charge_id: str = "ch_acme_1", payment_intent: str = "pi_acme_1"
) -> dict[str, Any]:
    obj = stripe_object(
        "charge",
        id=charge_id,
        amount=STARTER_CENTS,
        amount_captured=STARTER_CENTS,
        amount_refunded=sum(r["amount"] for r in refunds),
        captured=True,
        refunded=sum(r["amount"] for r in refunds) == STARTER_CENTS,
        payment_intent=payment_intent,
    )
    obj["refunds"] = {**obj["refunds"], "data": refunds, "url": f"/v1/charges/{charge_id}/refunds"}
    return obj


def dispute(
    dispute_id: str = "dp_acme_1", *, amount: int, status: str = "needs_response", payment_intent: str = "pi_acme_1"
) -> dict[str, Any]:
    return stripe_object("dispute", id=dispute_id, amount=amount, status=status, payment_intent=payment_intent)


def customer(
    customer_id: str = "cus_acme", *, account: str | None = "acme", email: str | None = None
) -> dict[str, Any]:
    return stripe_object(
        "customer", id=customer_id, email=email, metadata={"account": account} if account is not None else {}
    )


def stripe_event(event_id: str, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    event = stripe_object("event", id=event_id, type=event_type, api_version="2024-06-20", created=1_700_000_100)
    event["data"] = {"object": obj}
    return event


class FakeStripe:
    """Stripe as the handlers re-read it: sessions by id, refunds by charge; copies out, like the API."""

    def __init__(self, sessions: list[dict[str, Any]] = (), refunds: dict[str, list[dict[str, Any]]] | None = None):
        self.sessions = {s["id"]: s for s in sessions}
        self.refunds = refunds or {}

    def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise StripeNotFound(f"No such checkout.session: '{session_id}'", http_status=404)
        return copy.deepcopy(self.sessions[session_id])

    def list_checkout_sessions(self, *, payment_intent: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        found = [s for s in self.sessions.values() if payment_intent in (None, s.get("payment_intent"))]
        return copy.deepcopy(found[:limit])

    def list_refunds(self, *, charge: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.refunds.get(charge, []))


class BrokenStripe:
    """Every call fails the way an unexpected bug would."""

    def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        raise RuntimeError("stripe client exploded")

    def list_checkout_sessions(self, *, payment_intent: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        raise RuntimeError("stripe client exploded")

    def list_refunds(self, *, charge: str) -> list[dict[str, Any]]:
        raise RuntimeError("stripe client exploded")


# -- helpers ---------------------------------------------------------------------------------------------
def deliver(session_factory, event: dict[str, Any]) -> bool:
    """Store the event as the receiver does; True when this delivery stored it."""
    return event_inbox_for(session_factory).store(check_event(event), json.dumps(event).encode())


def receive(session_factory, gateway, event: dict[str, Any]) -> str:
    deliver(session_factory, event)
    return process_event(session_factory, gateway, event["id"])


def execute_sql(session_factory, sql: str) -> None:
    with session_factory() as s, s.begin():
        s.execute(text(sql))


def event_row(probe, event_id: str) -> Any:
    rows = probe.rows(
        "SELECT status, attempts, last_error, next_attempt_at > now() AS later, processed_at FROM stripe_events "
        "WHERE id = :id",
        id=event_id,
    )
    assert len(rows) == 1, f"no stored event {event_id}"
    return rows[0]


def entries(probe, account: str) -> list[tuple[str, str, str | None, int]]:
    """(kind, idempotency key, external ref, net change to the account's available balance) per entry."""
    return [
        tuple(r)
        for r in probe.rows(
            "SELECT e.kind, e.idempotency_key, e.external_ref, sum(p.amount_mc)::bigint FROM ledger_entries e "
            "JOIN postings p ON p.entry_id = e.id JOIN wallets w ON w.available_account_id = p.account_id "
            "WHERE w.account = :a GROUP BY e.id ORDER BY e.id",
            a=account,
        )
    ]


def entry_count(probe) -> int:
    return probe.scalar("SELECT count(*) FROM ledger_entries")


def purchase_grant(probe, account: str, payment_intent: str = "pi_acme_1") -> Any:
    rows = [g for g in probe.grants(account) if g.source == "purchase" and g.external_ref == payment_intent]
    assert len(rows) == 1, rows
    return rows[0]


def buy_starter(probe, session_factory, account: str = "acme") -> None:
    """Given: the starter package (10,000 credits for 1,000 cents, pi_acme_1) credited to ``account``."""
    session = checkout_session(account=account)
    status = receive(session_factory, None, stripe_event("evt_buy", "checkout.session.completed", session))
    assert status == PROCESSED
    assert probe.available(account) == STARTER_MC


# -- checkout ----------------------------------------------------------------------------------------------
def test_paid_checkout_credits_the_package_once(session_factory, probe):
    # given a paid session in Stripe and its completion event stored
    session = checkout_session()
    gateway = FakeStripe([session])
    event = stripe_event("evt_done_1", "checkout.session.completed", session)
    assert deliver(session_factory, event) is True

    # when it is processed
    status = process_event(session_factory, gateway, "evt_done_1")

    # then the package is credited, keyed by the session and referenced by the payment intent
    assert status == PROCESSED
    assert probe.available("acme") == STARTER_MC
    assert entries(probe, "acme") == [("purchase", "checkout:cs_test_acme_1", "pi_acme_1", STARTER_MC)]
    grant = purchase_grant(probe, "acme")
    assert (grant.amount_mc, grant.remaining_mc) == (STARTER_MC, STARTER_MC)
    row = event_row(probe, "evt_done_1")
    assert (row.status, row.attempts, row.last_error) == (PROCESSED, 1, None)
    assert row.processed_at is not None
    probe.assert_consistent()


def test_the_same_session_credited_by_a_repeat_or_another_event_credits_nothing_more(session_factory, probe):
    # given a paid session already credited by its completion event
    session = checkout_session()
    gateway = FakeStripe([session])
    assert receive(session_factory, gateway, stripe_event("evt_done_1", "checkout.session.completed", session)) == (
        PROCESSED
    )
    before = probe.snapshot()

    # when the same event is processed again, delivered again, and a second event about the session arrives
    again = process_event(session_factory, gateway, "evt_done_1")
    stored_again = deliver(session_factory, stripe_event("evt_done_1", "checkout.session.completed", session))
    other = receive(session_factory, gateway, stripe_event("evt_done_2", "checkout.session.completed", session))

    # then nothing more is credited; the repeat is not even counted as an attempt
    assert (again, stored_again, other) == (PROCESSED, False, PROCESSED)
    assert event_row(probe, "evt_done_1").attempts == 1
    assert event_row(probe, "evt_done_2").status == PROCESSED
    after = probe.snapshot()
    assert after["balances"] == before["balances"] and after["grants"] == before["grants"]
    assert after["counts"]["ledger_entries"] == before["counts"]["ledger_entries"] == 1
    assert probe.available("acme") == STARTER_MC


def test_unpaid_session_credits_nothing_until_its_async_payment_succeeds(session_factory, probe):
    # given a session completed with a delayed payment method: Stripe shows it unpaid
    gateway = FakeStripe([checkout_session(paid=False)])
    completed = stripe_event("evt_done_1", "checkout.session.completed", checkout_session(paid=False))

    # when its completion event is processed
    status = receive(session_factory, gateway, completed)

    # then it is handled, and nothing is credited
    assert status == PROCESSED
    assert entry_count(probe) == 0
    assert probe.wallet("acme") is None

    # when the payment later succeeds (Stripe now shows it paid) and that event arrives
    gateway.sessions["cs_test_acme_1"] = checkout_session(paid=True)
    succeeded = stripe_event("evt_async_1", "checkout.session.async_payment_succeeded", checkout_session(paid=True))
    status = receive(session_factory, gateway, succeeded)

    # then the package is credited once
    assert status == PROCESSED
    assert entries(probe, "acme") == [("purchase", "checkout:cs_test_acme_1", "pi_acme_1", STARTER_MC)]
    probe.assert_consistent()


def test_async_success_event_is_trusted_only_when_stripe_shows_the_session_paid(session_factory, probe):
    # given Stripe still shows the session unpaid, whatever the (stale or forged) payload says
    gateway = FakeStripe([checkout_session(paid=False)])
    event = stripe_event("evt_async_1", "checkout.session.async_payment_succeeded", checkout_session(paid=True))

    # when the event is processed
    status = receive(session_factory, gateway, event)

    # then nothing is credited
    assert status == PROCESSED
    assert entry_count(probe) == 0


def test_session_without_our_metadata_is_ignored(session_factory, probe):
    # given a paid session sold by another integration on the same Stripe account
    session = checkout_session(metadata={"order": "42"})

    # when its completion event is processed from the payload alone
    status = receive(session_factory, None, stripe_event("evt_other", "checkout.session.completed", session))

    # then it is ignored and nothing is written
    assert status == IGNORED
    row = event_row(probe, "evt_other")
    assert (row.status, row.attempts, row.last_error) == (IGNORED, 1, None)
    assert entry_count(probe) == 0
    assert probe.scalar("SELECT count(*) FROM wallets") == 0


# -- refunds -----------------------------------------------------------------------------------------------
def test_two_partial_refunds_claw_back_exactly_the_whole_purchase(session_factory, probe):
    # given the starter package bought, then refunded as 333 and 667 of its 1,000 cents
    buy_starter(probe, session_factory)
    refunds = [refund("re_b", 667, created=1_700_000_200), refund("re_a", 333, created=1_700_000_100)]
    gateway = FakeStripe([checkout_session()], {"ch_acme_1": refunds})
    event = stripe_event("evt_refunded", "charge.refunded", charge(refunds))

    # when the refund event is processed
    status = receive(session_factory, gateway, event)

    # then 3,330 and 6,670 credits are clawed back in two entries keyed by refund, the grant ends at 0
    assert status == PROCESSED
    assert entries(probe, "acme")[1:] == [
        ("clawback", "refund:re_a", "re_a", -3_330_000),
        ("clawback", "refund:re_b", "re_b", -6_670_000),
    ]
    assert probe.available("acme") == 0
    assert purchase_grant(probe, "acme").remaining_mc == 0
    assert probe.system("refunds") == STARTER_MC
    probe.assert_consistent()

    # when the event is processed again, and delivered again under another id
    before = probe.snapshot()
    again = process_event(session_factory, gateway, "evt_refunded")
    other = receive(session_factory, gateway, stripe_event("evt_refunded_2", "charge.refunded", charge(refunds)))

    # then nothing more is clawed back
    assert (again, other) == (PROCESSED, PROCESSED)
    after = probe.snapshot()
    assert after["balances"] == before["balances"]
    assert after["counts"]["ledger_entries"] == before["counts"]["ledger_entries"] == 3


def test_refunds_arriving_in_two_events_read_from_the_payload_take_each_share_once(session_factory, probe):
    # given the starter package bought, and a first partial refund of 333 cents handled from its payload
    buy_starter(probe, session_factory)
    first = [refund("re_a", 333, created=1_700_000_100)]
    assert receive(session_factory, None, stripe_event("evt_ref_1", "charge.refunded", charge(first))) == PROCESSED
    assert probe.available("acme") == STARTER_MC - 3_330_000

    # when the second refund's event lists both refunds
    both = [*first, refund("re_b", 667, created=1_700_000_200)]
    status = receive(session_factory, None, stripe_event("evt_ref_2", "charge.refunded", charge(both)))

    # then only the second share is taken, and the purchase is fully clawed back
    assert status == PROCESSED
    assert [e[1:] for e in entries(probe, "acme")[1:]] == [
        ("refund:re_a", "re_a", -3_330_000),
        ("refund:re_b", "re_b", -6_670_000),
    ]
    assert purchase_grant(probe, "acme").remaining_mc == 0
    probe.assert_consistent()


def test_a_refund_pending_at_charge_refunded_is_clawed_back_when_it_succeeds(session_factory, probe):
    # given the starter package bought, and a 400-cent refund still pending when charge.refunded arrives
    buy_starter(probe, session_factory)
    pending = {**refund("re_slow", 400), "status": "pending", "payment_intent": "pi_acme_1"}
    stripe = FakeStripe([checkout_session()], {"ch_acme_1": [pending]})
    status = receive(session_factory, stripe, stripe_event("evt_ref", "charge.refunded", charge([pending])))

    # then nothing is taken yet: no money has moved
    assert status == PROCESSED
    assert probe.available("acme") == STARTER_MC

    # when the refund succeeds and Stripe says so with charge.refund.updated (delivered twice)
    settled = {**pending, "status": "succeeded"}
    stripe.refunds["ch_acme_1"] = [settled]
    first = receive(session_factory, stripe, stripe_event("evt_ref_upd", "charge.refund.updated", settled))
    again = receive(session_factory, stripe, stripe_event("evt_ref_upd2", "refund.updated", settled))

    # then its share is clawed back once
    assert (first, again) == (PROCESSED, PROCESSED)
    assert [e[1:] for e in entries(probe, "acme")[1:]] == [("refund:re_slow", "re_slow", -4_000_000)]
    probe.assert_consistent()


def test_refunds_settling_out_of_order_still_take_back_exactly_the_whole_purchase(session_factory, probe):
    # given 10,000 credits bought for 999 cents (a share of credits per cent is not whole), and three refunds:
    # re_a created first but still pending, re_b and re_c created later and succeeded
    session = checkout_session(amount_total=999)
    assert receive(session_factory, None, stripe_event("evt_buy", "checkout.session.completed", session)) == PROCESSED
    pending = {**refund("re_a", 333, created=1_700_000_100), "status": "pending", "payment_intent": "pi_acme_1"}
    later = [refund("re_b", 333, created=1_700_000_200), refund("re_c", 1, created=1_700_000_300)]
    stripe = FakeStripe([session], {"ch_acme_1": [pending, *later]})
    assert receive(session_factory, stripe, stripe_event("evt_r1", "charge.refunded", charge(later))) == PROCESSED

    # when re_a succeeds last, and then the rest of the payment is refunded
    stripe.refunds["ch_acme_1"] = [{**pending, "status": "succeeded"}, *later]
    settled = receive(session_factory, stripe, stripe_event("evt_r2", "refund.updated", stripe.refunds["ch_acme_1"][0]))
    rest = refund("re_d", 999 - 333 - 333 - 1, created=1_700_000_400)
    stripe.refunds["ch_acme_1"].append(rest)
    final = receive(
        session_factory, stripe, stripe_event("evt_r3", "charge.refunded", charge(stripe.refunds["ch_acme_1"]))
    )

    # then each share is the rounded running proportion (10,000,000 mc x refunded / 999), and together they
    # take back exactly the 10,000 credits: nothing left over, nothing overdrawn
    assert (settled, final) == (PROCESSED, PROCESSED)
    taken = {key: -amount for _, key, _, amount in entries(probe, "acme")[1:]}
    assert taken == {
        "refund:re_b": 3_333_333,  # 333 / 999
        "refund:re_c": 10_010,  # 334 / 999 -> 3,343,343
        "refund:re_a": 3_333_334,  # 667 / 999 -> 6,676,677
        "refund:re_d": 3_323_323,  # 999 / 999
    }
    assert sum(taken.values()) == STARTER_MC
    assert probe.available("acme") == 0 and purchase_grant(probe, "acme").remaining_mc == 0
    probe.assert_consistent()


def test_a_refund_that_failed_or_was_canceled_takes_nothing(session_factory, probe):
    buy_starter(probe, session_factory)
    for n, state in enumerate(("failed", "canceled", "pending")):
        obj = {**refund(f"re_{state}", 400), "status": state, "payment_intent": "pi_acme_1"}
        assert receive(session_factory, None, stripe_event(f"evt_r{n}", "refund.updated", obj)) == IGNORED
    assert probe.available("acme") == STARTER_MC
    assert entry_count(probe) == 1


def test_refund_before_its_purchase_waits_when_stripe_knows_no_paid_session(session_factory, probe):
    # given a refund whose purchase has not been credited, and Stripe finds no session for its payment
    refunds = [refund("re_a", 1_000)]
    gateway = FakeStripe([], {"ch_acme_1": refunds})
    deliver(session_factory, stripe_event("evt_early", "charge.refunded", charge(refunds)))
    before = probe.snapshot()

    # when its event is processed
    status = process_event(session_factory, gateway, "evt_early")

    # then it waits for a retry, says why, and writes nothing
    assert status == WAITING
    row = event_row(probe, "evt_early")
    assert (row.status, row.attempts) == (WAITING, 1)
    assert "pi_acme_1" in row.last_error
    assert row.later is True
    after = probe.snapshot()
    assert after["counts"] == before["counts"] and after["balances"] == before["balances"]


def test_refund_before_its_purchase_credits_the_purchase_from_stripe_then_claws_back(session_factory, probe):
    # given a refund event that waited once because Stripe did not show the session yet
    refunds = [refund("re_a", 333, created=1_700_000_100), refund("re_b", 667, created=1_700_000_200)]
    gateway = FakeStripe([], {"ch_acme_1": refunds})
    assert receive(session_factory, gateway, stripe_event("evt_early", "charge.refunded", charge(refunds))) == WAITING

    # when it is retried and Stripe now returns the paid session
    gateway.sessions["cs_test_acme_1"] = checkout_session()
    status = process_event(session_factory, gateway, "evt_early")

    # then the purchase and both clawbacks are applied in the one transaction
    assert status == PROCESSED
    row = event_row(probe, "evt_early")
    assert (row.status, row.attempts, row.last_error) == (PROCESSED, 2, None)
    assert entries(probe, "acme") == [
        ("purchase", "checkout:cs_test_acme_1", "pi_acme_1", STARTER_MC),
        ("clawback", "refund:re_a", "re_a", -3_330_000),
        ("clawback", "refund:re_b", "re_b", -6_670_000),
    ]
    assert probe.available("acme") == 0
    probe.assert_consistent()

    # when the purchase's own completion event arrives last
    late = stripe_event("evt_done_late", "checkout.session.completed", checkout_session())
    status = receive(session_factory, gateway, late)

    # then it finds the purchase already credited and adds nothing
    assert status == PROCESSED
    assert entry_count(probe) == 3
    assert probe.available("acme") == 0


# -- disputes ----------------------------------------------------------------------------------------------
def held(probe, account: str) -> int:
    view = probe.wallet(account)
    assert view is not None
    return view.held_mc


def test_dispute_created_holds_the_disputed_share_back(session_factory, probe):
    # given the starter package bought
    buy_starter(probe, session_factory)

    # when a dispute over 250 of its 1,000 cents is opened
    status = receive(session_factory, None, stripe_event("evt_dp_open", "charge.dispute.created", dispute(amount=250)))

    # then a quarter of the credits is held back (not spendable, not gone), keyed by the dispute
    assert status == PROCESSED
    assert entries(probe, "acme")[1:] == [("dispute_hold", "dispute:dp_acme_1", "dp_acme_1", -2_500_000)]
    assert probe.available("acme") == STARTER_MC - 2_500_000
    assert held(probe, "acme") == 2_500_000
    assert purchase_grant(probe, "acme").remaining_mc == STARTER_MC - 2_500_000
    assert probe.system("refunds") == 0
    assert probe.rows("SELECT status, held_mc, disputed_mc FROM disputes") == [("open", 2_500_000, 2_500_000)]
    probe.assert_consistent()


def test_dispute_won_gives_the_held_credits_back(session_factory, probe):
    # given the starter package bought and a dispute over 250 cents opened
    buy_starter(probe, session_factory)
    receive(session_factory, None, stripe_event("evt_dp_open", "charge.dispute.created", dispute(amount=250)))

    # when the dispute closes won
    closed = stripe_event("evt_dp_won", "charge.dispute.closed", dispute(amount=250, status="won"))
    status = receive(session_factory, None, closed)

    # then the held credits go back to the purchase's grant, once
    assert status == PROCESSED
    assert entries(probe, "acme")[1:] == [
        ("dispute_hold", "dispute:dp_acme_1", "dp_acme_1", -2_500_000),
        ("dispute_release", "dispute_won:dp_acme_1", "dp_acme_1", 2_500_000),
    ]
    assert probe.available("acme") == STARTER_MC
    assert held(probe, "acme") == 0
    assert purchase_grant(probe, "acme").remaining_mc == STARTER_MC
    probe.assert_consistent()

    # when the closed event is handled again under another id, and funds_reinstated comes too
    again = receive(
        session_factory, None, stripe_event("evt_dp_won_2", "charge.dispute.closed", closed["data"]["object"])
    )
    reinstated = stripe_event("evt_dp_back", "charge.dispute.funds_reinstated", closed["data"]["object"])
    assert receive(session_factory, None, reinstated) == PROCESSED

    # then nothing changes
    assert again == PROCESSED
    assert entry_count(probe) == 3
    assert probe.available("acme") == STARTER_MC


def test_dispute_lost_takes_the_held_credits(session_factory, probe):
    # given the starter package bought and a dispute over 250 cents opened
    buy_starter(probe, session_factory)
    receive(session_factory, None, stripe_event("evt_dp_open", "charge.dispute.created", dispute(amount=250)))

    # when the dispute closes lost
    status = receive(
        session_factory, None, stripe_event("evt_dp_lost", "charge.dispute.closed", dispute(amount=250, status="lost"))
    )

    # then the held credits leave the wallet, once, to the refunds account
    assert status == PROCESSED
    assert [e[1] for e in entries(probe, "acme")] == ["checkout:cs_test_acme_1", "dispute:dp_acme_1"]
    assert (
        probe.scalar("SELECT kind FROM ledger_entries WHERE idempotency_key = 'dispute_lost:dp_acme_1'") == "clawback"
    )
    assert probe.available("acme") == STARTER_MC - 2_500_000
    assert held(probe, "acme") == 0
    assert probe.system("refunds") == 2_500_000
    probe.assert_consistent()


@pytest.mark.parametrize(
    ("outcome", "expected_keys", "expected_mc"),
    [
        ("lost", ["checkout:cs_test_acme_1", "dispute_lost:dp_acme_1"], STARTER_MC - 2_500_000),
        ("won", ["checkout:cs_test_acme_1"], STARTER_MC),
    ],
)
def test_dispute_closed_without_its_created_event_settles_from_nothing(
    session_factory, probe, outcome, expected_keys, expected_mc
):
    # given the starter package bought, and the dispute's created event not received (yet)
    buy_starter(probe, session_factory)

    # when only its closed event arrives
    closed = dispute(amount=250, status=outcome)
    status = receive(session_factory, None, stripe_event("evt_dp_closed", "charge.dispute.closed", closed))

    # then lost takes the share at once, won takes nothing
    assert status == PROCESSED
    assert [e[1] for e in entries(probe, "acme")] == expected_keys
    assert probe.available("acme") == expected_mc
    probe.assert_consistent()

    # and its created event arriving late holds nothing
    late = stripe_event("evt_dp_late", "charge.dispute.created", dispute(amount=250))
    assert receive(session_factory, None, late) == PROCESSED
    assert [e[1] for e in entries(probe, "acme")] == expected_keys
    assert probe.available("acme") == expected_mc
    assert held(probe, "acme") == 0
    probe.assert_consistent()


def test_dispute_of_spent_credits_holds_what_is_left_and_a_loss_leaves_the_wallet_negative(session_factory, probe):
    # given the starter package bought and 8,000 of its 10,000 credits spent
    buy_starter(probe, session_factory)
    probe.run(DebitUsage("acme", 8_000_000, "usage:spent"))
    assert probe.wallet("acme").flagged is False

    # when the whole payment is disputed
    status = receive(session_factory, None, stripe_event("evt_dp_all", "charge.dispute.created", dispute(amount=1_000)))

    # then the 2,000 credits left are held, and the 8,000 spent are the shortfall
    assert status == PROCESSED
    assert entries(probe, "acme")[-1] == ("dispute_hold", "dispute:dp_acme_1", "dp_acme_1", -2_000_000)
    assert (probe.available("acme"), held(probe, "acme")) == (0, 2_000_000)
    assert probe.rows("SELECT held_mc, disputed_mc FROM disputes") == [(2_000_000, STARTER_MC)]
    assert probe.wallet("acme").flagged is False

    # when the dispute is lost
    lost = stripe_event("evt_dp_lost", "charge.dispute.closed", dispute(amount=1_000, status="lost"))
    assert receive(session_factory, None, lost) == PROCESSED

    # then all 10,000 credits are clawed back, leaving 8,000 owed, and the wallet is flagged
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.held_mc) == (-8_000_000, 0)
    assert wallet.flagged is True
    assert probe.scalar("SELECT negative_since IS NOT NULL FROM wallets WHERE account = 'acme'") is True
    assert purchase_grant(probe, "acme").remaining_mc == 0
    debt = [g for g in probe.grants("acme") if g.source == "debt"]
    assert len(debt) == 1 and debt[0].remaining_mc == -8_000_000
    assert probe.system("refunds") == STARTER_MC
    probe.assert_consistent()


def inquiry(status: str = "warning_needs_response", *, amount: int = STARTER_CENTS) -> dict[str, Any]:
    """Stripe's own dispute fixture is an inquiry (case_type inquiry): a question before any chargeback."""
    obj = dispute(amount=amount, status=status)
    assert obj["payment_method_details"]["card"]["case_type"] == "inquiry"
    return obj


def test_inquiry_answered_with_a_full_refund_takes_the_credits_back_once(session_factory, probe):
    # given the starter package bought, and the card issuer opening an inquiry about it (no funds withdrawn)
    buy_starter(probe, session_factory)
    receive(session_factory, None, stripe_event("evt_inq_open", "charge.dispute.created", inquiry()))

    # when the merchant settles the inquiry as Stripe advises: refunding the payment in full
    refunds = [refund("re_all", STARTER_CENTS)]
    status = receive(session_factory, None, stripe_event("evt_refunded", "charge.refunded", charge(refunds)))

    # then the customer, refunded 1,000 cents once, loses the 10,000 credits once and owes nothing
    assert status == PROCESSED
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.flagged) == (0, False)
    assert probe.system("refunds") == STARTER_MC
    probe.assert_consistent()


def test_inquiry_closed_without_a_chargeback_leaves_the_credits(session_factory, probe):
    # given the starter package bought, and an inquiry opened about it (no funds withdrawn)
    buy_starter(probe, session_factory)
    receive(session_factory, None, stripe_event("evt_inq_open", "charge.dispute.created", inquiry()))

    # when the inquiry closes without becoming a chargeback
    closed = stripe_event("evt_inq_closed", "charge.dispute.closed", inquiry("warning_closed"))
    status = receive(session_factory, None, closed)

    # then the customer, who paid and was never charged back, has the whole package
    assert status == PROCESSED
    assert probe.available("acme") == STARTER_MC
    probe.assert_consistent()


# -- customers ---------------------------------------------------------------------------------------------
def test_customer_created_links_and_deleted_unlinks_the_wallet(session_factory, probe):
    # when a customer naming our account is created in Stripe
    created = customer(email="billing@acme.example")
    status = receive(session_factory, None, stripe_event("evt_cus_new", "customer.created", created))

    # then the account's wallet is linked to it
    assert status == PROCESSED
    assert probe.rows("SELECT account, stripe_customer_id, email FROM wallets") == [
        ("acme", "cus_acme", "billing@acme.example")
    ]

    # when the customer is deleted
    status = receive(session_factory, None, stripe_event("evt_cus_gone", "customer.deleted", created))

    # then the wallet is unlinked and kept
    assert status == PROCESSED
    assert probe.rows("SELECT account, stripe_customer_id FROM wallets") == [("acme", None)]


def test_customer_repointed_to_another_account_leaves_the_first(session_factory, probe):
    # given a customer linked to acme
    receive(session_factory, None, stripe_event("evt_cus_new", "customer.created", customer()))

    # when Stripe's customer is updated to name another account
    status = receive(session_factory, None, stripe_event("evt_cus_upd", "customer.updated", customer(account="globex")))

    # then only the new account is linked to it
    assert status == PROCESSED
    assert probe.rows("SELECT account, stripe_customer_id FROM wallets ORDER BY account") == [
        ("acme", None),
        ("globex", "cus_acme"),
    ]


def test_customer_without_our_metadata_is_ignored(session_factory, probe):
    # when a customer created by someone else arrives
    status = receive(session_factory, None, stripe_event("evt_cus_x", "customer.created", customer(account=None)))

    # then it is ignored and no wallet appears
    assert status == IGNORED
    assert event_row(probe, "evt_cus_x").status == IGNORED
    assert probe.scalar("SELECT count(*) FROM wallets") == 0


# -- processing: unknown, failing, dead, due ---------------------------------------------------------------
def test_unknown_event_type_is_ignored(session_factory, probe):
    # given Stripe's own fixture event (a plan.created we have no handler for)
    event = stripe_object("event")

    # when it is stored and processed
    status = receive(session_factory, None, event)

    # then it is ignored and nothing is written
    assert status == IGNORED
    row = event_row(probe, event["id"])
    assert (row.status, row.attempts, row.last_error) == (IGNORED, 1, None)
    assert entry_count(probe) == 0


def test_unexpected_error_marks_the_event_failed_and_leaves_the_ledger(session_factory, probe):
    # given a completion event and a Stripe client that breaks
    buy_starter(probe, session_factory)
    event = stripe_event("evt_boom", "checkout.session.completed", checkout_session("cs_test_acme_2"))
    deliver(session_factory, event)
    before = probe.snapshot()

    # when it is processed
    status = process_event(session_factory, BrokenStripe(), "evt_boom")

    # then it is failed with the error, due again later, and the ledger is untouched
    assert status == FAILED
    row = event_row(probe, "evt_boom")
    assert (row.status, row.attempts) == (FAILED, 1)
    assert row.last_error == "RuntimeError: stripe client exploded"
    assert row.later is True
    assert row.processed_at is None
    assert probe.snapshot() == before


def test_event_failing_max_attempts_times_is_dead_listed_and_replayable(session_factory, probe):
    # given an event whose handling fails every time
    session = checkout_session()
    deliver(session_factory, stripe_event("evt_dead", "checkout.session.completed", session))
    statuses = [process_event(session_factory, BrokenStripe(), "evt_dead") for _ in range(MAX_ATTEMPTS)]

    # then it is failed until the last allowed attempt, then dead, and no longer retried
    assert statuses == [FAILED] * (MAX_ATTEMPTS - 1) + [DEAD]
    assert process_event(session_factory, BrokenStripe(), "evt_dead") == DEAD
    row = event_row(probe, "evt_dead")
    assert (row.status, row.attempts) == (DEAD, MAX_ATTEMPTS)
    assert "evt_dead" not in due_events(session_factory).retries
    assert entry_count(probe) == 0

    # and an operator sees it among the dead letters
    letters = dead_letters.list_dead(session_factory)
    assert [(d.id, d.kind, d.attempts, d.error) for d in letters] == [
        ("evt_dead", "checkout.session.completed", MAX_ATTEMPTS, "RuntimeError: stripe client exploded")
    ]

    # when it is replayed with a working Stripe client
    result = dead_letters.replay(session_factory, FakeStripe([session]), "evt_dead")

    # then it is processed, the package credited, and it is no longer dead
    assert result == PROCESSED
    row = event_row(probe, "evt_dead")
    assert (row.status, row.attempts, row.last_error) == (PROCESSED, 1, None)
    assert probe.available("acme") == STARTER_MC
    assert dead_letters.list_dead(session_factory) == []
    assert dead_letters.replay(session_factory, FakeStripe([session]), "evt_dead") is None
    probe.assert_consistent()


def test_an_event_whose_own_data_is_refused_goes_to_the_dead_letters_at_once(session_factory, probe):
    # given a customer whose metadata names an account we would never accept
    deliver(session_factory, stripe_event("evt_bad_acct", "customer.created", customer(account="not an account!")))

    # when it is processed
    status = process_event(session_factory, None, "evt_bad_acct")

    # then it is dead after one attempt (retrying cannot change its data), listed with the reason
    assert status == DEAD
    row = event_row(probe, "evt_bad_acct")
    assert (row.status, row.attempts) == (DEAD, 1)
    assert row.last_error.startswith("InvalidCommand: account must be")
    assert [d.id for d in dead_letters.list_dead(session_factory)] == ["evt_bad_acct"]
    assert probe.scalar("SELECT count(*) FROM wallets") == 0


@pytest.mark.parametrize(
    ("credits", "account", "error"),
    [
        ("-5", "acme", "InvalidAmount"),
        ("0", "acme", "InvalidAmount"),
        ("1.2345", "acme", "InvalidAmount"),
        ("10000", "../etc", "InvalidCommand"),
    ],
)
def test_a_paid_session_whose_metadata_we_never_sell_credits_nothing(session_factory, probe, credits, account, error):
    # given a paid Checkout Session whose metadata (editable by anyone with the Stripe key) holds a bad amount
    # or account: commands trust validated input, so what comes from Stripe must be validated on the way in
    session = checkout_session("cs_test_bad", account=account, credits=credits)
    deliver(session_factory, stripe_event("evt_bad_meta", "checkout.session.completed", session))

    # when it is processed
    status = process_event(session_factory, None, "evt_bad_meta")

    # then it is dead at once with the reason, and nothing reached the ledger
    assert status == DEAD
    assert event_row(probe, "evt_bad_meta").last_error.startswith(error)
    assert probe.scalar("SELECT count(*) FROM ledger_entries") == 0
    assert probe.scalar("SELECT count(*) FROM wallets") == 0


def test_due_events_lists_failed_events_once_their_retry_time_has_come(session_factory, probe):
    # given a failed and a waiting event (retries in the future), a processed one and a freshly received one
    deliver(session_factory, stripe_event("evt_failed", "checkout.session.completed", checkout_session()))
    assert process_event(session_factory, BrokenStripe(), "evt_failed") == FAILED
    receive(session_factory, None, stripe_event("evt_done", "customer.created", customer()))
    deliver(session_factory, stripe_event("evt_fresh", "customer.created", customer("cus_other", account="globex")))
    early = stripe_event("evt_waiting", "charge.refunded", charge([refund("re_a", 100)], payment_intent="pi_unknown"))
    assert receive(session_factory, None, early) == WAITING

    # then none is due yet
    assert due_events(session_factory) == DueEvents([], 0)

    # when the failed and the waiting events' retry times pass
    execute_sql(
        session_factory,
        "UPDATE stripe_events SET next_attempt_at = now() - interval '1 second' "
        "WHERE id IN ('evt_failed', 'evt_waiting')",
    )

    # then those two alone are due, each for a retry of its own
    assert sorted(due_events(session_factory).retries) == ["evt_failed", "evt_waiting"]

    # when the fresh event has waited past the staleness limit (its message was lost)
    execute_sql(
        session_factory, "UPDATE stripe_events SET received_at = now() - interval '1 minute' WHERE id = 'evt_fresh'"
    )

    # then it is counted for a drain, not given a message of its own
    due = due_events(session_factory)
    assert due.stale_pending == 1 and "evt_fresh" not in due.retries


# -- draining in batches ------------------------------------------------------------------------------------
def test_a_drain_handles_pending_events_in_one_batch_oldest_first(session_factory, probe):
    # given a purchase, two customers and an event type without a handler, all stored and pending
    session = checkout_session()
    deliver(session_factory, stripe_event("evt_buy", "checkout.session.completed", session))
    deliver(session_factory, stripe_event("evt_cus_a", "customer.created", customer()))
    deliver(session_factory, stripe_event("evt_cus_b", "customer.created", customer("cus_globex", account="globex")))
    deliver(session_factory, stripe_object("event"))  # plan.created

    # when a drain takes them with room to spare
    result = process_pending(session_factory, FakeStripe([session]), limit=10)

    # then each is handled once, as process_event would have, and the drain reports no more work
    assert (result.claimed, result.more) == (4, False)
    assert result.outcomes == {PROCESSED: 3, IGNORED: 1}
    assert probe.available("acme") == STARTER_MC
    assert probe.rows("SELECT account, stripe_customer_id FROM wallets ORDER BY account") == [
        ("acme", "cus_acme"),
        ("globex", "cus_globex"),
    ]
    rows = probe.rows("SELECT status, attempts, last_error IS NULL AS clean FROM stripe_events ORDER BY id")
    assert sorted(tuple(r) for r in rows) == [(IGNORED, 1, True)] + [(PROCESSED, 1, True)] * 3
    # and a second drain finds nothing
    assert process_pending(session_factory, FakeStripe([session])).claimed == 0
    probe.assert_consistent()


def test_a_full_batch_says_there_is_more_and_leaves_the_rest_pending(session_factory, probe):
    for n in range(5):
        deliver(session_factory, stripe_event(f"evt_c{n}", "customer.created", customer(f"cus_{n}", account=f"a{n}")))

    first = process_pending(session_factory, None, limit=3)

    assert (first.claimed, first.more) == (3, True)
    assert probe.scalar("SELECT count(*) FROM stripe_events WHERE status = 'pending'") == 2
    assert process_pending(session_factory, None, limit=3).claimed == 2


def test_an_event_that_waits_in_a_batch_waits_alone_while_the_others_are_handled(session_factory, probe):
    # given a paid purchase, a refund for a purchase nobody knows, and a customer, all pending
    session = checkout_session()
    deliver(session_factory, stripe_event("evt_buy", "checkout.session.completed", session))
    early = charge([refund("re_a", 100)], payment_intent="pi_unknown", charge_id="ch_unknown")
    deliver(session_factory, stripe_event("evt_early", "charge.refunded", early))
    deliver(session_factory, stripe_event("evt_cus", "customer.created", customer()))

    # when a drain takes all three
    result = process_pending(session_factory, FakeStripe([session]), limit=10)

    # then the batch falls back to one transaction per event: two handled, the refund waits with its reason
    assert result.claimed == 3 and result.outcomes == {PROCESSED: 2, WAITING: 1}
    assert probe.available("acme") == STARTER_MC
    assert event_row(probe, "evt_early").status == WAITING
    assert "pi_unknown" in event_row(probe, "evt_early").last_error
    assert {event_row(probe, e).status for e in ("evt_buy", "evt_cus")} == {PROCESSED}
    assert entry_count(probe) == 1
    probe.assert_consistent()


# -- storing -----------------------------------------------------------------------------------------------
def _without(path: str) -> dict[str, Any]:
    event = stripe_event("evt_x", "customer.created", customer())
    if path == "data.object":
        event["data"]["object"] = "cus_acme"
    else:
        event.pop(path)
    return event


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_without("id"), "id"),
        ({**stripe_event("evt_x", "customer.created", customer()), "id": ""}, "id"),
        (_without("type"), "type"),
        (_without("data"), "data.object"),
        (_without("data.object"), "data.object"),
        (["not", "an", "object"], None),
    ],
    ids=["no-id", "empty-id", "no-type", "no-data", "object-not-a-dict", "not-a-dict"],
)
def test_check_event_refuses_payloads_without_id_type_or_object(payload, field):
    # when a payload missing a required part is checked
    with pytest.raises(MalformedEvent) as refused:
        check_event(payload)

    # then it is refused as malformed, naming the part
    assert refused.value.code == "malformed_payload"
    assert refused.value.details.get("field") == field


def test_check_event_accepts_stripes_own_event():
    event = stripe_object("event")
    assert check_event(event) is event


def test_inquiry_escalated_to_a_chargeback_takes_the_credits_back_when_funds_are_withdrawn(session_factory, probe):
    # given the starter package bought, and an inquiry opened about it
    buy_starter(probe, session_factory)
    receive(session_factory, None, stripe_event("evt_inq_open", "charge.dispute.created", inquiry()))
    assert probe.available("acme") == STARTER_MC

    # when it escalates and Stripe withdraws the funds
    escalated = inquiry(status="needs_response")
    receive(session_factory, None, stripe_event("evt_withdrawn", "charge.dispute.funds_withdrawn", escalated))

    # then the credits are held back, and a lost close takes them once
    assert probe.available("acme") == 0
    assert held(probe, "acme") == STARTER_MC
    lost = inquiry(status="lost")
    receive(session_factory, None, stripe_event("evt_lost", "charge.dispute.closed", lost))
    assert probe.available("acme") == 0
    assert probe.scalar("SELECT count(*) FROM ledger_entries WHERE kind = 'clawback'") == 1
    probe.assert_consistent()


# -- no network call under row locks -----------------------------------------------------------------------
class HangingStripe(FakeStripe):
    """Stripe that, asked for a Checkout Session, hangs until the test releases it."""

    def __init__(self, sessions: list[dict[str, Any]]):
        super().__init__(sessions)
        self.entered, self.release = threading.Event(), threading.Event()

    def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        self.entered.set()
        assert self.release.wait(timeout=60), "the test never released Stripe"
        return super().retrieve_checkout_session(session_id)


def test_a_debit_completes_while_a_drain_waits_on_stripe_for_the_same_wallet(session_factory, probe):
    # given acme's wallet funded, then a batch touching it: a customer update (it locks the wallet) and a
    # second purchase whose Checkout Session must be read from a Stripe that hangs
    buy_starter(probe, session_factory)
    second = checkout_session("cs_test_acme_2", payment_intent="pi_acme_2")
    deliver(session_factory, stripe_event("evt_cus_upd", "customer.updated", customer()))
    deliver(session_factory, stripe_event("evt_buy_2", "checkout.session.completed", second))
    stripe = HangingStripe([second])
    drained: dict[str, Any] = {}
    drain = threading.Thread(
        target=lambda: drained.setdefault("result", process_pending(session_factory, stripe)), daemon=True
    )

    try:
        # when the drain is inside the Stripe call
        drain.start()
        assert stripe.entered.wait(timeout=30), "the drain never asked Stripe"

        # then a debit on the same wallet, refusing to wait for locks, commits
        with UnitOfWork(session_factory) as uow:
            uow.session.execute(text("SET LOCAL lock_timeout = '2s'"))
            debit_usage(uow.book, DebitUsage("acme", 1_000_000, "usage:during-stripe"))
            uow.commit()
        # and the waiting event's inbox row is not held either
        with session_factory() as s, s.begin():
            s.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert s.execute(text("SELECT status FROM stripe_events WHERE id = 'evt_buy_2' FOR UPDATE")).scalar() == (
                "pending"
            )
    finally:
        stripe.release.set()
        drain.join(timeout=60)

    # when Stripe answers, the purchase is credited once, after the debit, and both events are processed
    assert not drain.is_alive()
    assert drained["result"].outcomes == {PROCESSED: 2}
    assert [e[1] for e in entries(probe, "acme")] == [
        "checkout:cs_test_acme_1",
        "usage:during-stripe",
        "checkout:cs_test_acme_2",
    ]
    assert probe.available("acme") == 2 * STARTER_MC - 1_000_000
    assert {event_row(probe, e).status for e in ("evt_cus_upd", "evt_buy_2")} == {PROCESSED}
    probe.assert_consistent()


def test_an_event_handled_alone_reads_stripe_before_it_locks_its_row(session_factory, probe):
    # given a purchase whose Checkout Session must be read from a Stripe that hangs
    session = checkout_session()
    deliver(session_factory, stripe_event("evt_alone", "checkout.session.completed", session))
    stripe = HangingStripe([session])
    handled: dict[str, str] = {}
    worker = threading.Thread(
        target=lambda: handled.setdefault("status", process_event(session_factory, stripe, "evt_alone")), daemon=True
    )
    try:
        # when the event is inside the Stripe call
        worker.start()
        assert stripe.entered.wait(timeout=30), "the event never asked Stripe"
        # then its inbox row can be locked at once by someone else
        with session_factory() as s, s.begin():
            s.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert s.execute(text("SELECT status FROM stripe_events WHERE id = 'evt_alone' FOR UPDATE")).scalar() == (
                "pending"
            )
    finally:
        stripe.release.set()
        worker.join(timeout=60)
    assert handled["status"] == PROCESSED
    assert probe.available("acme") == STARTER_MC


def test_an_event_another_worker_handled_while_stripe_was_read_is_not_applied_twice(session_factory, probe):
    # given a purchase event being read from a hanging Stripe by one drain
    session = checkout_session()
    deliver(session_factory, stripe_event("evt_race", "checkout.session.completed", session))
    stripe = HangingStripe([session])
    drained: dict[str, Any] = {}
    drain = threading.Thread(
        target=lambda: drained.setdefault("result", process_pending(session_factory, stripe)), daemon=True
    )
    try:
        drain.start()
        assert stripe.entered.wait(timeout=30), "the drain never asked Stripe"
        # when another worker handles the same event meanwhile
        assert process_event(session_factory, FakeStripe([session]), "evt_race") == PROCESSED
    finally:
        stripe.release.set()
        drain.join(timeout=60)

    # then the first drain skips it: credited once, one attempt
    assert drained["result"].claimed == 1 and sum(drained["result"].outcomes.values()) == 0
    assert event_row(probe, "evt_race").attempts == 1
    assert entries(probe, "acme") == [("purchase", "checkout:cs_test_acme_1", "pi_acme_1", STARTER_MC)]
