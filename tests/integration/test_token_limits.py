"""Token limits and plan quotas on the real Redis and PostgreSQL: windows and their boundaries, all or nothing,
one Redis call per batch, holds and usage over HTTP, Redis down (open and closed), the flush, the usage view."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from freezegun import freeze_time
from sqlalchemy import event

from billing_core.errors import LimitsUnavailable, QuotaExceeded, RateLimited
from billing_core.intake import usage_inbox
from billing_core.intake.usage_reports import accept_reports, partition_of
from billing_core.ledger.commands import PurchaseCredits
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.limits import LimitPolicy, TokenLimits, flush_usage_records
from tests.integration.conftest import limits_prefix

pytestmark = pytest.mark.integration

GPT4O = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}
GPT4O_TOKENS = 1_500
GPT4O_MC = 6_000  # 1,200 x 2,500 / 1M + 300 x 10,000 / 1M = 3 + 3 credits
HOURLY = LimitPolicy("test", hourly=1_000, daily=None, monthly=None)
DAILY = LimitPolicy("test", hourly=None, daily=5_000, monthly=None)
MONTHLY = LimitPolicy("test", hourly=None, daily=None, monthly=100_000, upgrade_url="/billing/upgrade")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class CountingRedis(redis.Redis):
    """A real client that counts the commands it sends (a pipeline's commands count as one round trip)."""

    commands: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


@pytest.fixture
def client(session_factory) -> CountingRedis:  # session_factory: the counters of this worker are reset
    import os

    found = CountingRedis.from_url(os.environ["REDIS_URL"])
    found.commands = []
    return found


@pytest.fixture
def limits(client) -> TokenLimits:
    return TokenLimits(client, prefix=limits_prefix(), policy_cache_seconds=0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def current(limits: TokenLimits, account: str, policy: LimitPolicy = HOURLY, now: datetime | None = None) -> list[int]:
    return [w.current for w in limits.check(account, 0, policy, now).windows]


# -- windows and boundaries --------------------------------------------------------------------------------
def test_the_hourly_limit_resets_at_the_top_of_the_hour(limits):
    with freeze_time("2026-12-02 13:59:58") as clock:
        limits.admit({"acme": 1_000}, {"acme": HOURLY})
        with pytest.raises(RateLimited) as refused:
            limits.admit({"acme": 1}, {"acme": HOURLY})
        assert refused.value.details | {"account": None} == {
            "retry_after": 2,
            "limit": 1_000,
            "window": "hour",
            "current": 1_000,
            "requested": 1,
            "account": None,
        }
        clock.move_to("2026-12-02 13:59:59.500")
        with pytest.raises(RateLimited) as refused:
            limits.admit({"acme": 1}, {"acme": HOURLY})
        assert refused.value.details["retry_after"] == 1  # half a second, rounded up
        # when the hour turns, the previous hour's count no longer counts
        clock.move_to("2026-12-02 14:00:00")
        limits.admit({"acme": 1_000}, {"acme": HOURLY})
        assert current(limits, "acme") == [1_000, 2_000, 2_000]


def test_the_daily_limit_resets_at_midnight_utc(limits):
    with freeze_time("2026-12-02 20:00:00") as clock:
        limits.admit({"acme": 3_000}, {"acme": DAILY})
        clock.move_to("2026-12-02 23:59:00")
        limits.admit({"acme": 2_000}, {"acme": DAILY})
        state = limits.check("acme", 1, DAILY)
        assert isinstance(state.refusal, RateLimited)
        assert (state.refusal.details["window"], state.refusal.details["retry_after"]) == ("day", 60)
        clock.move_to("2026-12-03 00:00:00")
        assert limits.check("acme", 5_000, DAILY).refusal is None
        limits.admit({"acme": 5_000}, {"acme": DAILY})


def test_the_monthly_quota_resets_on_the_first_of_the_month_and_answers_402s_shape(limits):
    with freeze_time("2026-12-31 23:59:59") as clock:
        limits.admit({"acme": 99_000}, {"acme": MONTHLY})
        with pytest.raises(QuotaExceeded) as refused:
            limits.admit({"acme": 1_001}, {"acme": MONTHLY})
        assert {k: refused.value.details[k] for k in ("metric", "current", "limit", "percentage", "upgrade_url")} == {
            "metric": "tokens_month",
            "current": 99_000,
            "limit": 100_000,
            "percentage": 99.0,
            "upgrade_url": "/billing/upgrade",
        }
        limits.admit({"acme": 1_000}, {"acme": MONTHLY})  # exactly to the quota is fine
        clock.move_to("2027-01-01 00:00:00")
        limits.admit({"acme": 100_000}, {"acme": MONTHLY})
        assert current(limits, "acme", MONTHLY) == [100_000, 100_000, 100_000]


def test_the_quota_is_named_before_a_rate_limit_when_both_are_exceeded(limits):
    both = LimitPolicy("test", hourly=10, daily=10, monthly=10, upgrade_url="/billing/upgrade")
    limits.admit({"acme": 10}, {"acme": both})
    with pytest.raises(QuotaExceeded):
        limits.admit({"acme": 1}, {"acme": both})


def test_unlimited_windows_never_refuse(limits):
    unlimited = LimitPolicy("test", None, None, None)
    limits.admit({"acme": 10**12}, {"acme": unlimited})
    assert limits.check("acme", 10**12, unlimited).refusal is None
    assert [w.unlimited for w in limits.check("acme", 0, unlimited).windows] == [True, True, True]


def test_a_zero_limit_refuses_even_a_request_of_no_tokens(limits):
    closed = LimitPolicy("test", hourly=0, daily=None, monthly=None)
    assert isinstance(limits.check("acme", 0, closed).refusal, RateLimited)
    assert limits.check("acme", 0, HOURLY).refusal is None  # not at its limit yet


# -- all or nothing, one round trip ------------------------------------------------------------------------
def test_a_batch_is_all_or_nothing_across_accounts(limits):
    limits.admit({"b": 900}, {"b": HOURLY})
    with pytest.raises(RateLimited) as refused:
        limits.admit({"a": 500, "b": 200, "c": 10}, {"a": HOURLY, "b": HOURLY, "c": HOURLY})
    assert refused.value.details["account"] == "b"
    # nothing of the batch was counted
    assert current(limits, "a")[0] == 0 and current(limits, "b")[0] == 900 and current(limits, "c")[0] == 0
    limits.admit({"a": 500, "b": 100, "c": 10}, {"a": HOURLY, "b": HOURLY, "c": HOURLY})
    assert [current(limits, x)[0] for x in "abc"] == [500, 1_000, 10]


def test_a_batch_of_many_accounts_costs_one_redis_call(limits, client):
    accounts = {f"user_{i}": 10 + i for i in range(200)}
    policies = dict.fromkeys(accounts, HOURLY)
    limits.admit({"warm": 1}, {"warm": HOURLY})  # loads the script into Redis (EVALSHA's fallback) once
    client.commands.clear()
    limits.admit(accounts, policies, record={"user_0": 5, "settled": 7})
    assert client.commands == ["EVALSHA"]
    client.commands.clear()
    limits.check("user_3", 10, HOURLY)
    assert client.commands == ["MGET"]
    assert current(limits, "user_0")[0] == 15 and current(limits, "settled")[0] == 7


def test_the_script_is_loaded_again_when_redis_has_forgotten_it(limits, client):
    limits.admit({"acme": 1}, {"acme": HOURLY})
    client.script_flush()
    limits.admit({"acme": 1}, {"acme": HOURLY})
    assert current(limits, "acme")[0] == 2


def test_recorded_usage_is_never_refused_and_release_gives_admitted_tokens_back(limits):
    limits.admit({"acme": 1_000}, {"acme": HOURLY})
    limits.record({"acme": 500})  # a hold's settlement: admitted when the hold was placed
    assert current(limits, "acme")[0] == 1_500
    admitted = limits.admit({"other": 300}, {"other": HOURLY})
    limits.release(admitted)
    assert current(limits, "other") == [0, 0, 0]


def test_a_usage_request_is_counted_once_and_its_duplicates_never(limits, session_factory):
    table = PriceTable.default()
    reports = accept_reports(
        {"events": [{"idempotency_key": f"k{i}", "account": "acme", "items": [GPT4O]} for i in range(3)]}, table
    )
    usage_inbox.store_usage(session_factory, reports, admit=limits.gate(table))
    usage_inbox.store_usage(session_factory, reports, admit=limits.gate(table))  # a client's retry
    assert current(limits, "acme")[0] == 3 * GPT4O_TOKENS


def test_a_commit_that_fails_after_admission_gives_the_tokens_back(limits, session_factory):
    table = PriceTable.default()
    reports = accept_reports({"idempotency_key": "k1", "account": "acme", "items": [GPT4O]}, table)
    gate = limits.gate(table)
    admitted: list[list[int]] = []

    def admit_then_fail_at_commit(session, new):
        undo = gate(session, new)
        admitted.append(current(limits, "acme"))

        def boom(_session):
            raise RuntimeError("the commit failed")

        event.listen(session, "before_commit", boom, once=True)
        return undo

    with pytest.raises(RuntimeError, match="the commit failed"):
        usage_inbox.store_usage(session_factory, reports, admit=admit_then_fail_at_commit)
    assert admitted == [[GPT4O_TOKENS] * 3]  # it was counted, then given back
    assert current(limits, "acme") == [0, 0, 0]
    assert usage_inbox.usage_status(session_factory, "k1") is None


# -- Redis unreachable ---------------------------------------------------------------------------------------
def test_redis_down_fails_open_with_one_warning(caplog):
    down = TokenLimits(redis.Redis(port=closed_port(), socket_connect_timeout=0.5), prefix=limits_prefix())
    with caplog.at_level(logging.WARNING, logger="billing_core.pricing.limits"):
        assert down.admit({"acme": 10**9}, {"acme": HOURLY}) is None
        state = down.check("acme", 10**9, HOURLY)
        down.admit({"acme": 1}, {"acme": HOURLY})
    assert state.refusal is None and state.counted is False
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # rate limited in the log, not one per request


def test_redis_down_fails_closed_when_configured():
    down = TokenLimits(
        redis.Redis(port=closed_port(), socket_connect_timeout=0.5), prefix=limits_prefix(), fail_closed=True
    )
    with pytest.raises(LimitsUnavailable) as refused:
        down.admit({"acme": 1}, {"acme": HOURLY})
    assert refused.value.code == "limits_unavailable"
    with pytest.raises(LimitsUnavailable):
        down.check("acme", 1, HOURLY)


# -- the flush -------------------------------------------------------------------------------------------------
def records(probe) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in probe.rows(
            "SELECT account, metric, period, period_start, quantity FROM usage_records ORDER BY account, period"
        )
    ]


def test_the_flush_writes_usage_records_idempotently_and_never_lowers_them(limits, session_factory, probe, client):
    with freeze_time("2026-12-02 13:20:00"):
        limits.admit({"acme": 700, "beta": 5}, {"acme": HOURLY, "beta": HOURLY})
        first = flush_usage_records(limits, session_factory)
    assert first.counters == 6
    expected = [
        ("acme", "tokens", "day", utc("2026-12-02 00:00"), 700),
        ("acme", "tokens", "hour", utc("2026-12-02 13:00"), 700),
        ("acme", "tokens", "month", utc("2026-12-01 00:00"), 700),
        ("beta", "tokens", "day", utc("2026-12-02 00:00"), 5),
        ("beta", "tokens", "hour", utc("2026-12-02 13:00"), 5),
        ("beta", "tokens", "month", utc("2026-12-01 00:00"), 5),
    ]
    assert records(probe) == expected
    stamps = probe.rows("SELECT updated_at FROM usage_records ORDER BY account, period")
    # a re-run changes nothing; the counters that have not moved left the touched set
    again = flush_usage_records(limits, session_factory)
    assert again.counters == 0 and records(probe) == expected
    assert probe.rows("SELECT updated_at FROM usage_records ORDER BY account, period") == stamps
    # more usage: the next flush raises the records
    with freeze_time("2026-12-02 13:40:00"):
        limits.admit({"acme": 100}, {"acme": HOURLY})
    flush_usage_records(limits, session_factory)
    assert [r[4] for r in records(probe) if r[0] == "acme"] == [800, 800, 800]
    # a counter lower than the record (Redis lost and restarted) never lowers it
    hour_key = f"{limits_prefix()}:h:2026120213:acme"
    client.set(hour_key, 3)
    client.sadd(limits.touched, hour_key)
    flush_usage_records(limits, session_factory)
    assert [r[4] for r in records(probe) if r[0] == "acme"] == [800, 800, 800]


def test_the_usage_view_falls_back_to_usage_records_when_redis_is_down(limits, session_factory):
    with freeze_time("2026-12-02 13:20:00"):
        limits.admit({"acme": 700}, {"acme": MONTHLY})
        flush_usage_records(limits, session_factory)
        down = TokenLimits(redis.Redis(port=closed_port(), socket_connect_timeout=0.5), prefix=limits_prefix())
        state = down.usage_view("acme", MONTHLY, session_factory=session_factory)
    assert state.counted is False
    assert [(w.metric, w.current) for w in state.windows] == [
        ("tokens_hour", 700),
        ("tokens_day", 700),
        ("tokens_month", 700),
    ]


# -- over HTTP ---------------------------------------------------------------------------------------------------
def app_limits(receiver_app) -> TokenLimits:
    return receiver_app.extensions["billing_limits"]


@pytest.fixture
def funded(probe) -> None:
    probe.run(PurchaseCredits("acme", 1_000_000, "buy-1"))


def put_limits(api, account="acme", **body):
    response = api.put(f"/v1/accounts/{account}", key=api.key("accounts:write"), json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_hold_over_the_hourly_limit_is_refused_with_429_and_reserves_nothing(api, probe, receiver_app, funded):
    # given an account whose hour holds 1,000 tokens, 900 of them used
    put_limits(api, limits={"hourly_tokens": 1_000})
    app_limits(receiver_app).record({"acme": 900})
    key = api.key("holds:write")
    before = probe.snapshot()
    # when a hold for 1,500 tokens is asked for
    with freeze_time(datetime.now(UTC).replace(minute=59, second=30, microsecond=0)):
        response = api.post(
            "/v1/holds",
            key=key,
            json={"account": "acme", "idempotency_key": "h1", "items": [GPT4O]},
        )
    # then
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    error = response.get_json()["error"]
    assert error == {
        "code": "rate_limited",
        "message": error["message"],
        "retry_after": 30,
        "limit": 1_000,
        "window": "hour",
        "current": 900,
        "requested": GPT4O_TOKENS,
        "account": "acme",
    }
    assert probe.snapshot() == before


def test_a_hold_over_the_monthly_quota_is_refused_with_402_in_seed_002s_shape(api, probe, receiver_app, funded):
    put_limits(api, plan="free")  # 100,000 tokens a month
    app_limits(receiver_app).record({"acme": 99_000})
    key = api.key("holds:write")
    before = probe.snapshot()
    response = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h1", "items": [GPT4O]})
    assert response.status_code == 402
    error = response.get_json()["error"]
    assert {k: error[k] for k in ("code", "metric", "current", "limit", "percentage", "upgrade_url")} == {
        "code": "quota_exceeded",
        "metric": "tokens_month",
        "current": 99_000,
        "limit": 100_000,
        "percentage": 99.0,
        "upgrade_url": "/billing/upgrade",
    }
    assert probe.snapshot() == before


def test_a_hold_of_credits_alone_is_refused_only_at_the_limit(api, receiver_app, funded):
    put_limits(api, limits={"hourly_tokens": 1_000})
    key = api.key("holds:write")
    app_limits(receiver_app).record({"acme": 999})
    placed = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h1", "credits": "1"})
    assert placed.status_code == 201
    app_limits(receiver_app).record({"acme": 1})
    refused = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h2", "credits": "1"})
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "rate_limited"


def test_a_usage_request_over_a_limit_is_refused_whole_and_nothing_is_stored(api, probe, receiver_app, funded):
    put_limits(api, limits={"hourly_tokens": 4_000})
    put_limits(api, account="other")
    key = api.key("usage:write")
    events = [{"idempotency_key": f"u{i}", "account": "acme", "items": [GPT4O]} for i in range(3)]
    events.append({"idempotency_key": "o1", "account": "other", "items": [GPT4O]})
    response = api.post("/v1/usage", key=key, json={"events": events})
    assert response.status_code == 429
    assert response.get_json()["error"]["current"] == 0 and response.get_json()["error"]["requested"] == 4_500
    assert probe.scalar("SELECT count(*) FROM usage_inbox") == 0
    assert current(app_limits(receiver_app), "acme")[0] == 0
    assert current(app_limits(receiver_app), "other")[0] == 0  # all or nothing: the other account neither
    # within the limit, the same request shape goes through and is counted once
    accepted = api.post("/v1/usage", key=key, json={"events": events[1:]})
    assert accepted.status_code == 202 and accepted.get_json()["accepted"] == 3
    assert current(app_limits(receiver_app), "acme")[0] == 2 * GPT4O_TOKENS
    assert current(app_limits(receiver_app), "other")[0] == GPT4O_TOKENS


def test_a_report_settling_a_hold_is_never_refused(api, probe, receiver_app, funded):
    put_limits(api, limits={"hourly_tokens": 1_000})
    hold = api.post(
        "/v1/holds", key=api.key("holds:write"), json={"account": "acme", "idempotency_key": "h1", "credits": "10"}
    ).get_json()
    app_limits(receiver_app).record({"acme": 1_000})  # the hour is full
    report = {"idempotency_key": "settle-1", "account": "acme", "items": [GPT4O], "hold_id": hold["id"]}
    response = api.post("/v1/usage", key=api.key("usage:write"), json=report)
    assert response.status_code == 202
    assert current(app_limits(receiver_app), "acme")[0] == 1_000 + GPT4O_TOKENS  # counted, not checked
    usage_inbox.apply_partition(probe.session_factory, partition_of("acme"))
    assert probe.scalar("SELECT status FROM holds WHERE id = :h", h=hold["id"]) == "captured"


def receiver_with(database_url: str, **settings: Any):
    from billing_core.settings import Settings
    from webhook_receiver import create_app

    base = {
        "database_url": database_url,
        "redis_url": __import__("os").environ["REDIS_URL"],
        "stripe_webhook_secret": "whsec_limits",
        "BILLING_DB_POOL_SIZE": 2,
        "BILLING_LIMITS_PREFIX": limits_prefix(),
        "BILLING_LIMITS_POLICY_CACHE_SECONDS": 0,
    }
    return create_app(Settings(**{**base, **settings}))


def test_redis_down_over_http_fails_open_and_the_ledger_charges_exactly(database_url, probe, funded, caplog):
    from tests.integration.conftest import ApiClient

    probe.run(PurchaseCredits("acme", 2_000_000, "buy-2"))  # 3,000 credits in all
    app = receiver_with(database_url, BILLING_LIMITS_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    api = ApiClient(app.test_client(), probe.session_factory)
    events = [{"idempotency_key": f"u{i}", "account": "acme", "items": [GPT4O]} for i in range(400)]  # 600k tokens
    with caplog.at_level(logging.WARNING, logger="billing_core.pricing.limits"):
        response = api.post("/v1/usage", key=api.key("usage:write"), json={"events": events})
    assert response.status_code == 202 and response.get_json()["accepted"] == 400
    assert any("fail open" in r.getMessage() for r in caplog.records)
    usage_inbox.apply_partition(probe.session_factory, partition_of("acme"))
    assert probe.available("acme") == 3_000_000 - 400 * GPT4O_MC  # past the hourly limit, charged exactly
    probe.assert_consistent()


def test_redis_down_over_http_fails_closed_when_configured(database_url, probe, funded):
    from tests.integration.conftest import ApiClient

    app = receiver_with(
        database_url, BILLING_LIMITS_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", BILLING_LIMITS_FAIL_CLOSED=True
    )
    api = ApiClient(app.test_client(), probe.session_factory)
    response = api.post(
        "/v1/usage", key=api.key("usage:write"), json={"idempotency_key": "u1", "account": "acme", "items": [GPT4O]}
    )
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "limits_unavailable"
    assert probe.scalar("SELECT count(*) FROM usage_inbox") == 0
    hold = api.post(
        "/v1/holds", key=api.key("holds:write"), json={"account": "acme", "idempotency_key": "h1", "items": [GPT4O]}
    )
    assert hold.status_code == 503
    assert probe.scalar("SELECT count(*) FROM holds") == 0


# -- plans, overrides and the usage view over HTTP ---------------------------------------------------------------
def test_an_accounts_plan_and_limits_are_set_and_shown(api, receiver_app):
    body = put_limits(api, plan="free", limits={"hourly_tokens": 1_000, "daily_tokens": None})
    assert (body["plan"], body["limits"]) == (
        "free",
        {"hourly_tokens": 1_000, "daily_tokens": None, "monthly_tokens": 100_000, "upgrade_url": "/billing/upgrade"},
    )
    # overrides merge; a profile change leaves them alone
    put_limits(api, limits={"monthly_tokens": 5})
    put_limits(api, name="Acme")
    shown = api.get("/v1/accounts/acme", key=api.key("accounts:read")).get_json()
    assert (shown["plan"], shown["name"]) == ("free", "Acme")
    assert (shown["limits"]["hourly_tokens"], shown["limits"]["daily_tokens"], shown["limits"]["monthly_tokens"]) == (
        1_000,
        None,
        5,
    )
    # null clears the overrides, and the plan back to the default
    cleared = put_limits(api, plan=None, limits=None)
    default = PriceTable.default().spec
    assert cleared["plan"] == default.default_plan
    assert cleared["limits"]["hourly_tokens"] == default.plans[default.default_plan].hourly_tokens


def test_an_unknown_plan_or_a_negative_limit_is_refused_and_changes_nothing(api, probe):
    key = api.key("accounts:write")
    unknown = api.put("/v1/accounts/acme", key=key, json={"plan": "platinum"})
    assert unknown.status_code == 422
    assert unknown.get_json()["error"]["code"] == "unknown_plan"
    assert "free" in unknown.get_json()["error"]["known_plans"]
    negative = api.put("/v1/accounts/acme", key=key, json={"limits": {"hourly_tokens": -1}})
    assert negative.status_code == 422
    assert probe.scalar("SELECT count(*) FROM wallets") == 0


def test_the_usage_view_shows_each_window_against_its_limit(api, receiver_app, funded):
    put_limits(api, plan="free", limits={"hourly_tokens": 3_000})
    key = api.key("usage:write")
    for i in range(2):
        assert api.post("/v1/usage", key=key, json={"idempotency_key": f"u{i}", "account": "acme", "items": [GPT4O]})
    with freeze_time(datetime.now(UTC)):
        body = api.get("/v1/accounts/acme/usage", key=api.key("accounts:read")).get_json()
    lines = {line["metric"]: line for line in body["usage"]}
    assert (body["plan"], body["counted"], body["upgrade_url"]) == ("free", True, "/billing/upgrade")
    assert {m: (v["current"], v["limit"], v["percentage"], v["unlimited"]) for m, v in lines.items()} == {
        "tokens_hour": (3_000, 3_000, 100.0, False),
        "tokens_day": (3_000, 2_000_000, 0.15, False),
        "tokens_month": (3_000, 100_000, 3.0, False),
    }
    assert lines["tokens_hour"]["remaining"] == 0


def test_the_usage_view_of_an_unknown_account_is_404(api):
    response = api.get("/v1/accounts/nobody/usage", key=api.key("accounts:read"))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "unknown_account"


# -- the CLI ---------------------------------------------------------------------------------------------------
def billing(database_url: str, *args: str):
    import subprocess
    import sys
    from pathlib import Path

    env = {**__import__("os").environ, "DATABASE_URL": database_url, "BILLING_LIMITS_PREFIX": limits_prefix()}
    return subprocess.run(
        [sys.executable, "-m", "billing_cli.main", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_sets_a_plan_and_overrides_and_shows_usage(database_url, probe, limits):
    done = billing(database_url, "limits", "set", "acme", "--plan", "free", "--hourly", "5000", "--daily", "unlimited")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "acme: plan free  hourly 5,000  daily unlimited  monthly 100,000 tokens"
    assert probe.rows("SELECT plan, limit_overrides FROM wallets WHERE account = 'acme'") == [
        ("free", {"hourly_tokens": 5000, "daily_tokens": None})
    ]
    limits.admit({"acme": 1_500}, {})
    shown = billing(database_url, "limits", "show", "acme")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "acme: plan free"
    assert "tokens_hour" in lines[1] and "1,500 / 5,000" in lines[1] and "(30.0%)" in lines[1]
    assert "tokens_day" in lines[2] and "unlimited" in lines[2]
    assert "tokens_month" in lines[3] and "(1.5%)" in lines[3]
    # an unknown plan changes nothing; an unknown account has nothing to show
    refused = billing(database_url, "limits", "set", "acme", "--plan", "platinum")
    assert refused.returncode == 1 and "unknown_plan" in refused.stderr
    assert billing(database_url, "limits", "show", "nobody").returncode == 1
    cleared = billing(database_url, "limits", "set", "acme", "--plan", "default", "--clear-overrides")
    assert cleared.returncode == 0 and "plan payg" in cleared.stdout
    assert probe.rows("SELECT plan, limit_overrides FROM wallets WHERE account = 'acme'") == [(None, {})]


def test_a_hold_captured_over_http_counts_its_tokens_once(api, receiver_app, probe, funded):
    # Apps that settle holds over HTTP, not with usage reports, still use up their windows.
    key = api.key("holds:write")
    hold = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h1", "items": [GPT4O]})
    assert hold.status_code == 201
    assert current(app_limits(receiver_app), "acme")[0] == 0  # a hold checks, it does not count
    capture = {"items": [GPT4O, GPT4O]}
    assert api.post(f"/v1/holds/{hold.json['id']}/capture", key=key, json=capture).status_code == 200
    assert current(app_limits(receiver_app), "acme") == [2 * GPT4O_TOKENS] * 3
    replay = api.post(f"/v1/holds/{hold.json['id']}/capture", key=key, json=capture)
    assert replay.status_code == 200 and replay.json["replayed"] is True
    assert current(app_limits(receiver_app), "acme")[0] == 2 * GPT4O_TOKENS  # not counted again
