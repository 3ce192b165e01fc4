"""The accounts API over HTTP: balances, profile updates, ledger history, packages and checkout."""

from __future__ import annotations

import pytest

from billing_core.accounts.api_keys import SCOPES
from billing_core.ledger.commands import ClawBack, GrantCredits, PlaceHold, PurchaseCredits
from billing_core.ledger.history import encode_cursor
from billing_core.pricing.catalog import PriceTable

pytestmark = pytest.mark.integration


def error_code(response) -> str:
    return response.get_json()["error"]["code"]


# -- authentication ------------------------------------------------------------------------------------
ENDPOINTS = [
    ("GET", "/v1/accounts/acme", "accounts:read"),
    ("PUT", "/v1/accounts/acme", "accounts:write"),
    ("GET", "/v1/accounts/acme/transactions", "accounts:read"),
    ("POST", "/v1/holds", "holds:write"),
    ("POST", "/v1/holds/hold_abc/capture", "holds:write"),
    ("POST", "/v1/holds/hold_abc/release", "holds:write"),
    ("POST", "/v1/checkout", "checkout:write"),
    ("POST", "/v1/estimate", None),
    ("GET", "/v1/packages", None),
]
IDS = [f"{m} {p}" for m, p, _ in ENDPOINTS]


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=IDS)
def test_no_key_is_401(api, method, path, scope):
    response = getattr(api, method.lower())(path, json={})
    assert response.status_code == 401
    assert error_code(response) == "missing_api_key"


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=IDS)
def test_unknown_key_is_401(api, method, path, scope):
    response = getattr(api, method.lower())(path, key="bk_" + "x" * 43, json={})
    assert response.status_code == 401
    assert error_code(response) == "invalid_api_key"


SCOPED = [e for e in ENDPOINTS if e[2]]


@pytest.mark.parametrize(("method", "path", "scope"), SCOPED, ids=[f"{m} {p}" for m, p, _ in SCOPED])
def test_a_key_without_the_scope_is_403_and_writes_nothing(api, probe, method, path, scope):
    # given a key with every scope but the one the endpoint needs (and not admin)
    others = [s for s in SCOPES if s not in (scope, "admin")]
    key = api.key(*others)
    before = probe.snapshot()
    # when
    response = getattr(api, method.lower())(path, key=key, json={"email": "a@b.co"})
    # then
    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"
    assert response.get_json()["error"]["required"] == scope
    assert probe.snapshot() == before


# -- balance -------------------------------------------------------------------------------------------
def test_balance_shows_available_held_and_total_as_credit_strings(api, probe):
    # given 12.345 credits, 2 of them held
    probe.run(PurchaseCredits("acme", 12_345, "buy-1"))
    probe.run(PlaceHold("acme", 2_000, "hold-1"))
    # when
    response = api.get("/v1/accounts/acme", key=api.key("accounts:read"))
    # then
    assert response.status_code == 200
    body = response.get_json()
    assert body == {
        "account": "acme",
        "available": "10.345",
        "held": "2.000",
        "total": "12.345",
        "currency": "credits",
        "flags": {"negative": False, "negative_since": None},
        "email": None,
        "name": None,
        "low_balance_threshold": None,
        "stripe_customer_id": None,
        # the plan and its token limits (tests/integration/test_token_limits.py)
        "plan": "payg",
        "limits": {
            "hourly_tokens": 500_000,
            "daily_tokens": 2_000_000,
            "monthly_tokens": None,
            "upgrade_url": "/billing/upgrade",
        },
        # the grants that can be spent, in spending order (tests/integration/test_api_grants.py)
        "grants": [
            {
                "id": body["grants"][0]["id"],
                "source": "purchase",
                "remaining": "10.345",
                "original": "12.345",
                "expires_at": None,
                "priority": 40,
            }
        ],
        "debt": "0.000",
        "subscription": None,
    }


def test_a_negative_wallet_is_flagged(api, probe):
    # given a refund of credits already held
    probe.run(PurchaseCredits("acme", 5_000, "buy-1"))
    probe.run(PlaceHold("acme", 5_000, "hold-1"))
    probe.run(ClawBack("acme", 2_000, "refund-1"))
    # when
    body = api.get("/v1/accounts/acme", key=api.key("accounts:read")).get_json()
    # then
    assert (body["available"], body["held"], body["total"]) == ("-2.000", "5.000", "3.000")
    assert body["flags"]["negative"] is True
    assert body["flags"]["negative_since"] is not None


def test_an_unknown_account_is_404(api):
    response = api.get("/v1/accounts/nobody", key=api.key("accounts:read"))
    assert response.status_code == 404
    assert error_code(response) == "unknown_account"


# -- profile -------------------------------------------------------------------------------------------
def test_put_then_get_returns_the_profile_and_leaves_the_balance_alone(api, probe):
    # given
    probe.run(PurchaseCredits("acme", 7_000, "buy-1"))
    key = api.key("accounts:read", "accounts:write")
    # when
    put = api.put(
        "/v1/accounts/acme",
        key=key,
        json={
            "email": "ada@example.com",
            "name": "Ada",
            "low_balance_threshold": "5.5",
            "stripe_customer_id": "cus_1",
        },
    )
    got = api.get("/v1/accounts/acme", key=key)
    # then
    assert put.status_code == 200
    assert got.get_json() == put.get_json()
    body = got.get_json()
    assert (body["email"], body["name"], body["low_balance_threshold"], body["stripe_customer_id"]) == (
        "ada@example.com",
        "Ada",
        "5.500",
        "cus_1",
    )
    assert body["available"] == "7.000"
    assert probe.scalar("SELECT low_balance_threshold_mc FROM wallets WHERE account = 'acme'") == 5_500


def test_put_changes_only_the_fields_given_and_null_clears_one(api):
    # given
    key = api.key("accounts:read", "accounts:write")
    api.put("/v1/accounts/acme", key=key, json={"email": "ada@example.com", "name": "Ada", "low_balance_threshold": 1})
    # when
    response = api.put("/v1/accounts/acme", key=key, json={"name": "Ada L.", "low_balance_threshold": None})
    # then
    body = response.get_json()
    assert (body["email"], body["name"], body["low_balance_threshold"]) == ("ada@example.com", "Ada L.", None)


def test_put_creates_the_wallet_of_a_new_account_with_a_zero_balance(api, probe):
    # when
    response = api.put("/v1/accounts/newbie", key=api.key("accounts:write"), json={"email": "n@example.com"})
    # then
    assert response.status_code == 200
    assert (response.get_json()["available"], response.get_json()["total"]) == ("0.000", "0.000")
    view = probe.wallet("newbie")
    assert view is not None and (view.available_mc, view.held_mc) == (0, 0)
    assert probe.scalar("SELECT count(*) FROM ledger_entries") == 0


BAD_PROFILES = [
    ("unknown field", {"emial": "a@b.co"}, "invalid_request", "emial"),
    ("email without @", {"email": "ada.example.com"}, "invalid_request", "email"),
    ("email with a space", {"email": "ada @example.com"}, "invalid_request", "email"),
    ("email not a string", {"email": 7}, "invalid_request", "email"),
    ("blank name", {"name": "  "}, "invalid_request", "name"),
    ("overlong name", {"name": "x" * 201}, "invalid_request", "name"),
    ("negative threshold", {"low_balance_threshold": "-1"}, "invalid_amount", "low_balance_threshold"),
    ("float threshold", {"low_balance_threshold": 1.5}, "invalid_amount", None),
    ("four decimals", {"low_balance_threshold": "1.0001"}, "invalid_amount", None),
    ("not a customer id", {"stripe_customer_id": "acct_1"}, "invalid_request", "stripe_customer_id"),
]


@pytest.mark.parametrize(("name", "body", "code", "field"), BAD_PROFILES, ids=[b[0] for b in BAD_PROFILES])
def test_a_bad_profile_is_422_and_writes_nothing(api, probe, name, body, code, field):
    # given
    key = api.key("accounts:write")
    before = probe.snapshot()
    # when
    response = api.put("/v1/accounts/acme", key=key, json=body)
    # then
    assert response.status_code == 422
    assert error_code(response) == code
    if field:
        assert response.get_json()["error"]["field"] == field
    assert probe.snapshot() == before
    assert probe.wallet("acme") is None


def test_a_stripe_customer_of_another_account_is_409(api, probe):
    # given
    key = api.key("accounts:write")
    api.put("/v1/accounts/acme", key=key, json={"stripe_customer_id": "cus_shared"})
    # when
    response = api.put("/v1/accounts/umbrella", key=key, json={"stripe_customer_id": "cus_shared", "name": "U"})
    # then
    assert response.status_code == 409
    assert error_code(response) == "stripe_customer_taken"
    assert probe.rows("SELECT account, stripe_customer_id, name FROM wallets ORDER BY account") == [
        ("acme", "cus_shared", None)
    ]


# -- transactions --------------------------------------------------------------------------------------
def _history(probe, n: int) -> None:
    for i in range(1, n + 1):
        probe.run(GrantCredits("acme", i * 1_000, f"grant-{i}"))


def test_transactions_are_newest_first_with_signed_changes(api, probe):
    # given a purchase, a hold, and another account's activity
    probe.run(PurchaseCredits("acme", 10_000, "buy-1", external_ref="cs_1", metadata={"package": "starter"}))
    probe.run(PurchaseCredits("umbrella", 1_000, "buy-2"))
    probe.run(PlaceHold("acme", 2_500, "hold-1"))
    # when
    body = api.get("/v1/accounts/acme/transactions", key=api.key("accounts:read")).get_json()
    # then
    assert [(t["kind"], t["available"], t["held"]) for t in body["data"]] == [
        ("hold", "-2.500", "2.500"),
        ("purchase", "10.000", "0.000"),
    ]
    purchase = body["data"][1]
    assert (purchase["idempotency_key"], purchase["external_ref"], purchase["metadata"]) == (
        "buy-1",
        "cs_1",
        {"package": "starter"},
    )
    assert purchase["occurred_at"] and purchase["created_at"]
    assert (body["has_more"], body["next_cursor"]) == (False, None)


def test_transactions_page_through_three_pages_with_a_stable_cursor(api, probe):
    # given seven entries
    _history(probe, 7)
    key = api.key("accounts:read")
    expected = [f"grant-{i}" for i in range(7, 0, -1)]
    # when walking pages of three
    first = api.get("/v1/accounts/acme/transactions?limit=3", key=key).get_json()
    probe.run(GrantCredits("acme", 1, "arrived-meanwhile"))  # lands on page one, shifts nothing after it
    second = api.get(f"/v1/accounts/acme/transactions?limit=3&cursor={first['next_cursor']}", key=key).get_json()
    third = api.get(f"/v1/accounts/acme/transactions?limit=3&cursor={second['next_cursor']}", key=key).get_json()
    # then
    pages = [first, second, third]
    assert [[t["idempotency_key"] for t in p["data"]] for p in pages] == [expected[:3], expected[3:6], expected[6:]]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert third["next_cursor"] is None
    assert first["next_cursor"] == encode_cursor(first["data"][-1]["id"])
    # and the same cursor asked again gives the same page
    again = api.get(f"/v1/accounts/acme/transactions?limit=3&cursor={first['next_cursor']}", key=key).get_json()
    assert again == second


def test_transactions_default_to_25_per_page(api, probe):
    _history(probe, 26)
    body = api.get("/v1/accounts/acme/transactions", key=api.key("accounts:read")).get_json()
    assert len(body["data"]) == 25 and body["has_more"] is True


@pytest.mark.parametrize("cursor", ["garbage", "ZTE6MA", encode_cursor(5) + "!", "MTIz", "x" * 500])
def test_a_cursor_we_did_not_hand_out_is_400(api, probe, cursor):
    _history(probe, 1)
    response = api.get(f"/v1/accounts/acme/transactions?cursor={cursor}", key=api.key("accounts:read"))
    assert response.status_code == 400
    assert error_code(response) == "invalid_cursor"


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5", "9" * 5000])
def test_a_limit_outside_1_to_100_is_422(api, probe, limit):
    _history(probe, 1)
    response = api.get(f"/v1/accounts/acme/transactions?limit={limit}", key=api.key("accounts:read"))
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "limit"


def test_transactions_of_an_unknown_account_are_404(api):
    response = api.get("/v1/accounts/nobody/transactions", key=api.key("accounts:read"))
    assert response.status_code == 404
    assert error_code(response) == "unknown_account"


# -- packages and checkout -----------------------------------------------------------------------------
def test_packages_list_the_price_table(api):
    response = api.get("/v1/packages", key=api.key("usage:write"))
    assert response.status_code == 200
    body = response.get_json()
    assert [p["id"] for p in body["data"]] == [p.id for p in PriceTable.default().packages]
    assert body["data"][0] == {
        "id": "starter",
        "name": "Starter",
        "credits": "10000.000",
        "unit_amount": 1000,
        "currency": "usd",
        "bonus_credits": "0.000",
        "total_credits": "10000.000",
        "payment_methods": ["card"],
        "description": None,
        "stripe_price": None,
    }
    assert (body["has_more"], body["next_cursor"]) == (False, None)


CHECKOUT = {
    "account": "acme",
    "package": "starter",
    "success_url": "https://app.example.com/paid?session={CHECKOUT_SESSION_ID}",
    "cancel_url": "https://app.example.com/cancelled",
}


def test_checkout_without_stripe_configured_is_503_and_writes_nothing(api, probe):
    # given the test app, which has no STRIPE_API_KEY
    key = api.key("checkout:write")
    before = probe.snapshot()
    # when
    response = api.post("/v1/checkout", key=key, json=CHECKOUT)
    # then
    assert response.status_code == 503
    assert error_code(response) == "stripe_unavailable"
    assert probe.snapshot() == before


BAD_CHECKOUTS = [
    ("unknown package", {"package": "mega"}, 404, "unknown_package"),
    ("javascript url", {"success_url": "javascript:alert(1)"}, 422, "invalid_request"),
    ("relative url", {"cancel_url": "/cancelled"}, 422, "invalid_request"),
    ("ftp url", {"cancel_url": "ftp://example.com/x"}, 422, "invalid_request"),
    ("bad account", {"account": "../etc"}, 422, "invalid_request"),
    ("unknown field", {"coupon": "FREE"}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("name", "change", "status", "code"), BAD_CHECKOUTS, ids=[b[0] for b in BAD_CHECKOUTS])
def test_a_bad_checkout_request_is_refused_before_stripe(api, name, change, status, code):
    response = api.post("/v1/checkout", key=api.key("checkout:write"), json={**CHECKOUT, **change})
    assert response.status_code == status
    assert error_code(response) == code
