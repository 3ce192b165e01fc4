"""The emulator's subscriptions, invoices, test clocks, saved cards and off-session payments, driven as the
project drives Stripe: ``StripeGateway`` (the real SDK over real HTTP) and plain HTTP for ``/_emulator/``.

No PostgreSQL or Redis: every test starts its own emulator. Time moves only through test clocks, so every
expected timestamp is computed from the clock's frozen time; nothing sleeps.
"""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest

from billing_core.stripe.gateway import StripeGateway
from stripe_emulator import run_in_thread
from tests.integration.test_stripe_emulator import API_KEY, Emulator, all_plain

DAY = 24 * 3600
START = int(datetime(2026, 1, 31, 12, 0, tzinfo=UTC).timestamp())  # a month end: later months clamp to theirs


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    base, stop = run_in_thread()
    try:
        yield Emulator(base)
    finally:
        stop()


@pytest.fixture
def gateway(emulator: Emulator) -> StripeGateway:
    return StripeGateway(API_KEY, api_base=emulator.base)


def recurring_price(emulator: Emulator, amount: int, name: str = "Pro", interval: str = "month") -> dict[str, Any]:
    response = emulator.api(
        "POST",
        "/v1/prices",
        data={
            "currency": "usd",
            "unit_amount": amount,
            "recurring[interval]": interval,
            "product_data[name]": name,
        },
    )
    assert response.status_code == 200, response.text
    price: dict[str, Any] = response.json()
    return price


def subscribe(
    gateway: StripeGateway,
    emulator: Emulator,
    *,
    amount: int = 1000,
    clock: dict[str, Any] | None = None,
    trial_days: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A customer (on ``clock``) subscribed through a paid Checkout Session: ``(session, subscription)``."""
    price = recurring_price(emulator, amount)
    customer = gateway.create_customer(
        account="user_7", email="sub@example.com", test_clock=clock["id"] if clock else None
    )
    session = gateway.create_subscription_checkout_session(
        customer=customer["id"],
        price=price["id"],
        success_url="https://app.example/ok",
        cancel_url="https://app.example/cancel",
        client_reference_id="user_7",
        metadata={"account": "user_7"},
        subscription_metadata={"account": "user_7", "plan": "pro"},
        trial_period_days=trial_days,
        idempotency_key=f"sub-checkout-{customer['id']}",
    )
    emulator.control(f"checkout/sessions/{session['id']}/pay")
    paid = gateway.retrieve_checkout_session(session["id"])
    return paid, gateway.retrieve_subscription(paid["subscription"])


def event_types(gateway: StripeGateway, **filters: Any) -> list[str]:
    """Every event type, oldest first."""
    return [e["type"] for e in reversed(list(gateway.iter_events(**filters)))]


def events_about(gateway: StripeGateway, object_id: str, *types: str) -> list[dict[str, Any]]:
    """Events (oldest first) whose object is ``object_id``."""
    return [
        e
        for e in reversed(list(gateway.iter_events(types=list(types) or None)))
        if e["data"]["object"]["id"] == object_id
    ]


def all_invoices(gateway: StripeGateway, subscription: str) -> list[dict[str, Any]]:
    invoices: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = gateway.list_invoices(subscription=subscription, limit=5, starting_after=after)
        invoices += page["data"]
        if not page["has_more"]:
            return invoices
        after = page["data"][-1]["id"]


def add_months(ts: int, months: int) -> int:
    start = datetime.fromtimestamp(ts, UTC)
    year, month = divmod(start.month - 1 + months, 12)
    day = min(start.day, calendar.monthrange(start.year + year, month + 1)[1])
    return int(start.replace(year=start.year + year, month=month + 1, day=day).timestamp())


# -- checkout ------------------------------------------------------------------------------------------------------


def test_subscription_checkout_paid_starts_a_subscription_with_a_paid_invoice(
    gateway: StripeGateway, emulator: Emulator
) -> None:
    # given a customer and a monthly price, when the buyer pays a subscription-mode session
    session, sub = subscribe(gateway, emulator, amount=1500)

    # then the session is complete and names the subscription
    assert (session["mode"], session["status"], session["payment_status"]) == ("subscription", "complete", "paid")
    assert session["subscription"] == sub["id"] and session["client_reference_id"] == "user_7"
    assert session["metadata"] == {"account": "user_7"}

    # and the subscription is active for a month, with the card saved as the customer's default
    assert sub["id"].startswith("sub_") and sub["object"] == "subscription" and all_plain(sub)
    assert (sub["status"], sub["cancel_at_period_end"], sub["customer"]) == ("active", False, session["customer"])
    assert sub["metadata"] == {"account": "user_7", "plan": "pro"}
    [item] = sub["items"]["data"]
    assert item["price"]["unit_amount"] == 1500 and item["price"]["type"] == "recurring"
    assert item["price"]["recurring"]["interval"] == "month"
    assert (item["current_period_start"], item["current_period_end"]) == (
        sub["current_period_start"],
        sub["current_period_end"],
    )
    assert sub["current_period_end"] == add_months(sub["current_period_start"], 1)
    customer = gateway.retrieve_customer(sub["customer"])
    method = customer["invoice_settings"]["default_payment_method"]
    assert method.startswith("pm_")

    # and its first invoice is paid by a charge of the full amount
    invoice = gateway.retrieve_invoice(sub["latest_invoice"])
    assert invoice["id"].startswith("in_") and invoice["billing_reason"] == "subscription_create"
    assert (invoice["status"], invoice["amount_due"], invoice["amount_paid"]) == ("paid", 1500, 1500)
    assert invoice["subscription"] == sub["id"] and invoice["customer"] == sub["customer"]
    assert invoice["parent"]["subscription_details"]["subscription"] == sub["id"]
    assert invoice["number"].endswith("-0001") and invoice["hosted_invoice_url"].startswith(emulator.base)
    [line] = invoice["lines"]["data"]
    assert line["price"]["id"] == item["price"]["id"] and line["amount"] == 1500
    assert line["period"] == {"start": sub["current_period_start"], "end": sub["current_period_end"]}
    payment_intent = gateway.retrieve_payment_intent(invoice["payment_intent"])
    assert (payment_intent["status"], payment_intent["amount"]) == ("succeeded", 1500)
    assert payment_intent["payment_method"] == method
    assert gateway.retrieve_charge(payment_intent["latest_charge"])["paid"] is True
    lines = emulator.api("GET", f"/v1/invoices/{invoice['id']}/lines").json()
    assert [x["id"] for x in lines["data"]] == [line["id"]]

    # and the events come in the documented order
    types = [t for t in event_types(gateway) if not t.startswith(("product.", "price.", "customer.created"))]
    assert types == [
        "payment_method.attached",
        "customer.updated",
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "payment_intent.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ]
    assert [s["id"] for s in gateway.list_subscriptions(customer=sub["customer"])] == [sub["id"]]


def test_subscription_mode_refuses_a_one_time_price(emulator: Emulator) -> None:
    one_time = emulator.api(
        "POST", "/v1/prices", data={"currency": "usd", "unit_amount": 500, "product_data[name]": "Pack"}
    ).json()
    response = emulator.api(
        "POST",
        "/v1/checkout/sessions",
        data={"mode": "subscription", "line_items[0][price]": one_time["id"], "success_url": "https://x"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "line_items[0][price]"


# -- renewals ------------------------------------------------------------------------------------------------------


def test_a_year_of_monthly_renewals_on_a_test_clock(gateway: StripeGateway, emulator: Emulator) -> None:
    # given a monthly subscription on a test clock
    clock = gateway.create_test_clock(START, name="a year")
    assert (clock["object"], clock["status"], clock["frozen_time"]) == ("test_helpers.test_clock", "ready", START)
    _, sub = subscribe(gateway, emulator, clock=clock)
    assert sub["test_clock"] == clock["id"] and sub["current_period_start"] == START

    # when a year passes
    year_later = add_months(START, 12)
    advanced = gateway.advance_test_clock(clock["id"], year_later)

    # then twelve renewals were billed, each for the month that follows it, back to back
    assert (advanced["status"], advanced["frozen_time"]) == ("ready", year_later)
    assert gateway.retrieve_test_clock(clock["id"])["frozen_time"] == year_later
    invoices = list(reversed(all_invoices(gateway, sub["id"])))
    assert [i["billing_reason"] for i in invoices] == ["subscription_create"] + ["subscription_cycle"] * 12
    assert all(i["status"] == "paid" and i["amount_paid"] == 1000 for i in invoices)
    periods = [i["lines"]["data"][0]["period"] for i in invoices]
    assert periods[0]["start"] == START
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(periods))
    assert [p["start"] for p in periods] == [add_months(START, n) for n in range(13)]
    assert datetime.fromtimestamp(periods[1]["start"], UTC).day == 28  # Jan 31 -> Feb 28 -> Mar 31
    assert datetime.fromtimestamp(periods[2]["start"], UTC).day == 31
    assert [i["created"] for i in invoices[1:]] == [p["start"] for p in periods[1:]]  # billed when due
    assert len({i["number"] for i in invoices}) == 13
    renewed = gateway.retrieve_subscription(sub["id"])
    assert renewed["status"] == "active" and renewed["latest_invoice"] == invoices[-1]["id"]
    assert renewed["current_period_start"] == year_later

    # and each renewal's events happened at the clock's time, the subscription update last
    updated = events_about(gateway, sub["id"], "customer.subscription.updated")
    assert [e["created"] for e in updated] == [p["start"] for p in periods[1:]]
    assert updated[0]["data"]["previous_attributes"]["current_period_start"] == START
    renewal = [
        e["type"]
        for e in reversed(list(gateway.iter_events()))
        if e["created"] == periods[1]["start"] and not e["type"].startswith("test_helpers")
    ]
    assert renewal == [
        "invoice.created",
        "invoice.finalized",
        "payment_intent.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
    ]


def test_a_failed_renewal_is_retried_and_recovers_once_the_card_works(
    gateway: StripeGateway, emulator: Emulator
) -> None:
    # given a subscription whose saved card starts declining
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, clock=clock)
    emulator.control(f"customers/{sub['customer']}/card", outcome="card_declined")
    renewal = sub["current_period_end"]

    # when the renewal comes
    gateway.advance_test_clock(clock["id"], renewal + 3600)

    # then the invoice is open, the subscription past due, and a retry is scheduled three days on
    failing = gateway.retrieve_invoice(gateway.retrieve_subscription(sub["id"])["latest_invoice"])
    assert (failing["status"], failing["attempt_count"], failing["next_payment_attempt"]) == (
        "open",
        1,
        renewal + 3 * DAY,
    )
    assert gateway.retrieve_subscription(sub["id"])["status"] == "past_due"
    [failed] = events_about(gateway, failing["id"], "invoice.payment_failed")
    assert failed["created"] == renewal
    payment_intent = gateway.retrieve_payment_intent(failing["payment_intent"])
    assert payment_intent["last_payment_error"]["code"] == "card_declined"
    [past_due] = [
        e
        for e in events_about(gateway, sub["id"], "customer.subscription.updated")
        if e["data"]["object"]["status"] == "past_due"
    ]
    assert past_due["data"]["previous_attributes"]["status"] == "active"

    # when the card is fixed and the retry comes
    emulator.control(f"customers/{sub['customer']}/card", outcome="succeed")
    gateway.advance_test_clock(clock["id"], renewal + 3 * DAY + 60)

    # then the invoice is paid by that retry and the subscription is active again
    paid = gateway.retrieve_invoice(failing["id"])
    assert (paid["status"], paid["attempt_count"], paid["next_payment_attempt"]) == ("paid", 2, None)
    assert paid["status_transitions"]["paid_at"] == renewal + 3 * DAY
    assert gateway.retrieve_subscription(sub["id"])["status"] == "active"
    assert [e["created"] for e in events_about(gateway, failing["id"], "invoice.paid")] == [renewal + 3 * DAY]


def test_retries_exhausted_cancel_the_subscription(gateway: StripeGateway, emulator: Emulator) -> None:
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, clock=clock)
    emulator.control(f"customers/{sub['customer']}/card", outcome="card_declined")
    renewal = sub["current_period_end"]

    emulator.control(f"test_clocks/{clock['id']}/advance", frozen_time=renewal + 10 * DAY)

    ended = gateway.retrieve_subscription(sub["id"])
    assert ended["status"] == "canceled" and ended["ended_at"] == renewal + 7 * DAY
    assert ended["cancellation_details"]["reason"] == "payment_failed"
    invoice = gateway.retrieve_invoice(ended["latest_invoice"])
    assert (invoice["status"], invoice["attempt_count"], invoice["next_payment_attempt"]) == ("open", 4, None)
    attempts = events_about(gateway, invoice["id"], "invoice.payment_failed")
    assert [e["created"] - renewal for e in attempts] == [0, 3 * DAY, 5 * DAY, 7 * DAY]
    assert [e["data"]["object"]["next_payment_attempt"] for e in attempts] == [
        renewal + 3 * DAY,
        renewal + 5 * DAY,
        renewal + 7 * DAY,
        None,
    ]
    [deleted] = events_about(gateway, sub["id"], "customer.subscription.deleted")
    assert deleted["created"] == renewal + 7 * DAY
    assert gateway.list_subscriptions(customer=sub["customer"]) == []
    assert [s["id"] for s in gateway.list_subscriptions(customer=sub["customer"], status="canceled")] == [sub["id"]]


def test_authentication_required_renewal_asks_for_action(gateway: StripeGateway, emulator: Emulator) -> None:
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, clock=clock)
    emulator.control(f"customers/{sub['customer']}/card", outcome="authentication_required")

    gateway.advance_test_clock(clock["id"], sub["current_period_end"] + 60)

    invoice = gateway.retrieve_invoice(gateway.retrieve_subscription(sub["id"])["latest_invoice"])
    assert invoice["status"] == "open"
    assert [e["type"] for e in events_about(gateway, invoice["id"], "invoice.payment_*")] == [
        "invoice.payment_failed",
        "invoice.payment_action_required",
    ]
    assert gateway.retrieve_payment_intent(invoice["payment_intent"])["status"] == "requires_action"


# -- changes -------------------------------------------------------------------------------------------------------


def test_cancel_at_period_end_ends_the_subscription_without_an_invoice(
    gateway: StripeGateway, emulator: Emulator
) -> None:
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, clock=clock)

    updated = gateway.update_subscription(sub["id"], cancel_at_period_end=True)
    assert (updated["cancel_at_period_end"], updated["cancel_at"], updated["status"]) == (
        True,
        sub["current_period_end"],
        "active",
    )
    [change] = events_about(gateway, sub["id"], "customer.subscription.updated")
    assert change["data"]["previous_attributes"]["cancel_at_period_end"] is False

    gateway.advance_test_clock(clock["id"], sub["current_period_end"] + DAY)

    ended = gateway.retrieve_subscription(sub["id"])
    assert (ended["status"], ended["ended_at"]) == ("canceled", sub["current_period_end"])
    [deleted] = events_about(gateway, sub["id"], "customer.subscription.deleted")
    assert deleted["created"] == sub["current_period_end"]
    assert len(gateway.list_invoices(subscription=sub["id"])["data"]) == 1


def test_cancel_now(gateway: StripeGateway, emulator: Emulator) -> None:
    _, sub = subscribe(gateway, emulator)

    canceled = gateway.cancel_subscription(sub["id"])

    assert canceled["status"] == "canceled" and canceled["canceled_at"] is not None
    [deleted] = events_about(gateway, sub["id"], "customer.subscription.deleted")
    assert deleted["data"]["object"]["status"] == "canceled"


def test_trial_sends_trial_will_end_then_bills_the_first_month(gateway: StripeGateway, emulator: Emulator) -> None:
    # given a 14-day trial bought through Checkout
    clock = gateway.create_test_clock(START)
    session, sub = subscribe(gateway, emulator, clock=clock, trial_days=14)
    trial_end = START + 14 * DAY
    assert (session["payment_status"], session["amount_total"]) == ("no_payment_required", 0)
    assert (sub["status"], sub["trial_start"], sub["trial_end"]) == ("trialing", START, trial_end)
    assert sub["current_period_end"] == trial_end
    first = gateway.retrieve_invoice(sub["latest_invoice"])
    assert (first["status"], first["amount_due"], first["payment_intent"]) == ("paid", 0, None)

    # when the clock reaches three days before the trial's end
    gateway.advance_test_clock(clock["id"], trial_end - 3 * DAY)
    [warning] = events_about(gateway, sub["id"], "customer.subscription.trial_will_end")
    assert warning["created"] == trial_end - 3 * DAY
    assert gateway.retrieve_subscription(sub["id"])["status"] == "trialing"

    # and then passes the trial's end
    gateway.advance_test_clock(clock["id"], trial_end + DAY)

    # then the first month is billed and the subscription is active
    active = gateway.retrieve_subscription(sub["id"])
    assert (active["status"], active["current_period_start"]) == ("active", trial_end)
    assert active["current_period_end"] == add_months(trial_end, 1)
    invoice = gateway.retrieve_invoice(active["latest_invoice"])
    assert (invoice["billing_reason"], invoice["amount_paid"]) == ("subscription_cycle", 1000)
    change = events_about(gateway, sub["id"], "customer.subscription.updated")[-1]
    assert change["data"]["previous_attributes"]["status"] == "trialing"


def test_upgrade_with_always_invoice_charges_the_prorated_difference(
    gateway: StripeGateway, emulator: Emulator
) -> None:
    # given a $10 monthly subscription, ten days into its period
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, amount=1000, clock=clock)
    bigger = recurring_price(emulator, 3000, name="Max")
    now = START + 10 * DAY
    gateway.advance_test_clock(clock["id"], now)

    # when it moves to the $30 price, invoicing the difference now
    updated = gateway.update_subscription(
        sub["id"],
        items=[{"id": sub["items"]["data"][0]["id"], "price": bigger["id"]}],
        proration_behavior="always_invoice",
    )

    # then one invoice charges the remaining time at the new price less the unused time at the old one
    start, end = sub["current_period_start"], sub["current_period_end"]
    remaining = Fraction(end - now, end - start)
    credit, charge = round(1000 * remaining), round(3000 * remaining)
    assert updated["items"]["data"][0]["price"]["id"] == bigger["id"]
    assert (updated["current_period_start"], updated["current_period_end"]) == (start, end)
    invoice = gateway.retrieve_invoice(updated["latest_invoice"])
    assert invoice["billing_reason"] == "subscription_update"
    assert [(line["amount"], line["proration"]) for line in invoice["lines"]["data"]] == [
        (-credit, True),
        (charge, True),
    ]
    assert (invoice["status"], invoice["amount_paid"]) == ("paid", charge - credit)
    assert gateway.retrieve_payment_intent(invoice["payment_intent"])["amount"] == charge - credit
    [change] = events_about(gateway, sub["id"], "customer.subscription.updated")
    previous = change["data"]["previous_attributes"]
    assert previous["items"]["data"][0]["price"]["id"] == sub["items"]["data"][0]["price"]["id"]

    # and the next renewal bills the new price in full
    gateway.advance_test_clock(clock["id"], end + 60)
    renewal = gateway.retrieve_invoice(gateway.retrieve_subscription(sub["id"])["latest_invoice"])
    assert renewal["amount_paid"] == 3000


def test_downgrade_without_proration_takes_effect_at_renewal(gateway: StripeGateway, emulator: Emulator) -> None:
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, amount=3000, clock=clock)
    smaller = recurring_price(emulator, 1000, name="Lite")

    gateway.update_subscription(sub["id"], items=[{"price": smaller["id"]}], proration_behavior="none")
    assert len(gateway.list_invoices(subscription=sub["id"])["data"]) == 1
    assert sub["current_period_end"] == START + 28 * DAY  # Jan 31 -> Feb 28
    moved = emulator.control(f"test_clocks/{clock['id']}/advance", days=28, seconds=60)
    assert moved["frozen_time"] == sub["current_period_end"] + 60

    renewal = gateway.retrieve_invoice(gateway.retrieve_subscription(sub["id"])["latest_invoice"])
    assert renewal["amount_paid"] == 1000
    assert [s["id"] for s in gateway.list_subscriptions(customer=sub["customer"])] == [sub["id"]]
    by_price = emulator.api("GET", "/v1/subscriptions", params={"price": smaller["id"]}).json()["data"]
    assert [s["id"] for s in by_price] == [sub["id"]]


# -- off-session payments ------------------------------------------------------------------------------------------


def test_off_session_payment_intent_succeeds_and_can_be_refunded(gateway: StripeGateway, emulator: Emulator) -> None:
    _, sub = subscribe(gateway, emulator)

    payment_intent = gateway.create_off_session_payment_intent(
        customer=sub["customer"], amount=2500, currency="usd", metadata={"account": "user_7"}, idempotency_key="top-1"
    )
    again = gateway.create_off_session_payment_intent(
        customer=sub["customer"], amount=2500, currency="usd", metadata={"account": "user_7"}, idempotency_key="top-1"
    )

    assert payment_intent["status"] == "succeeded" and payment_intent["amount_received"] == 2500
    assert again["id"] == payment_intent["id"]
    assert (
        payment_intent["payment_method"]
        == gateway.retrieve_customer(sub["customer"])["invoice_settings"]["default_payment_method"]
    )
    assert [e["type"] for e in events_about(gateway, payment_intent["id"])] == [
        "payment_intent.created",
        "payment_intent.succeeded",
    ]
    charge = gateway.retrieve_charge(payment_intent["latest_charge"])
    assert charge["metadata"] == {"account": "user_7"}
    refund = gateway.create_refund(payment_intent=payment_intent["id"], amount=500)
    assert refund["status"] == "succeeded" and refund["charge"] == charge["id"]


def test_off_session_payment_intent_declined(gateway: StripeGateway, emulator: Emulator) -> None:
    _, sub = subscribe(gateway, emulator)
    emulator.control(f"customers/{sub['customer']}/card", outcome="card_declined")

    failed = gateway.create_off_session_payment_intent(
        customer=sub["customer"], amount=2500, currency="usd", idempotency_key="top-2"
    )

    assert failed["id"].startswith("pi_") and failed["status"] == "requires_payment_method"
    error = failed["last_payment_error"]
    assert (error["type"], error["code"]) == ("card_error", "card_declined")
    assert error["decline_code"] == "insufficient_funds"
    assert gateway.retrieve_charge(error["charge"])["status"] == "failed"
    [event] = events_about(gateway, failed["id"], "payment_intent.payment_failed")
    assert event["data"]["object"]["last_payment_error"]["code"] == "card_declined"
    # the raw answer is Stripe's 402 card error, replayed for the same idempotency key
    raw = emulator.api(
        "POST",
        "/v1/payment_intents",
        headers={"Idempotency-Key": "top-raw"},
        data={"customer": sub["customer"], "amount": 100, "currency": "usd", "off_session": "true", "confirm": "true"},
    )
    replay = emulator.api(
        "POST",
        "/v1/payment_intents",
        headers={"Idempotency-Key": "top-raw"},
        data={"customer": sub["customer"], "amount": 100, "currency": "usd", "off_session": "true", "confirm": "true"},
    )
    assert raw.status_code == 402 and replay.status_code == 402
    body = raw.json()["error"]
    assert (body["type"], body["code"], body["decline_code"]) == ("card_error", "card_declined", "insufficient_funds")
    assert body["payment_intent"]["status"] == "requires_payment_method"
    assert replay.json()["error"]["payment_intent"]["id"] == body["payment_intent"]["id"]


def test_off_session_payment_intent_needing_authentication(gateway: StripeGateway, emulator: Emulator) -> None:
    _, sub = subscribe(gateway, emulator)
    emulator.control(f"customers/{sub['customer']}/card", outcome="authentication_required")

    failed = gateway.create_off_session_payment_intent(
        customer=sub["customer"], amount=900, currency="usd", idempotency_key="top-3"
    )

    assert failed["status"] == "requires_payment_method" and failed["latest_charge"] is None
    assert failed["last_payment_error"]["code"] == "authentication_required"
    assert [e["type"] for e in events_about(gateway, failed["id"])] == [
        "payment_intent.created",
        "payment_intent.payment_failed",
    ]


# -- portal and invoice lists --------------------------------------------------------------------------------------


def test_billing_portal_session_page(gateway: StripeGateway, emulator: Emulator) -> None:
    _, sub = subscribe(gateway, emulator)

    portal = gateway.create_billing_portal_session(customer=sub["customer"], return_url="https://app.example/account")

    assert portal["id"].startswith("bps_") and portal["object"] == "billing_portal.session"
    assert (portal["customer"], portal["return_url"]) == (sub["customer"], "https://app.example/account")
    assert portal["url"].startswith(f"{emulator.base}/_emulator/billing_portal/")
    page = emulator.http.get(portal["url"], timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    invoice = gateway.retrieve_invoice(sub["latest_invoice"])
    assert "ending 4242" in page.text and invoice["number"] in page.text
    assert 'href="https://app.example/account"' in page.text


def test_invoices_are_listed_newest_first_page_by_page(gateway: StripeGateway, emulator: Emulator) -> None:
    clock = gateway.create_test_clock(START)
    _, sub = subscribe(gateway, emulator, clock=clock)
    gateway.advance_test_clock(clock["id"], add_months(START, 4))  # four renewals: five invoices

    first = gateway.list_invoices(customer=sub["customer"], limit=2)
    second = gateway.list_invoices(customer=sub["customer"], limit=2, starting_after=first["data"][-1]["id"])
    third = gateway.list_invoices(customer=sub["customer"], limit=2, starting_after=second["data"][-1]["id"])

    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)
    listed = first["data"] + second["data"] + third["data"]
    assert [i["created"] for i in listed] == sorted((i["created"] for i in listed), reverse=True)
    assert len({i["id"] for i in listed}) == 5
    assert listed[-1]["billing_reason"] == "subscription_create"
    paid = emulator.api("GET", "/v1/invoices", params={"status": "paid", "limit": 100}).json()["data"]
    assert len(paid) == 5
    assert emulator.api("GET", "/v1/invoices", params={"status": "open"}).json()["data"] == []


# -- without a test clock, and created through the API -------------------------------------------------------------


def test_the_emulator_clock_renews_subscriptions_without_a_test_clock(
    gateway: StripeGateway, emulator: Emulator
) -> None:
    _, sub = subscribe(gateway, emulator)
    expanded = emulator.api(
        "GET", f"/v1/subscriptions/{sub['id']}", params={"expand[]": "latest_invoice.payment_intent"}
    ).json()
    assert expanded["latest_invoice"]["payment_intent"]["status"] == "succeeded"

    now = emulator.control("clock", advance=sub["current_period_end"] - sub["current_period_start"] + 60)["now"]

    renewed = gateway.retrieve_subscription(sub["id"])
    assert renewed["current_period_start"] == sub["current_period_end"] <= now
    invoice = gateway.retrieve_invoice(renewed["latest_invoice"])
    assert (invoice["billing_reason"], invoice["status"], invoice["created"]) == (
        "subscription_cycle",
        "paid",
        sub["current_period_end"],
    )


def test_subscription_created_through_the_api_charges_the_saved_card(
    gateway: StripeGateway, emulator: Emulator
) -> None:
    _, first = subscribe(gateway, emulator)
    price = recurring_price(emulator, 700, name="Add-on")

    response = emulator.api(
        "POST",
        "/v1/subscriptions",
        data={"customer": first["customer"], "items[0][price]": price["id"], "metadata[kind]": "addon"},
    )

    assert response.status_code == 200, response.text
    sub = response.json()
    assert (sub["status"], sub["metadata"]) == ("active", {"kind": "addon"})
    invoice = gateway.retrieve_invoice(sub["latest_invoice"])
    assert (invoice["billing_reason"], invoice["amount_paid"]) == ("subscription_create", 700)
    assert invoice["number"].endswith("-0002")
