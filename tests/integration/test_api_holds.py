"""Holds over HTTP (place, replay, conflict, capture, release) and pricing without charging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing_core.ledger.commands import ClawBack, GrantCredits, PurchaseCredits

pytestmark = pytest.mark.integration

GPT4O = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}
GPT4O_MC = 3_500  # 1,000 x 2,500 / 1M + 100 x 10,000 / 1M = 2.5 + 1.0 credits
AGENT = {"type": "agent", "code": "profile_my_data", "quantity": 2}
AGENT_MC = 40_000  # 2 x 20 credits


def error(response) -> dict:
    return response.get_json()["error"]


@pytest.fixture
def key(api) -> str:
    return api.key("holds:write")


@pytest.fixture
def funded(probe) -> None:
    probe.run(PurchaseCredits("acme", 10_000, "buy-1"))


def place(api, key, **body):
    return api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h1", **body})


# -- place ---------------------------------------------------------------------------------------------
def test_placing_a_hold_moves_credits_from_available_to_held(api, probe, key, funded):
    # when
    response = place(api, key, credits="3.000", ttl_seconds=60)
    # then
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"].startswith("hold_")
    assert (body["account"], body["credits"], body["status"], body["replayed"]) == ("acme", "3.000", "pending", False)
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=60)
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.held_mc) == (7_000, 3_000)
    assert probe.rows("SELECT id, status, amount_mc FROM holds") == [(body["id"], "pending", 3_000)]
    # the client's key is namespaced in the ledger
    assert probe.scalar("SELECT kind FROM ledger_entries WHERE idempotency_key = 'hold:h1'") == "hold"
    probe.assert_consistent()


def test_a_hold_priced_from_items_reserves_their_price(api, probe, key):
    # given
    probe.run(PurchaseCredits("acme", 100_000, "buy-1"))
    # when
    response = place(api, key, items=[GPT4O, AGENT])
    # then
    assert response.status_code == 201
    assert response.get_json()["credits"] == "43.500"
    assert probe.wallet("acme").held_mc == GPT4O_MC + AGENT_MC


def test_replaying_a_hold_returns_the_same_hold_and_writes_nothing(api, probe, key, funded):
    # given
    first = place(api, key, credits="3").get_json()
    before = probe.snapshot()
    # when
    again = place(api, key, credits="3.000")
    # then
    assert again.status_code == 201
    assert again.get_json()["id"] == first["id"]
    assert again.get_json()["replayed"] is True
    assert probe.snapshot() == before


def test_the_same_key_with_another_amount_is_409_and_writes_nothing(api, probe, key, funded):
    # given
    place(api, key, credits="3")
    before = probe.snapshot()
    # when
    response = place(api, key, credits="4")
    # then
    assert response.status_code == 409
    assert error(response)["code"] == "idempotency_conflict"
    assert probe.snapshot() == before


def test_a_hold_above_the_available_credits_is_402_and_writes_nothing(api, probe, key, funded):
    # given
    before = probe.snapshot()
    # when
    response = place(api, key, credits="10.001")
    # then
    assert response.status_code == 402
    assert error(response) | {"message": None} == {
        "code": "insufficient_credits",
        "message": None,
        "account": "acme",
        "required": "10.001",
        "available": "10.000",
    }
    assert probe.snapshot() == before


def test_a_hold_on_a_negative_account_is_402_account_negative(api, probe, key, funded):
    # given a refund of more than is left
    probe.run(ClawBack("acme", 12_000, "refund-1"))
    probe.run(GrantCredits("acme", 1_000, "promo"))  # pays part of the debt, still negative
    before = probe.snapshot()
    # when
    response = place(api, key, credits="0.5")
    # then
    assert response.status_code == 402
    assert error(response)["code"] == "account_negative"
    assert probe.snapshot() == before


def test_a_client_key_cannot_take_a_stripe_purchase_key(api, probe, key, funded):
    # when a client names its hold after a checkout session
    response = place(api, key, credits="1", idempotency_key="checkout:cs_9")
    # then the purchase's own key stays free for the webhook
    assert response.status_code == 201
    assert probe.scalar("SELECT count(*) FROM ledger_entries WHERE idempotency_key = 'checkout:cs_9'") == 0
    probe.run(PurchaseCredits("acme", 5_000, "checkout:cs_9"))
    assert probe.wallet("acme").available_mc == 14_000


def test_a_hold_for_an_unknown_account_is_404(api, probe, key):
    response = place(api, key, credits="1")
    assert response.status_code == 404
    assert error(response)["code"] == "unknown_account"
    assert probe.wallet("acme") is None


BAD_HOLDS = [
    ("credits and items", {"credits": "1", "items": [GPT4O]}, "invalid_request", "credits"),
    ("neither credits nor items", {}, "invalid_request", "credits"),
    ("float credits", {"credits": 1.5}, "invalid_amount", None),
    ("zero credits", {"credits": "0"}, "invalid_amount", "credits"),
    ("negative credits", {"credits": "-1"}, "invalid_amount", "credits"),
    ("items worth nothing", {"items": [{**GPT4O, "input_tokens": 0, "output_tokens": 0}]}, "invalid_amount", "items"),
    ("unknown model", {"items": [{**GPT4O, "model": "gpt-9"}]}, "unknown_model", "items[0].model"),
    ("empty items", {"items": []}, "invalid_request", "items"),
    ("ttl too long", {"credits": "1", "ttl_seconds": 8 * 86400}, "invalid_request", "ttl_seconds"),
    ("ttl not an int", {"credits": "1", "ttl_seconds": "60"}, "invalid_request", "ttl_seconds"),
    ("metadata a list", {"credits": "1", "metadata": [1]}, "invalid_request", "metadata"),
    ("key with a space", {"credits": "1", "idempotency_key": "a b"}, "invalid_request", "idempotency_key"),
    ("key too long", {"credits": "1", "idempotency_key": "k" * 251}, "invalid_request", "idempotency_key"),
    ("unknown field", {"credits": "1", "amount": 5}, "invalid_request", "amount"),
]


@pytest.mark.parametrize(("name", "body", "code", "field"), BAD_HOLDS, ids=[b[0] for b in BAD_HOLDS])
def test_a_bad_hold_request_is_422_and_writes_nothing(api, probe, key, funded, name, body, code, field):
    before = probe.snapshot()
    response = place(api, key, **body)
    assert response.status_code == 422
    assert error(response)["code"] == code
    if field:
        assert error(response)["field"] == field
    assert probe.snapshot() == before


# -- capture and release -------------------------------------------------------------------------------
@pytest.fixture
def hold_id(api, key, funded) -> str:
    return place(api, key, credits="3").get_json()["id"]


def test_capturing_below_the_hold_returns_the_rest(api, probe, key, hold_id):
    # when
    response = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={"credits": "1.250"})
    # then
    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["status"], body["credits"], body["captured"]) == (hold_id, "captured", "3.000", "1.250")
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.held_mc) == (8_750, 0)
    assert probe.system("usage_revenue") == 1_250
    assert probe.scalar(f"SELECT kind FROM ledger_entries WHERE idempotency_key = 'capture:{hold_id}'") == "capture"
    probe.assert_consistent()


def test_capturing_priced_items_takes_their_price(api, probe, key, hold_id):
    response = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={"items": [GPT4O]})
    assert response.status_code == 200
    assert response.get_json()["captured"] == "3.500"  # above the 3.000 held: the excess comes from available
    assert probe.wallet("acme").available_mc == 10_000 - GPT4O_MC
    assert probe.system("usage_revenue") == GPT4O_MC


def test_a_capture_replayed_by_default_key_is_a_no_op_and_another_amount_conflicts(api, probe, key, hold_id):
    # given
    first = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={"credits": "1"})
    before = probe.snapshot()
    # when
    again = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={"credits": "1"})
    other = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={"credits": "2"})
    # then
    assert first.status_code == again.status_code == 200
    assert again.get_json()["replayed"] is True
    assert other.status_code == 409 and error(other)["code"] == "idempotency_conflict"
    assert probe.snapshot() == before


def test_releasing_a_hold_returns_everything_and_needs_no_body(api, probe, key, hold_id):
    # when
    response = api.post(f"/v1/holds/{hold_id}/release", key=key)
    # then
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["captured"]) == ("released", None)
    wallet = probe.wallet("acme")
    assert (wallet.available_mc, wallet.held_mc) == (10_000, 0)
    assert probe.system("usage_revenue") == 0
    assert probe.scalar(f"SELECT kind FROM ledger_entries WHERE idempotency_key = 'release:{hold_id}'") == "release"


def test_capture_after_release_is_409_and_writes_nothing(api, probe, key, hold_id):
    # given
    api.post(f"/v1/holds/{hold_id}/release", key=key, json={"idempotency_key": "rel-1"})
    before = probe.snapshot()
    # when
    response = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={"credits": "1"})
    # then
    assert response.status_code == 409
    assert error(response) | {"message": None} == {
        "code": "hold_not_pending",
        "message": None,
        "hold_id": hold_id,
        "status": "released",
    }
    assert probe.snapshot() == before


@pytest.mark.parametrize("hold", ["hold_doesnotexist", "not-a-hold", "hold_UPPER"])
def test_capturing_a_hold_that_does_not_exist_is_404(api, probe, key, funded, hold):
    before = probe.snapshot()
    response = api.post(f"/v1/holds/{hold}/capture", key=key, json={"credits": "1"})
    assert response.status_code == 404
    assert error(response)["code"] == "unknown_hold"
    assert probe.snapshot() == before


def test_a_capture_body_must_say_how_much(api, probe, key, hold_id):
    before = probe.snapshot()
    response = api.post(f"/v1/holds/{hold_id}/capture", key=key, json={})
    assert response.status_code == 422
    assert error(response)["code"] == "invalid_request"
    assert probe.snapshot() == before


# -- estimate ------------------------------------------------------------------------------------------
def test_an_estimate_prices_items_without_charging(api, probe):
    # given
    probe.run(PurchaseCredits("acme", 10_000, "buy-1"))
    key = api.key("usage:write")
    before = probe.snapshot()
    # when
    response = api.post("/v1/estimate", key=key, json={"items": [GPT4O, AGENT]})
    # then
    assert response.status_code == 200
    body = response.get_json()
    assert body["credits"] == "43.500"
    assert [line["credits"] for line in body["lines"]] == ["3.500", "40.000"]
    assert "available" not in body
    assert probe.snapshot() == before


@pytest.mark.parametrize(("items", "sufficient"), [([GPT4O], True), ([GPT4O, AGENT], False)])
def test_an_estimate_for_an_account_says_whether_it_can_pay(api, probe, items, sufficient):
    # given 10 credits spendable, and 5 more in a grant that has expired but not been swept yet
    probe.run(PurchaseCredits("acme", 10_000, "buy-1"))
    long_ago = datetime.now(UTC) - timedelta(days=2)
    probe.run(GrantCredits("acme", 5_000, "promo", expires_at=long_ago + timedelta(hours=1)), now=long_ago)
    # when
    body = api.post("/v1/estimate", key=api.key(), json={"items": items, "account": "acme"}).get_json()
    # then the expired grant does not count
    assert (body["available"], body["sufficient"]) == ("10.000", sufficient)


def test_an_estimate_for_an_unknown_account_has_nothing_available(api):
    body = api.post("/v1/estimate", key=api.key(), json={"items": [GPT4O], "account": "nobody"}).get_json()
    assert (body["available"], body["sufficient"]) == ("0.000", False)


def test_an_estimate_with_an_unknown_model_is_422(api):
    response = api.post("/v1/estimate", key=api.key(), json={"items": [{**GPT4O, "provider": "acme-ai"}]})
    assert response.status_code == 422
    assert error(response)["code"] == "unknown_model"
    assert error(response)["field"] == "items[0].provider"
