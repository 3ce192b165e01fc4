"""``/metrics``: the receiver's counters and latency histogram, the database's figures read at scrape time, and
the workers' task counters seen through a shared ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import stripe
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from billing_core.ledger.commands import GrantCredits
from tests.integration.conftest import ApiClient, LedgerProbe
from tests.integration.test_api_rate_limits import receiver_with

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def scrape(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics`` by (name, labels)."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def signed(payload: str, secret: str) -> str:
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=int(time.time()))


def test_requests_webhooks_and_rejections_are_counted_with_their_labels(api: ApiClient) -> None:
    # given a scrape before
    before = scrape(api.client)
    key = api.key("accounts:read")
    event = json.dumps({"id": "evt_metrics_1", "type": "ping.unhandled", "data": {"object": {"id": "x"}}})

    # when a keyed read, a signed webhook, a badly signed one and an unsigned one arrive
    assert api.get("/v1/accounts/nobody_metrics", key=key).status_code == 404
    assert api.post("/webhooks/stripe", data=event, headers={"Stripe-Signature": signed(event, "whsec_test_current")})
    bad = api.post("/webhooks/stripe", data=event, headers={"Stripe-Signature": signed(event, "whsec_wrong")})
    assert bad.status_code == 400
    assert api.post("/webhooks/stripe", data=event).status_code == 400
    after = scrape(api.client)

    # then received counts all three, verified one, rejected by reason
    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("billing_webhooks_received_total") == 3
    assert delta("billing_webhooks_verified_total") == 1
    assert delta("billing_webhooks_rejected_total", reason="invalid_signature") == 1
    assert delta("billing_webhooks_rejected_total", reason="missing_signature") == 1
    assert delta("billing_webhooks_total", outcome="stored") == 1
    # and the latency histogram has the read under its view's name, not its path
    read = {"endpoint": "accounts.get_account", "method": "GET", "status": "404"}
    assert delta("billing_http_request_duration_seconds_count", **read) == 1
    assert delta("billing_http_request_duration_seconds_bucket", **read, le="+Inf") == 1
    assert value(after, "billing_http_request_duration_seconds_sum", **read) > 0
    hook = {"endpoint": "webhooks.stripe_webhook", "method": "POST"}
    assert delta("billing_http_request_duration_seconds_count", **hook, status="400") == 2
    assert not any(
        labels and dict(labels).get("endpoint", "").startswith("/")
        for name, labels in after
        if name.startswith("billing_http_request")
    )


def test_a_429_counts_as_a_limit_hit(database_url: str, session_factory: Any) -> None:
    # given a receiver whose keys may make 2 requests a minute
    app = receiver_with(database_url, BILLING_API_RATE_LIMIT="2/minute")
    api = ApiClient(app.test_client(), session_factory)
    key = api.key("accounts:read")
    before = scrape(api.client)

    # when a key makes a third
    answers = [api.get("/v1/accounts/acme_metrics", key=key).status_code for _ in range(3)]

    # then the third is a 429, counted as the requests limit
    assert answers == [404, 404, 429]
    after = scrape(api.client)
    hit = {"limit": "requests", "code": "rate_limited"}
    assert value(after, "billing_limits_hit_total", **hit) - value(before, "billing_limits_hit_total", **hit) == 1
    assert (
        value(
            after,
            "billing_http_request_duration_seconds_count",
            endpoint="accounts.get_account",
            method="GET",
            status="429",
        )
        >= 1
    )


def test_the_database_figures_match_a_seeded_database(receiver_app: Any, probe: LedgerProbe) -> None:
    # given a grant, inbox rows waiting for an hour, a pending notification and an open discrepancy
    probe.run(GrantCredits("seeded_metrics", 5_000, "grant:metrics"))
    with probe.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO stripe_events (id, type, payload, status, received_at) VALUES "
                "('evt_old', 'checkout.session.completed', '{}', 'pending', now() - interval '1 hour'), "
                "('evt_new', 'checkout.session.completed', '{}', 'pending', now()), "
                "('evt_done', 'checkout.session.completed', '{}', 'processed', now() - interval '2 hours')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO usage_inbox (idempotency_key, fingerprint, account, partition, amount_mc, report, status,"
                " received_at) VALUES ('u_old', 'f', 'seeded_metrics', 0, 10, '{}', 'pending',"
                " now() - interval '30 minutes'), ('u_dead', 'f', 'seeded_metrics', 0, 10, '{}', 'dead', now())"
            )
        )
        conn.execute(
            text(
                "INSERT INTO notifications (kind, dedupe_key, channel, account, status) VALUES "
                "('low_balance', 'n1', 'email', 'seeded_metrics', 'pending'), "
                "('low_balance', 'n2', 'email', 'seeded_metrics', 'sent')"
            )
        )
        conn.execute(
            text("INSERT INTO discrepancies (kind, stripe_id, dedupe_key) VALUES ('amount_differs', 'cs_1', 'd1')")
        )
    app_collector = receiver_app.extensions["billing_metrics"]
    # The failed-read counter belongs to the app, which earlier tests share (one may have counted already).
    errors_before = app_collector._errors
    app_collector._read_at = -float("inf")  # this test's rows, not a scrape cached by an earlier test

    # when /metrics is scraped
    samples = scrape(receiver_app.test_client())

    # then the gauges say what the rows say
    assert value(samples, "billing_inbox_stripe_events_rows", status="pending") == 2
    assert 3590 <= value(samples, "billing_inbox_stripe_events_oldest_age_seconds", status="pending") <= 3700
    assert value(samples, "billing_inbox_stripe_events_rows", status="dead") == 0
    assert value(samples, "billing_inbox_usage_inbox_rows", status="pending") == 1
    assert value(samples, "billing_inbox_usage_inbox_rows", status="dead") == 1
    assert 1790 <= value(samples, "billing_inbox_usage_inbox_oldest_age_seconds", status="pending") <= 1900
    grants = {
        dict(labels)["source"]: v for (name, labels), v in samples.items() if name == "billing_grants_open_millicredits"
    }
    assert sum(grants.values()) == 5_000
    assert value(samples, "billing_system_account_balance_millicredits", account="adjustments") == probe.system(
        "adjustments"
    )
    assert value(samples, "billing_notifications_backlog", status="pending") == 1
    assert value(samples, "billing_reconciliation_open_discrepancies", kind="amount_differs") == 1
    entries = {
        dict(labels)["kind"]: v for (name, labels), v in samples.items() if name == "billing_ledger_entries_total"
    }
    assert sum(entries.values()) == probe.scalar("SELECT count(*) FROM ledger_entries") == 1
    assert value(samples, "billing_db_scrape_errors_total") == errors_before  # this read did not fail

    # and a second scrape within the cache's 10 s reads nothing new
    with probe.engine.begin() as conn:
        conn.execute(text("UPDATE stripe_events SET status = 'processed'"))
    again = scrape(receiver_app.test_client())
    assert value(again, "billing_inbox_stripe_events_rows", status="pending") == 2


WORKER_SIGNALS = """
import sys
from celery import signals
import worker  # the Celery app, and worker.metrics connected to its signals

class Task:
    name = "billing.apply_usage"

signals.task_success.send(sender=Task(), result={})
signals.task_success.send(sender=Task(), result={})
signals.task_failure.send(sender=Task(), task_id="t1", exception=ValueError("boom"))
signals.task_retry.send(sender=Task(), request=None, reason="later")
signals.worker_process_shutdown.send(sender="w", pid=None, exitcode=0)
"""


def test_worker_task_counters_show_on_the_receivers_metrics(
    receiver_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker process that ran tasks, writing to a metrics directory shared with the receiver
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", WORKER_SIGNALS], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("counter_*.db"))

    # when the receiver's /metrics is scraped with that directory
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = scrape(receiver_app.test_client())

    # then the worker's counts are there, by task
    assert value(samples, "billing_tasks_processed_total", task="billing.apply_usage") == 2
    assert value(samples, "billing_tasks_failed_total", task="billing.apply_usage", exception="ValueError") == 1
    assert value(samples, "billing_tasks_retried_total", task="billing.apply_usage") == 1
