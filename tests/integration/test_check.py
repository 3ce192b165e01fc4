"""``POST /v1/check`` over HTTP on the real PostgreSQL and Redis: every reason it can refuse for, what it answers
when allowed, that a check writes nothing, and ``"reserve": true`` placing the hold it promised."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing_core.ledger.commands import ClawBack, GrantCredits, PurchaseCredits
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.quotes import price_items
from tests.integration.test_token_limits import closed_port, receiver_with

pytestmark = pytest.mark.integration

GPT4O = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}
GPT4O_MC = 3_500  # 1,000 x 2.50 $/1M + 100 x 10.00 $/1M = $0.0035 = 3.5 credits at $0.001 a credit
GPT4O_TOKENS = 1_100
TIER1B = {"type": "tier", "tier": "tier1b"}  # 50 credits per experiment; requires system credits
TIER2 = {"type": "tier", "tier": "tier2"}  # no base fee, own keys allowed
AGENT = {"type": "agent", "code": "profile_my_data"}  # 20 credits


@pytest.fixture
def key(api) -> str:
    return api.key("holds:write")


@pytest.fixture
def funded(probe) -> None:
    probe.run(PurchaseCredits("acme", 100_000, "buy-1"))  # 100 credits


def check(api, key, **body):
    return api.post("/v1/check", key=key, json={"account": "acme", **body})


def test_an_allowed_check_answers_the_estimate_the_windows_and_the_quota_and_writes_nothing(api, probe, key, funded):
    before = probe.snapshot()
    response = check(api, key, items=[GPT4O, TIER1B])
    assert response.status_code == 200
    body = response.get_json()
    assert (body["allowed"], body["reason_code"], body["message"]) == (True, None, None)
    assert (body["account"], body["mode"]) == ("acme", "system")
    assert (body["available"], body["estimate"], body["shortfall"]) == ("100.000", "53.500", "0.000")
    assert body["tokens"] == GPT4O_TOKENS
    assert body["price_version"] == PriceTable.default().version
    assert body["counted"] is True and body["hold"] is None
    # the default plan (payg): 500,000 an hour, 2,000,000 a day, no monthly quota
    hour, day, quota = body["limits"]["hour"], body["limits"]["day"], body["quota"]
    assert (hour["metric"], hour["current"], hour["limit"], hour["remaining"]) == ("tokens_hour", 0, 500_000, 500_000)
    assert (day["metric"], day["limit"], day["unlimited"]) == ("tokens_day", 2_000_000, False)
    assert (quota["metric"], quota["limit"], quota["unlimited"], quota["upgrade_url"]) == (
        "tokens_month",
        None,
        True,
        "/billing/upgrade",
    )
    assert datetime.fromisoformat(hour["resets_at"]) > datetime.now(UTC)
    assert probe.snapshot() == before  # no side effect


def test_the_estimate_of_a_check_is_the_price_a_hold_and_an_estimate_give(api, key, funded):
    items = [GPT4O, AGENT, {**GPT4O, "model": "gpt-4o-mini", "cached_input_tokens": 777}]
    expected = price_items(PriceTable.default(), items).total_mc
    checked = check(api, key, items=items).get_json()["estimate"]
    estimated = api.post("/v1/estimate", key=key, json={"items": items}).get_json()["credits"]
    held = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h", "items": items})
    assert checked == estimated == held.get_json()["credits"] == f"{expected / 1000:.3f}"


def test_a_check_above_what_the_account_can_spend_is_insufficient_credits_with_the_shortfall(api, probe, key):
    probe.run(PurchaseCredits("acme", 3_000, "buy-1"))  # 3 credits
    body = check(api, key, items=[GPT4O]).get_json()
    assert (body["allowed"], body["reason_code"]) == (False, "insufficient_credits")
    assert (body["available"], body["estimate"], body["shortfall"]) == ("3.000", "3.500", "0.500")
    assert body["details"] == {"account": "acme", "required": "3.500", "available": "3.000"}


def test_an_account_nobody_funded_is_insufficient_credits(api, key):
    body = check(api, key, credits="1").get_json()
    assert (body["allowed"], body["reason_code"], body["available"]) == (False, "insufficient_credits", "0.000")


def test_a_negative_account_is_account_negative_whatever_it_holds(api, probe, key, funded):
    probe.run(ClawBack("acme", 120_000, "refund-1"))
    probe.run(GrantCredits("acme", 1_000, "promo"))  # pays part of the 20-credit debt: still negative
    body = check(api, key, credits="1").get_json()
    assert (body["allowed"], body["reason_code"]) == (False, "account_negative")


def test_an_hourly_limit_refuses_with_retry_after_and_the_window(api, probe, key, funded):
    assert api.put("/v1/accounts/acme", key=api.key("accounts:write"), json={"limits": {"hourly_tokens": 1_000}})
    body = check(api, key, items=[GPT4O]).get_json()
    assert (body["allowed"], body["reason_code"]) == (False, "rate_limited")
    assert 0 < body["retry_after"] <= 3_600
    assert body["details"]["window"] == "hour" and body["details"]["limit"] == 1_000
    assert body["limits"]["hour"]["limit"] == 1_000
    assert check(api, key, items=[{**GPT4O, "input_tokens": 800, "output_tokens": 200}]).get_json()["allowed"]


def test_a_monthly_quota_refuses_with_seed_002s_shape(api, probe, key, funded):
    account_key = api.key("accounts:write")
    assert api.put("/v1/accounts/acme", key=account_key, json={"plan": "free"}).status_code == 200  # 100,000 a month
    assert api.put("/v1/accounts/acme", key=account_key, json={"limits": {"monthly_tokens": 1_000}}).status_code == 200
    body = check(api, key, items=[GPT4O]).get_json()
    assert (body["allowed"], body["reason_code"]) == (False, "quota_exceeded")
    details = body["details"]
    assert (details["metric"], details["current"], details["limit"], details["upgrade_url"]) == (
        "tokens_month",
        0,
        1_000,
        "/billing/upgrade",
    )
    assert (body["quota"]["limit"], body["quota"]["unlimited"]) == (1_000, False)


def test_own_key_mode_counts_no_tokens_and_charges_base_fees_only(api, key, funded):
    body = check(api, key, items=[GPT4O, TIER2, AGENT], mode="own").get_json()
    assert (body["allowed"], body["mode"], body["tokens"], body["estimate"]) == (True, "own", 0, "20.000")


def test_a_tier_that_requires_system_credits_refuses_own_keys(api, key, funded):
    body = check(api, key, items=[GPT4O, TIER1B], mode="own").get_json()
    assert (body["allowed"], body["reason_code"], body["estimate"]) == (False, "key_mode_not_allowed", None)


def test_an_unknown_model_is_422_with_the_known_models(api, key, funded):
    response = check(api, key, items=[{**GPT4O, "model": "gpt-9"}])
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "unknown_model" and "gpt-4o" in error["known_models"]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({}, "invalid_request", "credits"),  # neither credits nor items
        ({"credits": "1", "items": [GPT4O]}, "invalid_request", "credits"),  # both
        ({"credits": "1", "mode": "borrowed"}, "invalid_request", "mode"),
        ({"credits": "1", "reserve": True}, "invalid_request", "idempotency_key"),
        ({"credits": "-1"}, "invalid_amount", "credits"),
    ],
)
def test_a_malformed_check_is_422_naming_the_field(api, probe, key, funded, body, code, field):
    before = probe.snapshot()
    response = check(api, key, **body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert probe.snapshot() == before


def test_reserve_places_the_hold_and_a_replay_answers_the_same_hold(api, probe, key, funded):
    first = check(api, key, items=[GPT4O], reserve=True, idempotency_key="call-1", ttl_seconds=120)
    assert first.status_code == 201
    body = first.get_json()
    assert body["allowed"] is True
    hold = body["hold"]
    assert (hold["credits"], hold["status"], hold["replayed"]) == ("3.500", "pending", False)
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.held_mc) == (100_000 - GPT4O_MC, GPT4O_MC)
    # the hold's entry says how it was priced
    meta = probe.scalar("SELECT metadata FROM ledger_entries WHERE idempotency_key = 'hold:call-1'")
    assert meta["price_version"] == PriceTable.default().version and meta["breakdown"][0]["model"] == "gpt-4o"
    again = check(api, key, items=[GPT4O], reserve=True, idempotency_key="call-1", ttl_seconds=120)
    assert again.status_code == 201 and again.get_json()["hold"]["id"] == hold["id"]
    assert again.get_json()["hold"]["replayed"] is True
    assert probe.wallet("acme").held_mc == GPT4O_MC
    # captured like any hold
    captured = api.post(f"/v1/holds/{hold['id']}/capture", key=key, json={"items": [GPT4O]})
    assert captured.status_code == 200 and captured.get_json()["status"] == "captured"
    probe.assert_consistent()


def test_reserve_refused_places_nothing(api, probe, key):
    probe.run(PurchaseCredits("acme", 3_000, "buy-1"))
    before = probe.snapshot()
    response = check(api, key, items=[GPT4O], reserve=True, idempotency_key="call-1")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["allowed"], body["reason_code"], body["hold"]) == (False, "insufficient_credits", None)
    assert probe.snapshot() == before


def test_reserve_needs_the_holds_scope_but_a_plain_check_does_not(api, probe, key, funded):
    reader = api.key("accounts:read")
    assert check(api, reader, credits="1").status_code == 200
    before = probe.snapshot()
    response = check(api, reader, credits="1", reserve=True, idempotency_key="call-1")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "insufficient_scope"
    assert probe.snapshot() == before


def test_redis_down_a_check_fails_open_and_says_the_limits_were_not_counted(database_url, probe, funded):
    from tests.integration.conftest import ApiClient

    app = receiver_with(database_url, BILLING_LIMITS_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    api = ApiClient(app.test_client(), probe.session_factory)
    body = api.post("/v1/check", key=api.key("holds:write"), json={"account": "acme", "items": [GPT4O]}).get_json()
    assert (body["allowed"], body["counted"], body["estimate"]) == (True, False, "3.500")


def test_redis_down_a_check_fails_closed_when_configured(database_url, probe, funded):
    from tests.integration.conftest import ApiClient

    app = receiver_with(
        database_url, BILLING_LIMITS_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", BILLING_LIMITS_FAIL_CLOSED=True
    )
    api = ApiClient(app.test_client(), probe.session_factory)
    key = api.key("holds:write")
    before = probe.snapshot()
    response = api.post(
        "/v1/check",
        key=key,
        json={"account": "acme", "items": [GPT4O], "reserve": True, "idempotency_key": "call-1"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["allowed"], body["reason_code"], body["counted"]) == (False, "limits_unavailable", False)
    assert probe.snapshot() == before
