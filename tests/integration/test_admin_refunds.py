"""``POST /v1/admin/refunds`` on the paying stack (the real app, its gateway on the Stripe emulator): the refund
is created in Stripe (idempotent), refused before Stripe when larger than what is refundable, and clawed back
when its webhook is handled. And async payments (PIX): credits only when the payment settles, a failure
recorded in ``payment_failures``."""

from __future__ import annotations

from typing import Any

import pytest

from billing_core.intake.stripe_events import PROCESSED
from billing_core.stripe.purchases import Purchase
from billing_core.stripe.refunds import amount_for_credits
from tests.integration import paying_stack as _paying

paying_stack, shop = _paying.paying_stack, _paying.shop

pytestmark = pytest.mark.integration

URLS = {"success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"}
STARTER_MC = 10_000_000  # starter: 10,000 credits for 1,000 cents


def buy(stack, api, session_factory, account: str, package: str = "starter") -> dict[str, Any]:
    """A package bought and credited: the session, paid in the emulator, its completion event handled."""
    response = api.post(
        "/v1/checkout", key=api.key("checkout:write"), json={"account": account, "package": package, **URLS}
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    session_id = response.get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay")
    (completed,) = stack.events("checkout.session.completed", session_id)
    assert stack.deliver(session_factory, completed) == PROCESSED
    return stack.gateway.retrieve_checkout_session(session_id)


def refund(api, key: str, **body: Any) -> Any:
    return api.post("/v1/admin/refunds", key=key, json={"reason": "customer asked", "idempotency_key": "r1", **body})


def deliver_refund_events(stack, session_factory, charge_id: str) -> None:
    for event in stack.events("charge.refunded", charge_id):
        assert stack.deliver(session_factory, event) == PROCESSED


def test_refund_by_credits_is_created_in_stripe_and_clawed_back_by_its_webhook(shop, session_factory, probe):
    stack, api = shop
    session = buy(stack, api, session_factory, "ana")
    admin = api.key("admin")

    # when an operator refunds 2,500 credits of the purchase, naming its Checkout Session
    response = refund(api, admin, account="ana", payment=session["id"], credits="2500")

    # then Stripe made a refund of a quarter of the payment, with who and why in its metadata
    assert response.status_code == 201, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["refund"]["amount"] == 250 and answer["refund"]["currency"] == "usd"
    assert answer["credits"] == "2500.000"
    assert answer["payment"] == session["payment_intent"] and answer["replayed"] is False
    made = stack.gateway.retrieve_refund(answer["refund"]["id"])
    assert made["metadata"]["admin_reason"] == "customer asked"
    assert made["metadata"]["admin_actor"].startswith("api_key ")
    # and nothing is clawed back before the webhook
    assert probe.available("ana") == STARTER_MC

    # when the refund's webhook is handled, the credits are taken back once, with the operator on the entry
    deliver_refund_events(stack, session_factory, made["charge"])
    deliver_refund_events(stack, session_factory, made["charge"])
    assert probe.available("ana") == STARTER_MC - 2_500_000
    metadata = probe.scalar(
        "SELECT metadata FROM ledger_entries WHERE idempotency_key = :k", k=f"refund:{answer['refund']['id']}"
    )
    assert metadata["refund_reason"] == "customer asked" and metadata["actor"].startswith("api_key ")
    probe.assert_consistent()


def test_a_replay_returns_the_same_refund_and_another_body_under_the_key_conflicts(shop, session_factory, probe):
    stack, api = shop
    session = buy(stack, api, session_factory, "ben")
    admin = api.key("admin")
    first = refund(api, admin, account="ben", payment=session["payment_intent"], amount=1_000)
    assert first.status_code == 201, first.get_data(as_text=True)

    # the whole payment is refunded now, yet the same request again answers with the same refund
    again = refund(api, admin, account="ben", payment=session["payment_intent"], amount=1_000)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["refund"]["id"] == first.get_json()["refund"]["id"]
    assert again.get_json()["replayed"] is True and again.get_json()["credits"] == "10000.000"
    charge = stack.gateway.retrieve_refund(first.get_json()["refund"]["id"])["charge"]
    assert len(stack.gateway.list_refunds(charge=charge)) == 1

    other = refund(api, admin, account="ben", payment=session["payment_intent"], amount=500)
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_conflict"


def test_a_refund_larger_than_what_is_refundable_is_refused_before_stripe(shop, session_factory, probe):
    stack, api = shop
    session = buy(stack, api, session_factory, "cid")
    admin = api.key("admin")
    assert refund(api, admin, account="cid", payment=session["id"], amount=600).status_code == 201

    # 400 of 1,000 cents are left: 500 is refused, with what is refundable, and Stripe is not asked
    too_much = refund(api, admin, account="cid", payment=session["id"], amount=500, idempotency_key="r2")
    assert too_much.status_code == 409
    error = too_much.get_json()["error"]
    assert error["code"] == "refund_exceeds_refundable"
    assert (error["refundable"], error["refundable_credits"], error["currency"]) == (400, "4000.000", "usd")
    charge = stack.gateway.retrieve_payment_intent(session["payment_intent"])["latest_charge"]
    assert len(stack.gateway.list_refunds(charge=charge)) == 1

    # the same in credits
    too_many = refund(api, admin, account="cid", payment=session["id"], credits="4010", idempotency_key="r3")
    assert too_many.status_code == 409 and too_many.get_json()["error"]["code"] == "refund_exceeds_refundable"


def test_a_disputed_payment_is_not_refundable_while_the_dispute_is_open(shop, session_factory, probe):
    stack, api = shop
    session = buy(stack, api, session_factory, "dan")
    charge = stack.gateway.retrieve_payment_intent(session["payment_intent"])["latest_charge"]
    dispute = stack.control(f"charges/{charge}/dispute", amount=700)
    (created,) = stack.events("charge.dispute.created", dispute["id"])
    assert stack.deliver(session_factory, created) == PROCESSED
    assert (probe.available("dan"), probe.wallet("dan").held_mc) == (3_000_000, 7_000_000)

    # 300 cents are not disputed, but Stripe refunds nothing of a charge under a chargeback: 700 withdrawn,
    # and what remains is refused by Stripe itself (charge_disputed) -> 409 either way
    response = refund(api, api.key("admin"), account="dan", payment=session["id"], amount=400)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "refund_exceeds_refundable"
    assert response.get_json()["error"]["refundable"] in (0, 300)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"account": "eve", "payment": "pi_nothing"}, 404, "unknown_payment"),
        ({"account": "someone_else"}, 409, "payment_account_mismatch"),
        ({"credits": "1", "amount": 5}, 422, "invalid_request"),
        ({"credits": "0.5"}, 422, "refund_too_small"),
        ({"payment": "ch_123"}, 422, "invalid_request"),
    ],
)
def test_refusals(shop, session_factory, probe, body, status, code):
    stack, api = shop
    session = buy(stack, api, session_factory, "eve")
    request = {"account": "eve", "payment": session["id"], "amount": 100, **body}
    if "credits" in body and "amount" not in body:
        request.pop("amount")
    response = refund(api, api.key("admin"), **request)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == code


def test_the_admin_scope_is_required(shop, session_factory):
    _, api = shop
    response = refund(api, api.key("accounts:read"), account="x", payment="pi_1", amount=1)
    assert response.status_code == 403


def test_the_endpoint_is_in_the_openapi_document(api):
    # The receiver app's document (spectree keeps one per process: asking the paying stack's app would build
    # it for that app first).
    document = api.get("/openapi.json").get_json()
    assert "/v1/admin/refunds" in document["paths"]
    assert "AdminRefundBody" in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("amount_mc", "amount_total", "refunded", "credits_mc", "expected"),
    [
        (10_000_000, 1_000, 0, 2_500_000, 250),  # exact
        (10_000_000, 1_000, 0, 2_504_000, 250),  # 250.4 cents: the nearest
        (2_200_000, 70_000, 0, 1_100_000, 35_000),  # BRL with a bonus
        (1_000_000, 3, 1, 333_000, 1),  # one cent takes 333 or 334 credits: the nearest
    ],
)
def test_credits_convert_to_the_amount_whose_clawback_takes_them(
    amount_mc, amount_total, refunded, credits_mc, expected
):
    purchase = Purchase("a", amount_mc, amount_total, "pi_x")
    assert amount_for_credits(purchase, refunded, credits_mc) == expected


# -- async payments --------------------------------------------------------------------------------------------
def test_a_failed_pix_payment_credits_nothing_and_is_recorded(shop, session_factory, probe):
    stack, api = shop
    response = api.post(
        "/v1/checkout", key=api.key("checkout:write"), json={"account": "fia", "package": "starter_brl", **URLS}
    )
    session_id = response.get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay", **{"async": True})
    stack.control(f"checkout/sessions/{session_id}/async_fail")
    session = stack.gateway.retrieve_checkout_session(session_id)
    for event_type, object_id in (
        ("checkout.session.completed", session_id),
        ("payment_intent.payment_failed", session["payment_intent"]),
        ("checkout.session.async_payment_failed", session_id),
    ):
        for event in stack.events(event_type, object_id):
            assert stack.deliver(session_factory, event) == PROCESSED
            assert stack.deliver(session_factory, {**event, "id": event["id"] + "dup"}) == PROCESSED

    assert probe.wallet("fia") is None or probe.available("fia") == 0
    failures = {
        r.id: r
        for r in probe.rows(
            "SELECT id, object, account, payment_intent, amount, currency, payment_method, code FROM payment_failures"
        )
    }
    assert set(failures) == {session_id, session["payment_intent"]}
    assert failures[session_id].account == "fia" and failures[session_id].object == "checkout.session"
    assert (failures[session_id].amount, failures[session_id].currency) == (3000, "brl")
    intent = failures[session["payment_intent"]]
    assert (intent.account, intent.payment_method, intent.code) == ("fia", "pix", "payment_method_not_available")
    probe.assert_consistent()
