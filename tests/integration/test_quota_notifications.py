"""Quota notices on the real Redis and PostgreSQL: ``quota_warning`` when usage takes an account's monthly
token counter across 80 % of its quota, ``quota_exhausted`` across 100 %, once per account, month and level,
written in the transaction that stores (and counts) the usage; replays and retries write nothing more, and the
next month re-arms both levels."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import event, text

from billing_core.intake import usage_inbox
from billing_core.intake.usage_reports import accept_reports
from billing_core.ledger.commands import PurchaseCredits
from billing_core.notify.channels import render
from billing_core.notify.outbox import Message
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.limits import LimitPolicy, TokenLimits, crossed_level
from tests.integration.conftest import limits_prefix

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 10, 12, tzinfo=UTC)
QUOTA = 10_000  # tokens a month: the free plan's quota, overridden for small numbers


@pytest.fixture
def limits(session_factory) -> TokenLimits:  # session_factory: this worker's counters are reset
    import os

    import redis

    return TokenLimits(redis.Redis.from_url(os.environ["REDIS_URL"]), prefix=limits_prefix(), policy_cache_seconds=0)


@pytest.fixture
def on_free(probe, session_factory) -> None:
    probe.run(PurchaseCredits("acme", 1_000_000, "buy-1"))  # 1,000 credits: far more than the tokens cost
    with session_factory.begin() as s:
        s.execute(
            text("UPDATE wallets SET plan = 'free', limit_overrides = CAST(:o AS jsonb) WHERE account = 'acme'"),
            {"o": json.dumps({"monthly_tokens": QUOTA})},
        )


def report(key: str, tokens: int, account: str = "acme") -> dict[str, Any]:
    item = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": tokens, "output_tokens": 0}
    return {"idempotency_key": key, "account": account, "items": [item]}


def use(session_factory, limits: TokenLimits, *reports: dict[str, Any]) -> usage_inbox.StoreResult:
    table = PriceTable.default()
    accepted = accept_reports({"events": list(reports)}, table)
    return usage_inbox.store_usage(session_factory, accepted, admit=limits.gate(table))


def notices(session_factory) -> list[Any]:
    with session_factory() as s:
        return s.execute(
            text(
                "SELECT kind, dedupe_key, account, payload FROM notifications WHERE channel = 'email' "
                "AND kind LIKE 'quota%' ORDER BY id"
            )
        ).all()


def test_80_then_100_percent_once_each_replays_write_nothing_and_the_next_month_rearms(
    session_factory, limits, on_free
):
    with freeze_time("2026-12-10 12:00:00"):
        use(session_factory, limits, report("u1", 7_000))  # 70 %: nothing yet
        assert notices(session_factory) == []

        crossing = report("u2", 1_500)  # 85 %: the warning
        use(session_factory, limits, crossing)
        [warning] = notices(session_factory)
        assert (warning.kind, warning.dedupe_key, warning.account) == (
            "quota_warning",
            "quota:acme:2026-12:80",
            "acme",
        )
        assert warning.payload == {
            "account": "acme",
            "metric": "tokens_month",
            "current": 8_500,
            "limit": QUOTA,
            "percentage": 85.0,
            "level": 80,
            "upgrade_url": "/billing/upgrade",
            "period": "2026-12",
            "resets_at": "2027-01-01T00:00:00+00:00",
        }

        use(session_factory, limits, report("u3", 1_000))  # 95 %: still below 100, nothing more
        stored = use(session_factory, limits, crossing)  # the crossing batch replayed: a duplicate, not counted
        assert stored.duplicates == ["u2"]
        assert [n.kind for n in notices(session_factory)] == ["quota_warning"]

        use(session_factory, limits, report("u4", 500))  # exactly 100 %: exhausted
        use(session_factory, limits, report("u4", 500))  # replayed
        assert [(n.kind, n.dedupe_key) for n in notices(session_factory)] == [
            ("quota_warning", "quota:acme:2026-12:80"),
            ("quota_exhausted", "quota:acme:2026-12:100"),
        ]
        exhausted = notices(session_factory)[1].payload
        assert (exhausted["current"], exhausted["percentage"], exhausted["level"]) == (10_000, 100.0, 100)

    with freeze_time("2027-01-02 08:00:00"):  # a new month, a new counter: both levels armed again
        use(session_factory, limits, report("u5", 9_000))
        assert [n.dedupe_key for n in notices(session_factory)][2:] == ["quota:acme:2027-01:80"]
        use(session_factory, limits, report("u6", 1_000))
        assert [n.dedupe_key for n in notices(session_factory)][2:] == [
            "quota:acme:2027-01:80",
            "quota:acme:2027-01:100",
        ]

    # every channel has its row, and the email reads as the customer sees it
    with session_factory() as s:
        assert s.execute(text("SELECT count(*) FROM notifications WHERE kind LIKE 'quota%'")).scalar() == 8
    first = notices(session_factory)[0]
    message = Message(1, first.kind, first.dedupe_key, "email", "acme", "account", first.payload, 1, NOW, None)
    subject, plain, _ = render(message)
    assert subject == "acme has used 85.0% of its monthly token quota"
    assert "8,500 of 10,000 tokens this month (2026-12)" in plain and "/billing/upgrade" in plain


def test_one_batch_crossing_both_levels_sends_exhausted_alone_and_other_accounts_nothing(
    session_factory, limits, on_free
):
    with freeze_time("2026-12-10 12:00:00"):
        # acme goes from 0 to 100 % in one request; user_9 (payg: no monthly quota) is counted beside it
        use(session_factory, limits, report("a1", 6_000), report("a2", 4_000), report("b1", 50_000, "user_9"))
    assert [(n.kind, n.account) for n in notices(session_factory)] == [("quota_exhausted", "acme")]


def test_no_notice_statement_when_nothing_crossed(session_factory, limits, on_free, engine):
    statements: list[str] = []

    def seen(conn, cursor, statement, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with freeze_time("2026-12-10 12:00:00"):
            use(session_factory, limits, report("u1", 7_000), report("u2", 100))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements and not [s for s in statements if "notifications" in s]


def test_a_rolled_back_crossing_gives_its_notice_back_and_its_retry_notifies_once(session_factory, limits, on_free):
    table = PriceTable.default()
    accepted = accept_reports(report("u1", 9_000), table)
    gate = limits.gate(table)

    def admit_then_fail_at_commit(session, new):
        undo = gate(session, new)

        def boom(_session):
            raise RuntimeError("the commit failed")

        event.listen(session, "before_commit", boom, once=True)
        return undo

    with freeze_time("2026-12-10 12:00:00"):
        with pytest.raises(RuntimeError, match="the commit failed"):
            usage_inbox.store_usage(session_factory, accepted, admit=admit_then_fail_at_commit)
        assert notices(session_factory) == []  # rolled back with the reports; the tokens were given back
        usage_inbox.store_usage(session_factory, accepted, admit=gate)
    assert [n.kind for n in notices(session_factory)] == ["quota_warning"]


def test_settled_hold_tokens_cross_too_and_the_levels_use_integer_arithmetic(limits):
    policy = LimitPolicy("free", hourly=None, daily=None, monthly=QUOTA, upgrade_url="/billing/upgrade")
    with freeze_time("2026-12-10 12:00:00"):
        # recorded (a hold's settlement: never refused) still reports the level it crossed
        admitted = limits.admit({}, {"acme": policy}, record={"acme": 12_000})
        assert admitted is not None
        [crossing] = admitted.crossings
        assert (crossing.level, crossing.before, crossing.current, crossing.percentage) == (100, 0, 12_000, 120.0)
        # an unlimited month (no policy, or payg's) is not even answered by the script
        other = limits.admit({"acme2": 5}, {})
        assert other is not None and other.crossings == ()
    assert [crossed_level(b, a, 5) for b, a in [(3, 4), (4, 5), (4, 4), (0, 5), (0, 3)]] == [80, 100, None, 100, None]
    assert crossed_level(7_999, 8_000, QUOTA) == 80 and crossed_level(8_000, 9_999, QUOTA) is None


def test_a_hold_captured_over_http_notifies_the_level_its_tokens_cross(session_factory, limits, on_free):
    # a capture's tokens are counted after its commit (record_settled), with the account's policy from the
    # database: crossing 80 % writes its notice in a transaction of its own, once
    table = PriceTable.default()
    with freeze_time("2026-12-10 12:00:00"):
        assert limits.record_settled(session_factory, {"acme": 7_000}, table) == 0
        assert notices(session_factory) == []
        assert limits.record_settled(session_factory, {"acme": 1_500}, table) > 0  # a row per channel
        assert limits.record_settled(session_factory, {"acme": 100}, table) == 0
        assert limits.record_settled(session_factory, {"acme": 0}, table) == 0
    [notice] = notices(session_factory)
    assert (notice.kind, notice.dedupe_key) == ("quota_warning", "quota:acme:2026-12:80")
    assert (notice.payload["current"], notice.payload["limit"]) == (8_500, QUOTA)


def test_a_capture_reads_a_plan_read_minutes_ago_without_asking_the_database_again(session_factory, on_free, engine):
    # given a process that read acme's plan a minute ago (past the checks' 5 s, within the notices' 5 min)
    import os

    import redis

    now = [1_000.0]
    limits = TokenLimits(redis.Redis.from_url(os.environ["REDIS_URL"]), prefix=limits_prefix(), clock=lambda: now[0])
    table = PriceTable.default()
    with session_factory() as session:
        assert limits.policies(session, ["acme"], table)["acme"].monthly == QUOTA
    now[0] += 60
    statements: list[str] = []

    def seen(conn, cursor, statement, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with freeze_time("2026-12-10 12:00:00"):
            # when a capture's tokens cross 80 % of the quota
            assert limits.record_settled(session_factory, {"acme": 8_500}, table) > 0
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    # then the notice was written from the cached plan: no read of the wallet's plan, only the notice's insert
    assert not [s for s in statements if "limit_overrides" in s]
    assert [n.kind for n in notices(session_factory)] == ["quota_warning"]
