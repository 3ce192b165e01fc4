"""The sales guard and the database settings: ``billing config get|set``; the guard's figures; ``POST
/v1/checkout`` refused with 409 ``sales_paused`` (before Stripe is asked) once outstanding credits, in tokens,
reach the threshold, one admin alert per crossing, and sales resuming when spending brings the figure back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from billing_core.db.config import BillingConfig, ConfigCache, read_config, set_setting, validate_setting
from billing_core.errors import InvalidSetting, UnknownSetting
from billing_core.ledger.commands import DebitUsage, GrantCredits
from billing_core.pricing.sales_guard import SalesGuard, evaluate, outstanding_mc, record_crossing, sales_state
from tests.integration import paying_stack as _paying

pytestmark = pytest.mark.integration

# The paying stack's fixtures, used by name below.
paying_stack, shop = _paying.paying_stack, _paying.shop
REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
CHECKOUT = {
    "account": "eve",
    "package": "starter",
    "success_url": "https://a.example/ok",
    "cancel_url": "https://a.example/no",
}


def configure(session_factory, **values) -> None:
    with session_factory() as s, s.begin():
        for key, value in values.items():
            set_setting(s, key, value, now=NOW, actor="test")


def grant(probe, account: str, credits: int, key: str) -> None:
    probe.run(GrantCredits.validated(account=account, amount_mc=credits * 1000, idempotency_key=key, reason="t"))


def spend(probe, account: str, credits: int, key: str) -> None:
    probe.run(DebitUsage.validated(account=account, amount_mc=credits * 1000, idempotency_key=key))


def alerts(probe) -> list[tuple[str, str]]:
    return [tuple(r) for r in probe.rows("SELECT kind, dedupe_key FROM admin_alerts ORDER BY id")]


# -- settings -----------------------------------------------------------------------------------------------------
def test_settings_default_then_stored_values_win(session_factory):
    with session_factory() as s:
        assert read_config(s) == BillingConfig(
            upstream_monthly_tokens=None, sales_alert_threshold_percent=80, tokens_per_credit=1000
        )
    configure(session_factory, upstream_monthly_tokens=5_000_000, sales_alert_threshold_percent=90)
    with session_factory() as s:
        config = read_config(s)
    assert (config.upstream_monthly_tokens, config.sales_alert_threshold_percent, config.tokens_per_credit) == (
        5_000_000,
        90,
        1000,
    )


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("upstream_monthly_tokens", 0, InvalidSetting),
        ("upstream_monthly_tokens", "lots", InvalidSetting),
        ("sales_alert_threshold_percent", 101, InvalidSetting),
        ("sales_alert_threshold_percent", None, InvalidSetting),
        ("tokens_per_credit", 1.5, InvalidSetting),
        ("tokens_per_credit", True, InvalidSetting),
        ("upstream_tokens", 1, UnknownSetting),
    ],
)
def test_a_bad_setting_is_refused(key, value, error):
    with pytest.raises(error) as refused:
        validate_setting(key, value)
    assert refused.value.details["key"] == key


def test_the_config_cache_reads_again_only_after_its_ttl_or_an_invalidation(session_factory):
    cache = ConfigCache(session_factory, ttl_seconds=3600)
    assert cache.get().sales_alert_threshold_percent == 80
    configure(session_factory, sales_alert_threshold_percent=70)
    assert cache.get().sales_alert_threshold_percent == 80  # still the cached read
    cache.invalidate()
    assert cache.get().sales_alert_threshold_percent == 70


@pytest.fixture
def billing(database_url: str, session_factory):
    env = {**os.environ, "DATABASE_URL": database_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_cli.main", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_billing_config_get_and_set(billing, session_factory, probe):
    listed = billing("config", "get")
    assert listed.returncode == 0, listed.stderr
    assert "sales_alert_threshold_percent = 80\t(default)" in listed.stdout
    assert "upstream_monthly_tokens = null\t(default)" in listed.stdout

    changed = billing("config", "set", "upstream_monthly_tokens", "100000000", "--by", "ops:ana")
    assert (changed.returncode, changed.stdout.strip()) == (0, "upstream_monthly_tokens = 100000000")
    assert billing("config", "get", "upstream_monthly_tokens").stdout.strip() == "100000000"
    assert "by ops:ana" in billing("config", "get").stdout
    assert probe.rows("SELECT key, value, updated_by FROM billing_config") == [
        ("upstream_monthly_tokens", 100000000, "ops:ana")
    ]
    assert billing("config", "set", "upstream_monthly_tokens", "null").returncode == 0
    assert billing("config", "get", "upstream_monthly_tokens").stdout.strip() == "null"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("set", "sales_alert_threshold_percent", "150"), "invalid_setting"),
        (("set", "sales_alert_threshold_percent", "eighty"), "invalid_setting"),
        (("set", "no_such_key", "1"), "unknown_setting"),
        (("get", "no_such_key"), "unknown_setting"),
    ],
)
def test_billing_config_refuses_bad_keys_and_values_with_exit_2(billing, probe, args, code):
    result = billing("config", *args)
    assert result.returncode == 2
    assert code in result.stderr and result.stderr.count("\n") == 1
    assert probe.scalar("SELECT count(*) FROM billing_config") == 0


# -- the figures ---------------------------------------------------------------------------------------------------
def test_outstanding_credits_are_what_customers_hold_available_and_held(session_factory, probe):
    grant(probe, "a", 300, "g1")
    grant(probe, "b", 200, "g2")
    spend(probe, "b", 50, "u1")
    with session_factory() as s:
        assert outstanding_mc(s) == 450_000
        # the same figure as summing every wallet's accounts
        assert outstanding_mc(s) == probe.scalar(
            "SELECT sum(balance_mc) FROM ledger_accounts WHERE kind IN ('available', 'held')"
        )


def test_the_guard_trips_at_the_threshold_with_integer_figures():
    config = BillingConfig(upstream_monthly_tokens=10_000_000, sales_alert_threshold_percent=80)
    below = evaluate(7_999_999, config, NOW)  # 7,999.999 credits: 7,999,999 tokens
    at = evaluate(8_000_000, config, NOW)
    assert (below.paused, below.outstanding_tokens, below.threshold_tokens) == (False, 7_999_999, 8_000_000)
    assert (at.paused, at.outstanding_tokens, at.capacity_tokens) == (True, 8_000_000, 10_000_000)
    assert evaluate(10**15, BillingConfig(), NOW).paused is False  # no capacity configured: no guard


# -- the guard on checkout ------------------------------------------------------------------------------------------
def test_checkout_is_paused_at_the_threshold_and_resumes_below_it(shop, session_factory, probe):
    stack, api = shop
    key = api.key("checkout:write")
    guard = lambda: stack.app.extensions["billing_sales_guard"]  # noqa: E731
    # capacity 10M tokens, 80 %: sales pause at 8,000 credits outstanding (1,000 tokens per credit)
    configure(session_factory, upstream_monthly_tokens=10_000_000)
    grant(probe, "eve", 7_999, "g1")

    # below: sales open, no alert
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 201
    assert alerts(probe) == []

    # reaching the threshold: 409 sales_paused with the figures, before Stripe is asked; one alert
    grant(probe, "eve", 1, "g2")
    guard().invalidate()
    sessions_before = stack.sessions_created()
    refused = api.post("/v1/checkout", key=key, json=CHECKOUT)
    assert refused.status_code == 409
    assert refused.get_json()["error"] == {
        "code": "sales_paused",
        "message": refused.get_json()["error"]["message"],
        "outstanding_tokens": 8_000_000,
        "capacity_tokens": 10_000_000,
        "threshold_percent": 80,
    }
    assert stack.sessions_created() == sessions_before
    guard().invalidate()
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 409
    assert [kind for kind, _ in alerts(probe)] == ["sales_paused"]
    payload = probe.scalar("SELECT payload FROM admin_alerts")
    assert (payload["outstanding_tokens"], payload["threshold_tokens"]) == (8_000_000, 8_000_000)

    # spending brings it back below: sales resume, recorded once
    spend(probe, "eve", 1, "u1")
    guard().invalidate()
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 201
    guard().invalidate()
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 201
    assert [kind for kind, _ in alerts(probe)] == ["sales_paused", "sales_resumed"]

    # a new crossing is a new alert
    grant(probe, "eve", 1, "g3")
    guard().invalidate()
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 409
    kinds = alerts(probe)
    assert [kind for kind, _ in kinds] == ["sales_paused", "sales_resumed", "sales_paused"]
    assert len({dedupe for _, dedupe in kinds}) == 3
    assert all(dedupe.startswith(f"{kind}:") for kind, dedupe in kinds)


def test_raising_the_capacity_resumes_sales(shop, session_factory, probe):
    stack, api = shop
    key = api.key("checkout:write")
    configure(session_factory, upstream_monthly_tokens=1_000_000)
    grant(probe, "eve", 900, "g1")
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 409
    configure(session_factory, upstream_monthly_tokens=2_000_000)
    stack.app.extensions["billing_sales_guard"].invalidate()
    assert api.post("/v1/checkout", key=key, json=CHECKOUT).status_code == 201
    assert [kind for kind, _ in alerts(probe)] == ["sales_paused", "sales_resumed"]


def test_the_guard_state_is_cached_for_its_ttl(session_factory, probe):
    configure(session_factory, upstream_monthly_tokens=1_000_000)
    guard = SalesGuard(session_factory, ttl_seconds=3600)
    assert guard.state().paused is False
    grant(probe, "eve", 900, "g1")
    assert guard.state().paused is False  # the cached figure
    guard.invalidate()
    assert guard.state().paused is True
    with session_factory() as s:
        assert sales_state(s).as_dict()["paused"] is True  # the uncached read for the admin API


def test_two_processes_noticing_the_same_crossing_record_one_alert(session_factory, probe):
    configure(session_factory, upstream_monthly_tokens=1_000_000)
    grant(probe, "eve", 900, "g1")
    guards = [SalesGuard(session_factory, ttl_seconds=3600) for _ in range(8)]
    barrier = threading.Barrier(len(guards))
    results: list[bool] = []

    def notice(guard: SalesGuard) -> None:
        barrier.wait()
        results.append(guard.state().paused)

    threads = [threading.Thread(target=notice, args=(g,)) for g in guards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * len(guards)
    assert [kind for kind, _ in alerts(probe)] == ["sales_paused"]

    # and recording the same state again does nothing
    with session_factory() as s, s.begin():
        assert record_crossing(s, sales_state(s)) is False


def test_billing_sales_guard_shows_the_figures(billing, session_factory, probe):
    assert "no guard" in billing("sales-guard").stdout
    configure(session_factory, upstream_monthly_tokens=1_000_000)
    grant(probe, "eve", 900, "g1")
    shown = billing("sales-guard")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == (
        "sales PAUSED: outstanding 900.000 credits = 900000 tokens; pause at 800000 tokens (80% of 1000000)"
    )
