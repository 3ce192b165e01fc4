"""The internal checks beat runs every 5 minutes (``reconcile/health.py``): a Stripe event or usage report
pending too long, a ledger balance changed behind the pipeline's back, and a notifications backlog each become
one admin alert, once per occurrence however often the checks run; a healthy pipeline alerts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.ledger.commands import DebitUsage, PurchaseCredits
from billing_core.notify.channels import render
from billing_core.notify.outbox import Message, enqueue_admin_alerts, notify
from billing_core.reconcile.health import (
    INBOX_LAG_KIND,
    INVARIANT_KIND,
    OUTBOX_BACKLOG_KIND,
    Thresholds,
    find_problems,
    run_health_checks,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _alerts(probe: Any) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in probe.rows("SELECT kind, dedupe_key FROM admin_alerts ORDER BY id")]


def _healthy_ledger(probe: Any) -> None:
    # A minute before the checks: the debit's low-balance notice is due, but not late.
    probe.run(PurchaseCredits("acme", 10_000, "buy", external_ref="cs_1"), now=NOW - timedelta(minutes=1))
    probe.run(DebitUsage("acme", 2_000, "use"), now=NOW - timedelta(minutes=1))


def test_a_healthy_pipeline_alerts_nothing(session_factory, probe):
    _healthy_ledger(probe)
    with session_factory.begin() as session:  # fresh rows everywhere: nothing has waited long
        session.execute(
            text("INSERT INTO stripe_events (id, type, payload, received_at) VALUES ('evt_new', 'ping', '{}', :t)"),
            {"t": NOW - timedelta(minutes=1)},
        )
        notify(session, "low_balance", "low:acme:1", payload={"available": "1.000"}, account="acme", now=NOW)
    report = run_health_checks(session_factory, now=NOW)
    assert report.ok and report.alerted == ()
    assert _alerts(probe) == []


def test_a_stale_pending_event_alerts_once_however_often_the_checks_run(session_factory, probe):
    with session_factory.begin() as session:
        session.execute(
            text(
                "INSERT INTO stripe_events (id, type, payload, received_at) VALUES "
                "('evt_old', 'charge.refunded', '{}', :old), ('evt_older', 'charge.refunded', '{}', :older), "
                "('evt_done', 'charge.refunded', '{}', :older)"
            ),
            {"old": NOW - timedelta(minutes=6), "older": NOW - timedelta(minutes=9)},
        )
        session.execute(text("UPDATE stripe_events SET status = 'processed' WHERE id = 'evt_done'"))
    first = run_health_checks(session_factory, now=NOW)
    assert [p.kind for p in first.problems] == [INBOX_LAG_KIND] and len(first.alerted) == 1
    (problem,) = first.problems
    assert problem.payload["inbox"] == "stripe_events" and problem.payload["oldest_id"] == "evt_older"
    assert problem.payload["stale"] == 2 and problem.payload["oldest_age_seconds"] == 540

    again = run_health_checks(session_factory, now=NOW + timedelta(minutes=5))
    assert len(again.problems) == 1 and again.alerted == ()  # still stuck: still one alert
    assert _alerts(probe) == [(INBOX_LAG_KIND, "inbox_lag:stripe_events:evt_older")]

    # Once handled, the next one stuck behind it is a new occurrence.
    with session_factory.begin() as session:
        session.execute(text("UPDATE stripe_events SET status = 'processed' WHERE id = 'evt_older'"))
    later = run_health_checks(session_factory, now=NOW + timedelta(minutes=10))
    assert len(later.alerted) == 1
    assert _alerts(probe)[-1] == (INBOX_LAG_KIND, "inbox_lag:stripe_events:evt_old")

    # The threshold is the operators' (BILLING_HEALTH_INBOX_LAG_SECONDS).
    lenient = find_problems(session_factory, now=NOW, thresholds=Thresholds(inbox_lag=timedelta(hours=1)))
    assert lenient.ok


def test_a_stale_usage_report_alerts_and_the_alert_reaches_the_outbox(session_factory, probe):
    with session_factory.begin() as session:
        session.execute(
            text(
                "INSERT INTO usage_inbox (idempotency_key, fingerprint, account, partition, amount_mc, report, "
                "received_at) VALUES ('u1', 'f', 'acme', 0, 5, '{}', :t)"
            ),
            {"t": NOW - timedelta(minutes=30)},
        )
    report = run_health_checks(session_factory, now=NOW)
    assert [p.payload["inbox"] for p in report.problems] == ["usage_inbox"]
    assert run_health_checks(session_factory, now=NOW).alerted == ()
    with session_factory.begin() as session:
        assert enqueue_admin_alerts(session, now=NOW) == 1
    rows = probe.rows("SELECT kind, audience, payload FROM notifications ORDER BY id")
    assert {(r[0], r[1]) for r in rows} == {(INBOX_LAG_KIND, "admins")}
    message = Message(1, INBOX_LAG_KIND, "alert:1", "email", None, "admins", rows[0][2], 1, NOW, None)
    subject, plain, html = render(message)
    assert "usage_inbox" in subject and "pending for over 300 seconds" in plain and "<html" in html


def test_a_balance_changed_behind_the_pipelines_back_is_an_invariant_alert_once(session_factory, probe, engine):
    _healthy_ledger(probe)
    with engine.begin() as conn:
        conn.execute(text("UPDATE ledger_accounts SET balance_mc = balance_mc + 7 WHERE code = 'available:acme'"))
    first = run_health_checks(session_factory, now=NOW)
    (problem,) = first.problems
    assert problem.kind == INVARIANT_KIND and len(first.alerted) == 1
    assert "balance_mismatch" in problem.payload["checks"]
    assert any(f.get("code") == "available:acme" for f in problem.payload["findings"])
    assert run_health_checks(session_factory, now=NOW + timedelta(minutes=5)).alerted == ()  # same findings

    # Another corruption on top: other findings, another alert.
    with engine.begin() as conn:
        conn.execute(text("UPDATE ledger_accounts SET balance_mc = balance_mc + 1 WHERE code = 'available:acme'"))
    assert len(run_health_checks(session_factory, now=NOW + timedelta(minutes=10)).alerted) == 1
    assert [k for k, _ in _alerts(probe)] == [INVARIANT_KIND, INVARIANT_KIND]
    message = Message(1, INVARIANT_KIND, "alert:1", "email", None, "admins", problem.payload, 1, NOW, None)
    subject, plain, _html = render(message)
    assert "balance_mismatch" in subject and "available:acme" in plain


def test_an_outbox_backlog_alerts_once_an_hour(session_factory, probe):
    with session_factory.begin() as session:
        for n in range(3):
            notify(session, "low_balance", f"low:{n}", payload={}, account="acme", now=NOW - timedelta(minutes=20))
    # 6 rows (email and webhook each) due for 20 minutes: older than the 15 minutes allowed.
    report = run_health_checks(session_factory, now=NOW)
    (problem,) = report.problems
    assert problem.kind == OUTBOX_BACKLOG_KIND and problem.payload["due"] == 6
    assert problem.payload["oldest_age_seconds"] == 1200
    assert run_health_checks(session_factory, now=NOW + timedelta(minutes=5)).alerted == ()
    assert len(run_health_checks(session_factory, now=NOW + timedelta(hours=1)).alerted) == 1  # still there

    # Many rows due, however fresh, are a backlog too; few fresh ones are not.
    fresh = Thresholds(outbox_backlog=5, outbox_age=timedelta(hours=2))
    assert [p.kind for p in find_problems(session_factory, now=NOW, thresholds=fresh).problems] == [OUTBOX_BACKLOG_KIND]
    roomy = Thresholds(outbox_backlog=6, outbox_age=timedelta(hours=2))
    assert find_problems(session_factory, now=NOW, thresholds=roomy).ok
    message = Message(1, OUTBOX_BACKLOG_KIND, "alert:1", "email", None, "admins", problem.payload, 1, NOW, None)
    assert "6 due and unsent" in render(message)[0]


def test_billing_health_prints_the_problems_and_exits_1(session_factory, probe, database_url):
    with session_factory.begin() as session:
        session.execute(
            text("INSERT INTO stripe_events (id, type, payload, received_at) VALUES ('evt_s', 'x', '{}', :t)"),
            {"t": datetime.now(UTC) - timedelta(hours=1)},
        )
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "billing_cli.main", "health"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "inbox_lag: 1 row(s) of stripe_events pending" in result.stdout
    assert result.stdout.strip().endswith("health FAILED (1 problems)")
    assert _alerts(probe) == []  # printed, not recorded
