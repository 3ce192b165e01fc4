"""The Stripe emulator, driven the way the project drives Stripe: ``StripeGateway`` (the real SDK over real HTTP)
for the API, plain HTTP for the ``/_emulator/`` controls, and a local HTTP server receiving its webhooks.

No PostgreSQL or Redis: every test starts its own emulator on a free port.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import stripe

from billing_core.stripe.gateway import StripeGateway, StripeNotFound, StripeRejected
from stripe_emulator import run_in_thread
from tests.waiting import wait_until

API_KEY = "sk_test_emulator"
SECRET = "whsec_test_secret"


class Emulator:
    """A running emulator: its base URL, its controls, and raw authenticated API calls."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()

    def control(self, path: str, **body: Any) -> Any:
        response = self.http.post(f"{self.base}/_emulator/{path}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.base}{path}", headers=headers, timeout=10, **kwargs)

    def flush(self) -> dict[str, Any]:
        result = self.control("flush", timeout=30)
        assert result["flushed"], result
        return result


class WebhookSink:
    """A tiny HTTP server recording every webhook it receives; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    sink.received.append((dict(self.headers.items()), body))
                    status = sink.statuses.pop(0) if sink.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/stripe"

    def event_ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, body in list(self.received)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    server = WebhookSink()
    try:
        yield server
    finally:
        server.close()


def buy(gateway: StripeGateway, account: str = "user_42", unit_amount: int = 500, **kwargs: Any) -> dict[str, Any]:
    return gateway.create_checkout_session(
        account=account,
        package_id="starter",
        package_name="Starter: 5,000 credits",
        credits="5000",
        unit_amount=unit_amount,
        currency="usd",
        success_url="https://app.example/success?session={CHECKOUT_SESSION_ID}",
        cancel_url="https://app.example/cancel",
        **kwargs,
    )


def paid_charge(gateway: StripeGateway, emulator: Emulator, unit_amount: int = 500) -> dict[str, Any]:
    session = buy(gateway, unit_amount=unit_amount)
    emulator.control(f"checkout/sessions/{session['id']}/pay")
    payment_intent = gateway.retrieve_payment_intent(gateway.retrieve_checkout_session(session["id"])["payment_intent"])
    return gateway.retrieve_charge(payment_intent["latest_charge"])


def all_plain(value: Any) -> bool:
    """True when ``value`` is made of dicts, lists and scalars only: no SDK objects anywhere."""
    if isinstance(value, stripe.StripeObject):
        return False
    if isinstance(value, dict):
        return type(value) is dict and all(all_plain(v) for v in value.values())
    if isinstance(value, list):
        return all(all_plain(v) for v in value)
    return True


def events_of(gateway: StripeGateway, *types: str) -> list[dict[str, Any]]:
    return list(gateway.iter_events(types=list(types) or None))


# -- customers ---------------------------------------------------------------------------------------------


def test_customers_are_created_retrieved_and_listed_by_email(gateway: StripeGateway) -> None:
    # given two customers, one of them with an email we look for
    alice = gateway.create_customer(account="user_1", email="alice@example.com", name="Alice")
    gateway.create_customer(account="user_2", email="bob@example.com")

    # when we read them back
    fetched = gateway.retrieve_customer(alice["id"])
    found = gateway.list_customers(email="alice@example.com")

    # then they carry Stripe's shape and our account metadata
    assert alice["id"].startswith("cus_") and alice["object"] == "customer"
    assert fetched == alice
    assert fetched["metadata"] == {"account": "user_1"}
    assert fetched["email"] == "alice@example.com" and fetched["name"] == "Alice"
    assert [c["id"] for c in found] == [alice["id"]]
    assert len(gateway.list_customers()) == 2
    assert [e["data"]["object"]["id"] for e in events_of(gateway, "customer.created")][-1] == alice["id"]


def test_unknown_object_is_resource_missing(gateway: StripeGateway) -> None:
    with pytest.raises(StripeNotFound) as caught:
        gateway.retrieve_charge("ch_doesnotexist")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"


# -- checkout ----------------------------------------------------------------------------------------------


def test_checkout_session_is_paid_through_the_pay_control(gateway: StripeGateway, emulator: Emulator) -> None:
    # given an open session for a credit package
    customer = gateway.create_customer(account="user_42", email="buyer@example.com")
    session = buy(gateway, customer=customer["id"])
    assert session["id"].startswith("cs_test_")
    assert (session["status"], session["payment_status"], session["payment_intent"]) == ("open", "unpaid", None)
    assert session["url"] == f"{emulator.base}/_emulator/checkout/{session['id']}"
    assert session["amount_total"] == 500 and session["currency"] == "usd"
    assert session["client_reference_id"] == "user_42"
    expected_metadata = {"account": "user_42", "package": "starter", "credits": "5000"}
    assert session["metadata"] == expected_metadata

    # when the buyer pays
    emulator.control(f"checkout/sessions/{session['id']}/pay")

    # then the session is complete and paid, linked to a succeeded PaymentIntent and a captured charge
    paid = gateway.retrieve_checkout_session(session["id"])
    assert (paid["status"], paid["payment_status"]) == ("complete", "paid")
    assert paid["payment_intent"].startswith("pi_")
    payment_intent = gateway.retrieve_payment_intent(paid["payment_intent"])
    assert payment_intent["status"] == "succeeded"
    assert payment_intent["amount_received"] == 500
    assert payment_intent["metadata"] == expected_metadata
    charge = gateway.retrieve_charge(payment_intent["latest_charge"])
    assert charge["id"].startswith("ch_")
    assert (charge["paid"], charge["captured"], charge["status"], charge["amount"]) == (True, True, "succeeded", 500)
    assert charge["metadata"] == expected_metadata
    assert charge["customer"] == customer["id"] and charge["payment_intent"] == payment_intent["id"]
    assert [s["id"] for s in gateway.list_checkout_sessions(payment_intent=payment_intent["id"])] == [session["id"]]
    assert all_plain(paid) and all_plain(charge) and isinstance(charge["refunds"], dict)

    # and the events come in Stripe's order
    types = [e["type"] for e in reversed(list(gateway.iter_events()))]
    assert types[-3:] == ["payment_intent.succeeded", "charge.succeeded", "checkout.session.completed"]


def test_checkout_line_items(gateway: StripeGateway, emulator: Emulator) -> None:
    session = buy(gateway, unit_amount=1999)

    response = emulator.api("GET", f"/v1/checkout/sessions/{session['id']}/line_items")

    assert response.status_code == 200
    page = response.json()
    assert page["object"] == "list" and page["has_more"] is False
    assert page["url"] == f"/v1/checkout/sessions/{session['id']}/line_items"
    [item] = page["data"]
    assert item["object"] == "item" and item["id"].startswith("li_")
    assert (item["quantity"], item["amount_total"], item["currency"]) == (1, 1999, "usd")
    assert item["description"] == "Starter: 5,000 credits"
    assert item["price"]["unit_amount"] == 1999 and item["price"]["type"] == "one_time"


def test_declined_card_leaves_the_session_open(gateway: StripeGateway, emulator: Emulator) -> None:
    session = buy(gateway)

    emulator.control(f"checkout/sessions/{session['id']}/fail")

    still_open = gateway.retrieve_checkout_session(session["id"])
    assert (still_open["status"], still_open["payment_status"]) == ("open", "unpaid")
    payment_intent = gateway.retrieve_payment_intent(still_open["payment_intent"])
    assert payment_intent["status"] == "requires_payment_method"
    assert payment_intent["last_payment_error"]["code"] == "card_declined"
    [failed] = events_of(gateway, "payment_intent.payment_failed")
    assert failed["data"]["object"]["id"] == payment_intent["id"]


def test_async_payment_completes_unpaid_then_succeeds(gateway: StripeGateway, emulator: Emulator) -> None:
    session = buy(gateway)

    emulator.control(f"checkout/sessions/{session['id']}/pay", **{"async": True})
    pending = gateway.retrieve_checkout_session(session["id"])
    emulator.control(f"checkout/sessions/{session['id']}/async_succeed")
    settled = gateway.retrieve_checkout_session(session["id"])

    assert (pending["status"], pending["payment_status"]) == ("complete", "unpaid")
    assert (settled["status"], settled["payment_status"]) == ("complete", "paid")
    [succeeded] = events_of(gateway, "checkout.session.async_payment_succeeded")
    assert succeeded["data"]["object"]["payment_status"] == "paid"
    [completed] = events_of(gateway, "checkout.session.completed")
    assert completed["data"]["object"]["payment_status"] == "unpaid"


# -- events --------------------------------------------------------------------------------------------------


def test_events_list_filters_and_paginates_newest_first(gateway: StripeGateway, emulator: Emulator) -> None:
    # given 12 customers created now and, a minute later on the test clock, 13 more and one payment
    early = [gateway.create_customer(account=f"early_{i}")["id"] for i in range(12)]
    later_from = emulator.control("clock", advance=60)["now"]
    late = [gateway.create_customer(account=f"late_{i}")["id"] for i in range(13)]
    emulator.control(f"checkout/sessions/{buy(gateway)['id']}/pay")

    # when we page through customer events 10 at a time
    created = list(gateway.iter_events(types=["customer.created"], page_size=10))

    # then all 25 come once each, newest first, across three pages
    assert [e["data"]["object"]["id"] for e in created] == list(reversed(early + late))
    assert all(e["object"] == "event" and e["id"].startswith("evt_") for e in created)
    first = emulator.api("GET", "/v1/events", params={"types[]": "customer.created", "limit": 10}).json()
    second = emulator.api(
        "GET",
        "/v1/events",
        params={"types[]": "customer.created", "limit": 10, "starting_after": first["data"][-1]["id"]},
    ).json()
    third = emulator.api(
        "GET",
        "/v1/events",
        params={"types[]": "customer.created", "limit": 10, "starting_after": second["data"][-1]["id"]},
    ).json()
    assert [first["has_more"], second["has_more"], third["has_more"]] == [True, True, False]
    assert [len(first["data"]), len(second["data"]), len(third["data"])] == [10, 10, 5]
    assert first["url"] == "/v1/events"

    # and created[gte] keeps only the later ones; several types[] combine
    recent = list(gateway.iter_events(created_gte=later_from, types=["customer.created"]))
    assert [e["data"]["object"]["id"] for e in recent] == list(reversed(late))
    payment = list(gateway.iter_events(types=["charge.succeeded", "payment_intent.succeeded"]))
    assert [e["type"] for e in payment] == ["charge.succeeded", "payment_intent.succeeded"]
    assert all(e["created"] >= later_from for e in payment)
    exact = emulator.api("GET", "/v1/events", params={"type": "customer.*", "created[lt]": later_from}).json()
    assert len(exact["data"]) == 10 and exact["has_more"] is True


def test_bad_list_parameters_are_rejected(emulator: Emulator) -> None:
    not_a_number = emulator.api("GET", "/v1/events", params={"limit": "ten"})
    too_many = emulator.api("GET", "/v1/events", params={"limit": 101})
    unknown_cursor = emulator.api("GET", "/v1/events", params={"starting_after": "evt_nope"})

    assert not_a_number.status_code == 400
    assert not_a_number.json()["error"]["code"] == "parameter_invalid_integer"
    assert not_a_number.json()["error"]["type"] == "invalid_request_error"
    assert too_many.status_code == 400
    assert unknown_cursor.status_code == 404 and unknown_cursor.json()["error"]["code"] == "resource_missing"


# -- refunds and disputes ------------------------------------------------------------------------------------


def test_refund_partial_then_the_rest(gateway: StripeGateway, emulator: Emulator) -> None:
    charge = paid_charge(gateway, emulator, unit_amount=500)

    # when 200 is refunded, then 400 (more than is left), then the rest
    first = gateway.create_refund(payment_intent=charge["payment_intent"], amount=200)
    with pytest.raises(StripeRejected) as too_much:
        gateway.create_refund(charge=charge["id"], amount=400)
    rest = gateway.create_refund(charge=charge["id"])
    with pytest.raises(StripeRejected) as again:
        gateway.create_refund(charge=charge["id"])

    # then two refunds add up to the charge, and the over-refunds were refused
    assert first["id"].startswith("re_") and first["status"] == "succeeded"
    assert (first["amount"], rest["amount"]) == (200, 300)
    assert (too_much.value.http_status, too_much.value.code) == (400, "amount_too_large")
    assert (again.value.http_status, again.value.code) == (400, "charge_already_refunded")
    assert [r["id"] for r in gateway.list_refunds(charge=charge["id"])] == [rest["id"], first["id"]]
    assert gateway.retrieve_refund(first["id"])["charge"] == charge["id"]
    refunded = gateway.retrieve_charge(charge["id"])
    assert (refunded["amount_refunded"], refunded["refunded"]) == (500, True)

    # and each charge.refunded event carries the charge as it was then
    events = list(reversed(events_of(gateway, "charge.refunded")))
    assert [e["data"]["object"]["amount_refunded"] for e in events] == [200, 500]
    assert [e["data"]["object"]["refunded"] for e in events] == [False, True]
    assert events[1]["data"]["previous_attributes"]["amount_refunded"] == 200
    refunds = events[1]["data"]["object"]["refunds"]
    assert refunds["object"] == "list" and [r["id"] for r in refunds["data"]] == [rest["id"], first["id"]]
    assert len(events_of(gateway, "refund.created")) == 2


def test_dispute_opens_and_closes(gateway: StripeGateway, emulator: Emulator) -> None:
    charge = paid_charge(gateway, emulator, unit_amount=800)

    dispute = emulator.control(f"charges/{charge['id']}/dispute", amount=300)
    emulator.control(f"disputes/{dispute['id']}/close", status="lost")

    [created] = events_of(gateway, "charge.dispute.created")
    [closed] = events_of(gateway, "charge.dispute.closed")
    opened = created["data"]["object"]
    assert opened["id"] == dispute["id"] and opened["id"].startswith("dp_")
    assert (opened["charge"], opened["payment_intent"]) == (charge["id"], charge["payment_intent"])
    assert (opened["amount"], opened["status"]) == (300, "needs_response")
    assert closed["data"]["object"]["status"] == "lost"
    assert closed["data"]["previous_attributes"] == {"status": "needs_response"}
    assert gateway.retrieve_dispute(dispute["id"])["status"] == "lost"


# -- webhooks ------------------------------------------------------------------------------------------------


def test_webhooks_are_signed_and_verifiable(gateway: StripeGateway, emulator: Emulator, sink: WebhookSink) -> None:
    # given an endpoint registered with a secret
    endpoint = emulator.control("webhook_endpoints", url=sink.url, secret=SECRET)
    assert endpoint["id"].startswith("we_")

    # when something happens
    customer = gateway.create_customer(account="user_7")
    wait_until(lambda: sink.received, what="a webhook")

    # then the endpoint receives the event, signed so that Stripe's SDK verifies it
    [(headers, body)] = sink.received
    assert headers["Content-Type"].startswith("application/json")
    event = stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], SECRET)
    assert event.type == "customer.created"
    assert event.data.object.id == customer["id"]
    assert [e["id"] for e in gateway.iter_events()] == [event.id]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], "whsec_wrong")


def test_failed_deliveries_are_retried(gateway: StripeGateway, emulator: Emulator) -> None:
    flaky = WebhookSink(statuses=[500, 503])
    try:
        emulator.control("delivery", retry_base_ms=10)
        emulator.control("webhook_endpoints", url=flaky.url, secret=SECRET)

        gateway.create_customer(account="user_8")
        emulator.flush()

        log = emulator.http.get(f"{emulator.base}/_emulator/deliveries").json()["data"]
        assert [(d["attempt"], d["status_code"], d["outcome"]) for d in log] == [
            (1, 500, "failed"),
            (2, 503, "failed"),
            (3, 200, "delivered"),
        ]
        assert len(set(flaky.event_ids())) == 1
    finally:
        flaky.close()


def test_duplicates_deliver_every_event_three_times(
    gateway: StripeGateway, emulator: Emulator, sink: WebhookSink
) -> None:
    emulator.control("webhook_endpoints", url=sink.url, secret=SECRET)
    emulator.control("delivery", duplicates=3, shuffle=True)

    session = buy(gateway)
    emulator.control(f"checkout/sessions/{session['id']}/pay")
    emulator.flush()

    ids = sink.event_ids()
    expected = [e["id"] for e in gateway.iter_events()]
    assert len(expected) == 3
    assert sorted(ids) == sorted(expected * 3)
    for headers, body in sink.received:
        stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], SECRET)


def test_dropped_events_are_never_delivered_but_still_listed(
    gateway: StripeGateway, emulator: Emulator, sink: WebhookSink
) -> None:
    emulator.control("webhook_endpoints", url=sink.url, secret=SECRET)
    emulator.control("delivery", drop_rate=1)

    customer = gateway.create_customer(account="user_9")
    counts = emulator.flush()

    assert sink.received == []
    assert counts["dropped"] == 1 and counts["delivered"] == 0
    [event] = list(gateway.iter_events())
    assert event["data"]["object"]["id"] == customer["id"]

    # and an operator can still send it by hand
    [sent] = emulator.control(f"events/{event['id']}/deliver")["data"]
    assert sent["status_code"] == 200
    assert sink.event_ids() == [event["id"]]


# -- idempotency and auth ------------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer(gateway: StripeGateway) -> None:
    first = gateway.create_customer(account="user_3", email="c@example.com", idempotency_key="customer:user_3")
    replay = gateway.create_customer(account="user_3", email="c@example.com", idempotency_key="customer:user_3")
    session = buy(gateway, idempotency_key="checkout:abc")
    session_again = buy(gateway, idempotency_key="checkout:abc")

    assert replay == first
    assert session_again["id"] == session["id"]
    assert len(gateway.list_customers()) == 1
    assert len(events_of(gateway, "customer.created")) == 1
    with pytest.raises(StripeRejected) as conflict:
        gateway.create_customer(account="someone_else", idempotency_key="customer:user_3")
    assert conflict.value.http_status == 400


def test_requests_without_a_secret_key_are_refused(emulator: Emulator) -> None:
    missing = requests.get(f"{emulator.base}/v1/customers", timeout=10)
    publishable = requests.get(
        f"{emulator.base}/v1/customers", headers={"Authorization": "Bearer pk_test_abc"}, timeout=10
    )

    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "API key" in missing.json()["error"]["message"]
    assert publishable.status_code == 401
    with pytest.raises(StripeRejected) as refused:
        StripeGateway("not_a_key", api_base=emulator.base).retrieve_customer("cus_x")
    assert refused.value.http_status == 401
