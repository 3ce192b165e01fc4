"""Plans bought as subscriptions over HTTP, against the real app on PostgreSQL with its gateway on the Stripe
emulator: ``POST /v1/subscriptions`` (the stored plan Price, the contract's metadata, one trial per account,
every refusal with nothing written), plan changes with the right proration (checked on the emulator's
subscription), cancel, ``POST /v1/billing-portal``, ``GET /v1/accounts/<a>/invoices`` and the subscription in
the balance. The ``subscriptions`` and ``invoices`` rows the event handlers would write are inserted here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.accounts.profile import update_account
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.plans import plan_prices
from billing_core.stripe.catalog_sync import sync_plans
from tests.integration import paying_stack as _paying

paying_stack, shop = _paying.paying_stack, _paying.shop

pytestmark = pytest.mark.integration

URLS = {"success_url": "https://app.example/ok?s={CHECKOUT_SESSION_ID}", "cancel_url": "https://app.example/no"}
TABLE = PriceTable.default()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def sync(stack, session_factory) -> dict[str, str]:
    """Every plan price synced to the emulator: ``{"pro:month": "price_...", ...}``."""
    results = sync_plans(session_factory, stack.gateway, plan_prices(TABLE.spec.plans))
    return {r.package: r.price for r in results}


def wallet_id(session_factory, account: str) -> int:
    update_account(session_factory, account)  # creates the wallet
    with session_factory() as s:
        return int(s.execute(text("SELECT id FROM wallets WHERE account = :a"), {"a": account}).scalar_one())


def insert_subscription(session_factory, account: str, sub_id: str, **fields: Any) -> None:
    row = {
        "id": sub_id,
        "w": wallet_id(session_factory, account),
        "plan": "pro",
        "interval": "month",
        "status": "active",
        "start": T0,
        "end": T0 + timedelta(days=31),
        "trial_end": None,
        "cancel": False,
        "created": T0,
        **fields,
    }
    with session_factory() as s, s.begin():
        s.execute(
            text(
                "INSERT INTO subscriptions (id, wallet_id, plan, interval, status, current_period_start, "
                "current_period_end, trial_end, cancel_at_period_end, created_at) VALUES (:id, :w, :plan, "
                ":interval, :status, :start, :end, :trial_end, :cancel, :created)"
            ),
            row,
        )


def subscribe(api, account: str, plan: str = "pro", interval: str = "month", **extra: Any):
    body = {"account": account, "plan": plan, "interval": interval, **URLS, **extra}
    return api.post("/v1/subscriptions", key=api.key("checkout:write"), json=body)


def delete(api, path: str, key: str):
    return api.client.delete(path, headers={"Authorization": f"Bearer {key}"})


def error(response) -> dict[str, Any]:
    return response.get_json()["error"]


# -- POST /v1/subscriptions -------------------------------------------------------------------------------------
def test_a_subscription_checkout_sells_the_stored_price_with_the_contract_metadata_and_the_trial(
    shop, session_factory, probe
):
    stack, api = shop
    prices = sync(stack, session_factory)

    response = subscribe(api, "ada", "business", "year")

    assert response.status_code == 201, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["id"].startswith("cs_") and answer["url"] and answer["trial_days"] == 14
    session = stack.gateway.retrieve_checkout_session(answer["id"])
    contract = {"account": "ada", "plan": "business", "interval": "year"}
    assert (session["mode"], session["client_reference_id"], session["metadata"]) == ("subscription", "ada", contract)
    assert session["customer"] == probe.scalar("SELECT stripe_customer_id FROM wallets WHERE account = 'ada'")
    (item,) = stack.gateway.list_checkout_line_items(answer["id"])
    assert item["price"]["id"] == prices["business:year"]

    # paid: the subscription carries the same metadata and the plan's 14-day trial
    stack.control(f"checkout/sessions/{answer['id']}/pay")
    subscription = stack.gateway.retrieve_subscription(
        stack.gateway.retrieve_checkout_session(answer["id"])["subscription"]
    )
    assert subscription["metadata"] == contract
    assert subscription["status"] == "trialing"
    assert subscription["trial_end"] - subscription["trial_start"] == 14 * 24 * 3600
    assert subscription["items"]["data"][0]["price"]["metadata"]["allowance_mc"] == "160000000"


def test_an_account_that_had_a_subscription_gets_no_second_trial(shop, session_factory):
    stack, api = shop
    sync(stack, session_factory)
    insert_subscription(session_factory, "bo", "sub_old1", status="canceled")

    response = subscribe(api, "bo")

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["trial_days"] is None
    session_id = response.get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay")
    subscription = stack.gateway.retrieve_subscription(
        stack.gateway.retrieve_checkout_session(session_id)["subscription"]
    )
    assert (subscription["status"], subscription["trial_end"]) == ("active", None)


def test_a_client_key_opens_the_same_session_again(shop, session_factory):
    stack, api = shop
    sync(stack, session_factory)
    first = subscribe(api, "cy", idempotency_key="k1").get_json()
    again = subscribe(api, "cy", idempotency_key="k1").get_json()
    assert first["id"] == again["id"]
    assert stack.sessions_created() == 1


def test_refusals_say_why_and_write_nothing(shop, session_factory, probe):
    stack, api = shop

    # never synced: no recurring Price to sell
    not_synced = subscribe(api, "dee")
    assert not_synced.status_code == 409
    assert (
        error(not_synced)["code"] == "plan_not_synced"
        and "billing stripe sync-products" in error(not_synced)["message"]
    )

    sync(stack, session_factory)
    unknown = subscribe(api, "dee", "gold")
    assert (unknown.status_code, error(unknown)["code"], error(unknown)["known_plans"]) == (
        422,
        "unknown_plan",
        ["pro", "business"],
    )
    unpriced = subscribe(api, "dee", "payg")
    assert (unpriced.status_code, error(unpriced)["code"], error(unpriced)["known_intervals"]) == (
        422,
        "unknown_interval",
        [],
    )
    weekly = subscribe(api, "dee", "pro", "week")
    assert (weekly.status_code, error(weekly)["code"], error(weekly)["known_intervals"]) == (
        422,
        "unknown_interval",
        ["month", "year"],
    )
    assert probe.wallet("dee") is None  # nothing written, not even a wallet
    assert stack.sessions_created() == 0

    for status in ("active", "trialing", "past_due"):
        insert_subscription(session_factory, "eve", f"sub_{status}", status=status)
        exists = subscribe(api, "eve", "business")
        assert (exists.status_code, error(exists)["code"], error(exists)["subscription"]) == (
            409,
            "subscription_exists",
            f"sub_{status}",
        )
        with session_factory() as s, s.begin():
            s.execute(text("UPDATE subscriptions SET status = 'canceled'"))
    assert stack.sessions_created() == 0
    assert probe.scalar("SELECT stripe_customer_id FROM wallets WHERE account = 'eve'") is None

    wrong_scope = api.post(
        "/v1/subscriptions", key=api.key("accounts:read"), json={"account": "eve", "plan": "pro", **URLS}
    )
    assert (wrong_scope.status_code, error(wrong_scope)["code"]) == (403, "insufficient_scope")
    typo = api.post(
        "/v1/subscriptions", key=api.key("checkout:write"), json={"account": "eve", "plan": "pro", "plna": 1, **URLS}
    )
    assert (typo.status_code, error(typo)["code"]) == (422, "invalid_request")


def test_without_stripe_payments_are_unavailable(api):
    response = api.post(
        "/v1/subscriptions", key=api.key("checkout:write"), json={"account": "fay", "plan": "pro", **URLS}
    )
    assert (response.status_code, error(response)["code"]) == (503, "stripe_unavailable")


# -- plan change and cancel -----------------------------------------------------------------------------------------
def subscribed(stack, api, session_factory, account: str) -> tuple[dict[str, str], str]:
    """A paid monthly Pro subscription without a trial, mirrored as the handlers would: (prices, sub id)."""
    prices = sync(stack, session_factory)
    insert_subscription(
        session_factory, account, f"sub_before_{account}", status="canceled", created=T0 - timedelta(days=400)
    )
    session_id = subscribe(api, account).get_json()["id"]
    stack.control(f"checkout/sessions/{session_id}/pay")
    sub_id = stack.gateway.retrieve_checkout_session(session_id)["subscription"]
    insert_subscription(session_factory, account, sub_id, stripe_price_id=None)
    return prices, sub_id


def test_an_upgrade_applies_now_and_invoices_the_prorated_difference(shop, session_factory):
    stack, api = shop
    prices, sub_id = subscribed(stack, api, session_factory, "gus")
    before = stack.gateway.retrieve_subscription(sub_id)

    response = api.post(f"/v1/subscriptions/{sub_id}", key=api.key("checkout:write"), json={"plan": "business"})

    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert (answer["id"], answer["plan"], answer["interval"], answer["status"], answer["change"]) == (
        sub_id,
        "business",
        "month",
        "active",
        "upgrade",
    )
    assert answer["cancel_at_period_end"] is False and answer["trial_end"] is None
    after = stack.gateway.retrieve_subscription(sub_id)
    assert after["items"]["data"][0]["price"]["id"] == prices["business:month"]
    assert after["metadata"] == {"account": "gus", "plan": "business", "interval": "month"}
    # always_invoice: a new invoice at once, for the prorated difference
    assert after["latest_invoice"] != before["latest_invoice"]
    invoice = stack.gateway.retrieve_invoice(after["latest_invoice"])
    assert invoice["billing_reason"] == "subscription_update"
    assert 0 < invoice["amount_due"] <= 14900 - 2900
    assert all(line["proration"] for line in invoice["lines"]["data"])


def test_a_downgrade_switches_the_price_for_the_next_renewal_without_an_invoice(shop, session_factory):
    stack, api = shop
    prices, sub_id = subscribed(stack, api, session_factory, "hal")
    with session_factory() as s, s.begin():
        s.execute(text("UPDATE subscriptions SET plan = 'business' WHERE id = :id"), {"id": sub_id})
    # (the subscription is on Pro in Stripe; moving it to Business first, as an upgrade would)
    stack.gateway.update_subscription(
        sub_id,
        items=[
            {
                "id": stack.gateway.retrieve_subscription(sub_id)["items"]["data"][0]["id"],
                "price": prices["business:month"],
            }
        ],
        proration_behavior="none",
    )
    before = stack.gateway.retrieve_subscription(sub_id)

    response = api.post(
        f"/v1/subscriptions/{sub_id}", key=api.key("checkout:write"), json={"plan": "pro", "interval": "month"}
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    assert (response.get_json()["plan"], response.get_json()["change"]) == ("pro", "downgrade")
    after = stack.gateway.retrieve_subscription(sub_id)
    assert after["items"]["data"][0]["price"]["id"] == prices["pro:month"]
    assert after["latest_invoice"] == before["latest_invoice"]  # proration none: nothing billed now
    assert after["current_period_end"] == before["current_period_end"]

    same = api.post(f"/v1/subscriptions/{sub_id}", key=api.key("checkout:write"), json={"plan": "pro"})
    assert (same.status_code, same.get_json()["change"]) == (200, "none")


def test_plan_change_refusals(shop, session_factory):
    stack, api = shop
    key = api.key("checkout:write")
    unknown = api.post("/v1/subscriptions/sub_nope", key=key, json={"plan": "business"})
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_subscription")
    insert_subscription(session_factory, "ida", "sub_gone", status="canceled")
    ended = api.post("/v1/subscriptions/sub_gone", key=key, json={"plan": "business"})
    assert (ended.status_code, error(ended)["code"]) == (409, "subscription_canceled")
    insert_subscription(session_factory, "ida", "sub_live")
    not_synced = api.post("/v1/subscriptions/sub_live", key=key, json={"plan": "business"})
    assert (not_synced.status_code, error(not_synced)["code"]) == (409, "plan_not_synced")
    sync(stack, session_factory)
    bad_plan = api.post("/v1/subscriptions/sub_live", key=key, json={"plan": "free"})
    assert (bad_plan.status_code, error(bad_plan)["code"]) == (422, "unknown_interval")
    assert (delete(api, "/v1/subscriptions/sub_nope", key).status_code) == 404
    assert error(delete(api, "/v1/subscriptions/sub_gone", key))["code"] == "subscription_canceled"


def test_cancel_at_period_end_then_now(shop, session_factory):
    stack, api = shop
    _, sub_id = subscribed(stack, api, session_factory, "jo")
    key = api.key("checkout:write")

    later = delete(api, f"/v1/subscriptions/{sub_id}", key)
    assert later.status_code == 200, later.get_data(as_text=True)
    assert (later.get_json()["status"], later.get_json()["cancel_at_period_end"], later.get_json()["plan"]) == (
        "active",
        True,
        "pro",
    )
    assert stack.gateway.retrieve_subscription(sub_id)["cancel_at_period_end"] is True

    now = delete(api, f"/v1/subscriptions/{sub_id}?at_period_end=false", key)
    assert now.status_code == 200, now.get_data(as_text=True)
    assert now.get_json()["status"] == "canceled"
    assert stack.gateway.retrieve_subscription(sub_id)["status"] == "canceled"


# -- billing portal -------------------------------------------------------------------------------------------------
def test_billing_portal_for_an_account_with_a_stripe_customer(shop, session_factory):
    stack, api = shop
    sync(stack, session_factory)
    subscribe(api, "kim")  # gives the account its Stripe customer
    key = api.key("checkout:write")

    response = api.post("/v1/billing-portal", key=key, json={"account": "kim", "return_url": "https://app.example/b"})

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["url"].startswith(stack.emulator_url)

    update_account(session_factory, "lee")
    none = api.post("/v1/billing-portal", key=key, json={"account": "lee", "return_url": "https://app.example/b"})
    assert (none.status_code, error(none)["code"]) == (409, "no_stripe_customer")
    unknown = api.post("/v1/billing-portal", key=key, json={"account": "nobody", "return_url": "https://app.example/b"})
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_account")


# -- invoices and the balance ------------------------------------------------------------------------------------------
def insert_invoice(session_factory, wallet: int, invoice_id: str, created: datetime, **fields: Any) -> None:
    row = {
        "id": invoice_id,
        "w": wallet,
        "sub": "sub_1",
        "status": "paid",
        "reason": "subscription_cycle",
        "number": f"ABC-{invoice_id[-4:]}",
        "amount": 2900,
        "created": created,
        "paid_at": created,
        "url": f"https://invoice.example/{invoice_id}",
        "period_end": created + timedelta(days=31),
        **fields,
    }
    with session_factory() as s, s.begin():
        s.execute(
            text(
                "INSERT INTO invoices (id, wallet_id, subscription_id, status, billing_reason, number, currency, "
                "amount_due, amount_paid, total, hosted_invoice_url, period_start, period_end, stripe_created, "
                "paid_at) VALUES (:id, :w, :sub, :status, :reason, :number, 'usd', :amount, :amount, :amount, "
                ":url, :created, :period_end, :created, :paid_at)"
            ),
            row,
        )


def test_invoices_newest_first_a_page_at_a_time(api, session_factory):
    wallet = wallet_id(session_factory, "max")
    other = wallet_id(session_factory, "ned")
    # two invoices created in the same second: the id breaks the tie
    for i, created in enumerate([T0, T0 + timedelta(days=31), T0 + timedelta(days=59), T0 + timedelta(days=59)]):
        insert_invoice(session_factory, wallet, f"in_000{i}", created)
    insert_invoice(session_factory, other, "in_9999", T0 + timedelta(days=90))
    key = api.key("accounts:read")

    first = api.get("/v1/accounts/max/invoices?limit=3", key=key).get_json()
    assert [i["id"] for i in first["data"]] == ["in_0003", "in_0002", "in_0001"]
    assert first["has_more"] is True and first["next_cursor"]
    second = api.get(f"/v1/accounts/max/invoices?limit=3&cursor={first['next_cursor']}", key=key).get_json()
    assert ([i["id"] for i in second["data"]], second["has_more"], second["next_cursor"]) == (["in_0000"], False, None)
    shown = first["data"][0]
    assert shown == {
        "id": "in_0003",
        "number": "ABC-0003",
        "status": "paid",
        "currency": "usd",
        "amount_due": 2900,
        "amount_paid": 2900,
        "total": 2900,
        "billing_reason": "subscription_cycle",
        "subscription": "sub_1",
        "period_start": (T0 + timedelta(days=59)).isoformat(),
        "period_end": (T0 + timedelta(days=59 + 31)).isoformat(),
        "hosted_invoice_url": "https://invoice.example/in_0003",
        "created": (T0 + timedelta(days=59)).isoformat(),
        "paid_at": (T0 + timedelta(days=59)).isoformat(),
        "attempt_count": 0,
        "next_payment_attempt": None,
    }

    bad = api.get("/v1/accounts/max/invoices?cursor=nonsense", key=key)
    assert (bad.status_code, error(bad)["code"]) == (400, "invalid_cursor")
    unknown = api.get("/v1/accounts/nobody/invoices", key=key)
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_account")
    assert api.get("/v1/accounts/max/invoices", key=api.key("checkout:write")).status_code == 403
    empty = api.get("/v1/accounts/ned/invoices?limit=1", key=key).get_json()
    assert ([i["id"] for i in empty["data"]], empty["has_more"]) == (["in_9999"], False)


def test_the_balance_shows_the_current_subscription(api, session_factory):
    key = api.key("accounts:read")
    update_account(session_factory, "oli")
    assert api.get("/v1/accounts/oli", key=key).get_json()["subscription"] is None

    insert_subscription(session_factory, "oli", "sub_first", status="canceled", created=T0 - timedelta(days=90))
    assert api.get("/v1/accounts/oli", key=key).get_json()["subscription"]["id"] == "sub_first"

    trial_end = T0 + timedelta(days=14)
    insert_subscription(
        session_factory, "oli", "sub_now", plan="business", interval="year", status="trialing", trial_end=trial_end
    )
    # a later canceled one does not hide the live one
    insert_subscription(session_factory, "oli", "sub_later", status="canceled", created=T0 + timedelta(days=1))
    assert api.get("/v1/accounts/oli", key=key).get_json()["subscription"] == {
        "id": "sub_now",
        "plan": "business",
        "interval": "year",
        "status": "trialing",
        "current_period_start": T0.isoformat(),
        "current_period_end": (T0 + timedelta(days=31)).isoformat(),
        "cancel_at_period_end": False,
        "trial_end": trial_end.isoformat(),
    }


def test_the_new_routes_are_in_the_openapi_document(api):
    doc = api.get("/openapi.json").get_json()
    paths = doc["paths"]
    assert set(paths["/v1/subscriptions"]) == {"post"}
    assert set(paths["/v1/subscriptions/{subscription_id}"]) == {"post", "delete"}
    assert "post" in paths["/v1/billing-portal"]
    assert "get" in paths["/v1/accounts/{account}/invoices"]
    schemas = doc["components"]["schemas"]
    for name in (
        "SubscriptionBody",
        "SubscriptionCheckoutAnswer",
        "SubscriptionChangeBody",
        "SubscriptionAnswer",
        "BillingPortalBody",
        "BillingPortalAnswer",
        "InvoicesAnswer",
        "InvoiceAnswer",
    ):
        assert name in schemas, name
    assert "subscription" in schemas["AccountAnswer"]["properties"]
    errors = str(paths["/v1/subscriptions"]["post"]["responses"])
    for code in ("subscription_exists", "plan_not_synced", "unknown_plan", "unknown_interval"):
        assert code in errors
