"""Requests per API key (flask-limiter on the run's Redis): over the limit 429 in the API's error shape with
Retry-After; another key unaffected; unkeyed routes not counted; Redis down: requests still answered."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from tests.integration.conftest import ApiClient, limits_prefix

pytestmark = pytest.mark.integration


def receiver_with(database_url: str, **settings: Any):
    from billing_core.settings import Settings
    from webhook_receiver import create_app

    base = {
        "database_url": database_url,
        "redis_url": os.environ["REDIS_URL"],
        "stripe_webhook_secret": "whsec_rate",
        "BILLING_DB_POOL_SIZE": 2,
        "BILLING_LIMITS_PREFIX": limits_prefix(),
        "BILLING_API_RATE_LIMIT": "3/minute",
    }
    return create_app(Settings(**{**base, **settings}))


@pytest.fixture(scope="module")
def low_limit_app(database_url):
    return receiver_with(database_url)


def test_a_key_over_its_request_limit_gets_429_and_another_key_does_not(low_limit_app, session_factory):
    api = ApiClient(low_limit_app.test_client(), session_factory)
    busy, quiet = api.key("accounts:read"), api.key("accounts:read")
    answers = [api.get("/v1/accounts/acme", key=busy).status_code for _ in range(3)]
    assert answers == [404, 404, 404]  # counted, whatever the answer
    refused = api.get("/v1/accounts/acme", key=busy)
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["code"] == "rate_limited" and error["limit"] == "3 per 1 minute"
    assert 1 <= error["retry_after"] <= 61  # the window's end, rounded up
    assert refused.headers["Retry-After"] == str(error["retry_after"])
    assert set(error) == {"code", "message", "retry_after", "limit"}
    # another key has its own count
    assert api.get("/v1/accounts/acme", key=quiet).status_code == 404


def test_requests_without_a_valid_key_and_probes_are_not_counted(low_limit_app, session_factory):
    api = ApiClient(low_limit_app.test_client(), session_factory)
    for _ in range(5):
        assert api.get("/v1/accounts/acme").status_code == 401  # fails auth, not 429
        assert api.get("/v1/accounts/acme", key="bk_not_a_key").status_code == 401
        assert api.get("/healthz").status_code == 200
        assert api.post("/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=1,v1=x"}).status_code == 400
    key = api.key("accounts:read")
    assert [api.get("/v1/accounts/acme", key=key).status_code for _ in range(3)] == [404, 404, 404]


def test_redis_down_the_request_limit_fails_open_and_answers(database_url, session_factory, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = receiver_with(database_url, redis_url=f"redis://127.0.0.1:{port}/0", BILLING_API_RATE_LIMIT="1000/minute")
    api = ApiClient(app.test_client(), session_factory)
    key = api.key("accounts:read")
    with caplog.at_level("WARNING"):
        answers = [api.get("/v1/accounts/acme", key=key).status_code for _ in range(3)]
    assert answers == [404, 404, 404]
    assert any("fall" in r.getMessage().lower() or "rate limit" in r.getMessage().lower() for r in caplog.records)


def test_check_and_holds_count_on_the_keys_counter_once_each(low_limit_app, session_factory):
    # They count in their token check's Redis call, not through flask-limiter: the same counter, once each.
    api = ApiClient(low_limit_app.test_client(), session_factory)
    key = api.key("accounts:read", "holds:write")
    assert api.post("/v1/check", json={"account": "acme", "credits": "1"}, key=key).status_code == 200
    hold = {"account": "acme", "idempotency_key": "h-1", "credits": "1"}
    assert api.post("/v1/holds", json=hold, key=key).status_code == 404  # unknown account: counted all the same
    assert api.get("/v1/accounts/acme", key=key).status_code == 404  # the third request of the minute
    for refused in (
        api.post("/v1/check", json={"account": "acme", "credits": "1"}, key=key),
        api.post("/v1/holds", json=hold, key=key),
        api.get("/v1/accounts/acme", key=key),
    ):
        assert refused.status_code == 429
        error = refused.get_json()["error"]
        assert error["code"] == "rate_limited" and error["limit"] == "3 per 1 minute"
        assert 1 <= error["retry_after"] <= 61
        assert refused.headers["Retry-After"] == str(error["retry_after"])
    # a check refused at the key's limit reads and writes nothing else: no hold was placed
    assert api.get("/v1/accounts/acme", key=api.key("accounts:read")).status_code == 404


def test_token_limits_on_another_redis_leave_the_count_to_flask_limiter_once(
    database_url, session_factory, redis_db_url
):
    # The token counters on a Redis of their own (another database number): flask-limiter counts every request,
    # and a check must not take one more from the key's counter in its token call.
    import redis

    limits_url = redis_db_url  # this worker's own database number
    limits_redis = redis.Redis.from_url(limits_url)
    for stale in [k for k in limits_redis.scan_iter() if b":api:" in k]:
        limits_redis.delete(stale)
    app = receiver_with(database_url, BILLING_LIMITS_REDIS_URL=limits_url)
    api = ApiClient(app.test_client(), session_factory)
    key = api.key("accounts:read")
    for _ in range(3):
        assert api.post("/v1/check", json={"account": "acme", "credits": "1"}, key=key).status_code == 200
    refused = api.post("/v1/check", json={"account": "acme", "credits": "1"}, key=key)
    assert refused.status_code == 429 and refused.get_json()["error"]["limit"] == "3 per 1 minute"
    # the token Redis holds no request counter: the key's requests were counted in one place
    assert [k for k in limits_redis.scan_iter() if b":api:" in k] == []
