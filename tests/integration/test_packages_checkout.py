"""Packages in any currency over HTTP: ``GET /v1/packages`` (bonus, methods, the synced Price, ``?currency=``),
and ``POST /v1/checkout`` → paid in the Stripe emulator → the exact credits (bonus included) in the ledger, for
a USD card payment and a BRL PIX payment that settles later (no credits until it does, then once)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from billing_core.intake.stripe_events import PROCESSED
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.packages import PackageSpec, find_package
from tests.integration import paying_stack as _paying

# The paying stack's fixtures, used by name below.
paying_stack, shop = _paying.paying_stack, _paying.shop

pytestmark = pytest.mark.integration

URLS = {"success_url": "https://app.example/ok?s={CHECKOUT_SESSION_ID}", "cancel_url": "https://app.example/no"}


def purchases(probe, account: str) -> list[tuple]:
    return [
        tuple(r)
        for r in probe.rows(
            "SELECT e.idempotency_key, g.amount_mc, e.metadata->>'bonus_credits', e.metadata->>'currency' "
            "FROM grants g JOIN ledger_entries e ON e.id = g.entry_id JOIN wallets w ON w.id = g.wallet_id "
            "WHERE w.account = :a AND g.source = 'purchase' ORDER BY g.id",
            a=account,
        )
    ]


# -- the list --------------------------------------------------------------------------------------------------
def test_packages_answer_every_currency_with_bonus_and_methods(api):
    response = api.get("/v1/packages", key=api.key("usage:write"))
    assert response.status_code == 200
    data = {p["id"]: p for p in response.get_json()["data"]}
    assert {p["currency"] for p in data.values()} == {"usd", "brl"}
    assert data["professional_brl"] == {
        "id": "professional_brl",
        "name": "Professional",
        "credits": "500.000",
        "unit_amount": 20000,
        "currency": "brl",
        "bonus_credits": "25.000",
        "total_credits": "525.000",
        "payment_methods": ["card", "pix"],
        "description": "500 credits + 25 bonus (5 %)",
        "stripe_price": None,
    }
    # seed 001's packages, in BRL
    assert [
        (data[i]["credits"], data[i]["unit_amount"]) for i in ("starter_brl", "professional_brl", "enterprise_brl")
    ] == [
        ("100.000", 3000),
        ("500.000", 20000),
        ("2000.000", 70000),
    ]


def test_packages_filter_by_currency_and_refuse_a_bad_one(api):
    key = api.key("usage:write")
    brl = api.get("/v1/packages?currency=brl", key=key).get_json()["data"]
    assert [p["id"] for p in brl] == ["starter_brl", "professional_brl", "enterprise_brl"]
    assert api.get("/v1/packages?currency=eur", key=key).get_json()["data"] == []
    bad = api.get("/v1/packages?currency=BRL!", key=key)
    assert bad.status_code == 422
    assert bad.get_json()["error"]["code"] == "invalid_request"


def test_packages_show_the_synced_price_while_it_charges_the_package_amount(api, session_factory):
    with session_factory() as s, s.begin():
        s.execute(
            text(
                "INSERT INTO stripe_catalog (kind, ref, stripe_product_id, stripe_price_id, unit_amount, currency, "
                "fingerprint) VALUES ('package', 'starter', 'billing_package_starter', 'price_synced1', 1000, 'usd', "
                "'x'), ('package', 'pro', 'billing_package_pro', 'price_stale1', 4000, 'usd', 'x')"
            )
        )
    data = {p["id"]: p for p in api.get("/v1/packages", key=api.key("usage:write")).get_json()["data"]}
    assert data["starter"]["stripe_price"] == "price_synced1"
    assert data["pro"]["stripe_price"] is None  # synced at another amount: checkout sells the file's inline


def test_the_package_file_model_refuses_pix_outside_brl_and_unknown_methods():
    base = {"id": "x", "name": "X", "credits": "10", "unit_amount": 100, "currency": "usd"}
    with pytest.raises(ValueError, match="pix takes brl only"):
        PackageSpec.model_validate({**base, "payment_methods": ["card", "pix"]})
    with pytest.raises(ValueError):
        PackageSpec.model_validate({**base, "payment_methods": ["bitcoin"]})
    with pytest.raises(ValueError):
        PackageSpec.model_validate({**base, "bonus_credits": "-1"})
    with pytest.raises(ValueError):
        PriceTable({**_minimal_table(), "packages": [{**base, "payment_methods": []}]})
    ok = PackageSpec.model_validate({**base, "currency": "brl", "payment_methods": ["card", "pix"], "_note": "x"})
    assert ok.payment_methods == ("card", "pix")


def _minimal_table() -> dict:
    return {"llm_tokens": {}, "fees": {}, "agents": {}, "packages": []}


# -- checkout → pay → credits -------------------------------------------------------------------------------
def test_usd_card_checkout_credits_the_package_and_its_bonus_once(shop, session_factory, probe):
    stack, api = shop
    response = api.post(
        "/v1/checkout", key=api.key("checkout:write"), json={"account": "ada", "package": "pro", **URLS}
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    session_id = response.get_json()["id"]

    stack.control(f"checkout/sessions/{session_id}/pay")
    (completed,) = stack.events("checkout.session.completed", session_id)
    assert stack.deliver(session_factory, completed) == PROCESSED

    pro = find_package(PriceTable.default(), "pro")
    assert probe.available("ada") == pro.total_mc == 55_000_000  # 50,000 credits + 5,000 bonus
    assert purchases(probe, "ada") == [(f"checkout:{session_id}", 55_000_000, "5000.000", "usd")]
    # a second delivery (another event id for the same session) credits nothing more
    assert stack.deliver(session_factory, {**completed, "id": completed["id"] + "dup"}) == PROCESSED
    assert probe.available("ada") == 55_000_000
    probe.assert_consistent()


def test_brl_pix_checkout_credits_nothing_until_the_payment_settles_then_once(shop, session_factory, probe):
    stack, api = shop
    response = api.post(
        "/v1/checkout",
        key=api.key("checkout:write"),
        json={"account": "bia", "package": "enterprise_brl", **URLS},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    session_id = response.get_json()["id"]
    shown = stack.gateway.retrieve_checkout_session(session_id)
    assert (shown["currency"], shown["amount_total"], shown["payment_method_types"]) == (
        "brl",
        70000,
        ["card", "pix"],
    )

    # the buyer pays by PIX: the session completes unpaid
    paid = stack.control(f"checkout/sessions/{session_id}/pay", **{"async": True})
    assert (paid["status"], paid["payment_status"]) == ("complete", "unpaid")
    (completed,) = stack.events("checkout.session.completed", session_id)
    assert stack.deliver(session_factory, completed) == PROCESSED
    assert probe.wallet("bia") is None or probe.available("bia") == 0
    assert purchases(probe, "bia") == []
    charge = stack.gateway.retrieve_payment_intent(
        stack.gateway.retrieve_checkout_session(session_id)["payment_intent"]
    )["payment_method_types"]
    assert charge == ["pix"]

    # then the PIX payment settles: the credits come, once
    stack.control(f"checkout/sessions/{session_id}/async_succeed")
    (succeeded,) = stack.events("checkout.session.async_payment_succeeded", session_id)
    assert stack.deliver(session_factory, succeeded) == PROCESSED
    assert probe.available("bia") == 2_200_000  # 2,000 credits + 200 bonus
    assert purchases(probe, "bia") == [(f"checkout:{session_id}", 2_200_000, "200.000", "brl")]
    assert stack.deliver(session_factory, completed) == PROCESSED  # a late repeat of the completion
    assert stack.deliver(session_factory, {**succeeded, "id": succeeded["id"] + "x"}) == PROCESSED
    assert probe.available("bia") == 2_200_000
    probe.assert_consistent()


def test_a_failed_pix_payment_credits_nothing(shop, session_factory, probe):
    stack, api = shop
    response = api.post(
        "/v1/checkout", key=api.key("checkout:write"), json={"account": "cai", "package": "starter_brl", **URLS}
    )
    session_id = response.get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay", **{"async": True})
    stack.control(f"checkout/sessions/{session_id}/async_fail")
    for event_type in ("checkout.session.completed", "checkout.session.async_payment_failed"):
        (event,) = stack.events(event_type, session_id)
        assert stack.deliver(session_factory, event) == PROCESSED
    assert purchases(probe, "cai") == []


def test_a_refund_of_half_a_bonus_package_takes_back_half_of_credits_and_bonus(shop, session_factory, probe):
    stack, api = shop
    response = api.post(
        "/v1/checkout", key=api.key("checkout:write"), json={"account": "dan", "package": "scale", **URLS}
    )
    session_id = response.get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay")
    (completed,) = stack.events("checkout.session.completed", session_id)
    stack.deliver(session_factory, completed)
    assert probe.available("dan") == 240_000_000

    payment_intent = stack.gateway.retrieve_checkout_session(session_id)["payment_intent"]
    refund = stack.gateway.create_refund(payment_intent=payment_intent, amount=10000)
    (refunded,) = stack.events("charge.refunded", refund["charge"])
    assert stack.deliver(session_factory, refunded) == PROCESSED
    assert probe.available("dan") == 120_000_000  # the bonus is in the same grant: half of it goes too
    probe.assert_consistent()
