"""Stripe end to end: checkout through the receiver, payment in the emulator, signed webhooks into the real
web process, applied by the real worker. Duplicates, concurrency and refunds before purchases."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Stack, wait_until

STARTER_MC = 10_000_000  # the starter package: 10,000 credits for 1,000 cents


@pytest.fixture
def held_deliveries(stack: Stack) -> Iterator[None]:
    """The emulator records events but delivers none: the test delivers them itself, when and how it wants."""
    stack.emulator("/_emulator/delivery", drop_rate=1.0)
    yield
    stack.emulator("/_emulator/delivery", drop_rate=0.0, duplicates=1)


def stripe_event(stack: Stack, event_type: str, object_id: str) -> dict[str, Any]:
    """The emulator's event of ``event_type`` about ``object_id`` (as Stripe's GET /v1/events serves it)."""

    def find() -> dict[str, Any] | None:
        response = requests.get(
            f"{stack.emulator_url}/v1/events",
            params={"type": event_type, "limit": 100},
            headers={"Authorization": "Bearer sk_test_e2e"},
            timeout=10,
        )
        response.raise_for_status()
        return next((e for e in response.json()["data"] if e["data"]["object"]["id"] == object_id), None)

    return wait_until(find, timeout=10, what=f"{event_type} for {object_id}")


def buy_starter(stack: Stack, account: str) -> dict[str, Any]:
    response = stack.api(
        "POST",
        "/v1/checkout",
        json={
            "account": account,
            "package": "starter",
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/cancel",
        },
    )
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["id"].startswith("cs_") and session["url"]
    return session


def ledger_kinds(stack: Stack, account: str) -> list[str]:
    return [
        row.kind
        for row in stack.rows(
            "SELECT DISTINCT e.id, e.kind FROM ledger_entries e JOIN postings p ON p.entry_id = e.id "
            "JOIN wallets w ON p.account_id IN (w.available_account_id, w.held_account_id) "
            "WHERE w.account = :a ORDER BY e.id",
            a=account,
        )
    ]


def event_status(stack: Stack, event_id: str) -> str | None:
    return stack.scalar("SELECT status FROM stripe_events WHERE id = :id", id=event_id)


def test_paid_checkout_delivered_three_times_concurrently_credits_once(
    stack: Stack, run_id: str, held_deliveries: None
) -> None:
    # given a checkout session paid in the emulator
    account = f"buyer_{run_id}"
    session = buy_starter(stack, account)
    stack.emulator(f"/_emulator/checkout/sessions/{session['id']}/pay")
    completed = stripe_event(stack, "checkout.session.completed", session["id"])

    # when its webhook arrives three times at once
    payload = json.dumps(completed)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: stack.signed_post(payload), range(3)))

    # then all three are acknowledged, one of them as the first
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True]
    wait_until(lambda: event_status(stack, completed["id"]) == "processed", what="the event processed")
    # and the wallet holds the package once
    assert stack.available_mc(account) == STARTER_MC
    assert ledger_kinds(stack, account) == ["purchase"]
    purchase = stack.rows(
        "SELECT idempotency_key, external_ref FROM ledger_entries WHERE idempotency_key = :k",
        k=f"checkout:{session['id']}",
    )
    assert len(purchase) == 1 and purchase[0].external_ref.startswith("pi_")

    # and the emulator's own delivery of the same event later changes nothing
    stack.emulator(f"/_emulator/events/{completed['id']}/deliver")
    assert stack.available_mc(account) == STARTER_MC


def test_refund_arriving_before_its_purchase_is_applied_once_and_in_proportion(
    stack: Stack, run_id: str, held_deliveries: None
) -> None:
    # given a paid checkout whose completion event has not arrived, and half of it refunded in Stripe
    account = f"refunded_{run_id}"
    session = buy_starter(stack, account)
    stack.emulator(f"/_emulator/checkout/sessions/{session['id']}/pay")
    paid = requests.get(
        f"{stack.emulator_url}/v1/checkout/sessions/{session['id']}",
        headers={"Authorization": "Bearer sk_test_e2e"},
        timeout=10,
    ).json()
    refund = requests.post(
        f"{stack.emulator_url}/v1/refunds",
        data={"payment_intent": paid["payment_intent"], "amount": 500},
        headers={"Authorization": "Bearer sk_test_e2e"},
        timeout=10,
    )
    assert refund.status_code == 200, refund.text
    charge_refunded = stripe_event(stack, "charge.refunded", refund.json()["charge"])

    # when the refund's webhook arrives first
    assert stack.signed_post(charge_refunded).status_code == 200
    wait_until(lambda: event_status(stack, charge_refunded["id"]) == "processed", what="the refund processed")

    # then the purchase was fetched from Stripe and credited, and half of it taken back
    assert stack.available_mc(account) == STARTER_MC // 2
    assert ledger_kinds(stack, account) == ["purchase", "clawback"]

    # and when the completion event and the refund again arrive late, nothing changes
    completed = stripe_event(stack, "checkout.session.completed", session["id"])
    assert stack.signed_post(completed).status_code == 200
    assert stack.signed_post(charge_refunded).json()["duplicate"] is True
    wait_until(lambda: event_status(stack, completed["id"]) == "processed", what="the completion processed")
    assert stack.available_mc(account) == STARTER_MC // 2
    assert ledger_kinds(stack, account) == ["purchase", "clawback"]
    check = stack.billing_check()
    assert check.returncode == 0, check.stdout


def test_emulator_delivery_with_duplicates_and_shuffle_credits_once(stack: Stack, run_id: str) -> None:
    # given the emulator delivering every event three times, in shuffled bursts
    stack.emulator("/_emulator/delivery", duplicates=3, shuffle=True)
    try:
        account = f"shuffled_{run_id}"
        session = buy_starter(stack, account)
        # when the session is paid
        stack.emulator(f"/_emulator/checkout/sessions/{session['id']}/pay")
        # then the wallet is credited once, and the Stripe customer is linked to the account
        wait_until(lambda: stack.available_mc(account) == STARTER_MC, what="the purchase credited")
        stack.emulator("/_emulator/flush", timeout=20)
        assert ledger_kinds(stack, account) == ["purchase"]
        assert stack.scalar("SELECT stripe_customer_id FROM wallets WHERE account = :a", a=account).startswith("cus_")
    finally:
        stack.emulator("/_emulator/delivery", duplicates=1, shuffle=False)


def test_bad_webhooks_get_precise_4xx_and_store_nothing(stack: Stack, run_id: str) -> None:
    event = {
        "id": f"evt_bad_{run_id}",
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()),
        "data": {"object": {"id": f"cus_bad{run_id}", "object": "customer", "metadata": {}}},
    }
    payload = json.dumps(event)
    now = int(time.time())
    import stripe

    good_header = stripe.WebhookSignature.generate_signature_header(payload, stack.webhook_secret, timestamp=now)
    malformed = '{"id": "evt_x", "type": '
    cases = {
        "tampered body": (
            payload.replace("customer.created", "customer.deleted"),
            good_header,
            400,
            "invalid_signature",
        ),
        "wrong secret": (
            payload,
            stripe.WebhookSignature.generate_signature_header(payload, "whsec_wrong", timestamp=now),
            400,
            "invalid_signature",
        ),
        "stale timestamp": (
            payload,
            stripe.WebhookSignature.generate_signature_header(payload, stack.webhook_secret, timestamp=now - 301),
            400,
            "timestamp_outside_tolerance",
        ),
        "missing header": (payload, "", 400, "invalid_signature"),
        "2 MiB body": ('{"pad": "' + "x" * (2 * 1024 * 1024) + '"}', good_header, 413, "payload_too_large"),
        "malformed JSON": (
            malformed,
            stripe.WebhookSignature.generate_signature_header(malformed, stack.webhook_secret, timestamp=now),
            400,
            "malformed_payload",
        ),
    }
    before = stack.scalar("SELECT count(*) FROM stripe_events")
    for name, (body, header, status, code) in cases.items():
        headers = {"Content-Type": "application/json", **({"Stripe-Signature": header} if header else {})}
        response = requests.post(stack.web_url + "/webhooks/stripe", data=body.encode(), headers=headers, timeout=30)
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"]["code"] == code, name
    assert stack.scalar("SELECT count(*) FROM stripe_events") == before

    # and the same event signed with the previous (rotated) secret is accepted
    rotated = stripe.WebhookSignature.generate_signature_header(payload, "whsec_e2e_previous", timestamp=now)
    assert stack.signed_post(payload, header=rotated).status_code == 200
    assert stack.scalar("SELECT count(*) FROM stripe_events") == before + 1
