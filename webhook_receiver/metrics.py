"""Prometheus metrics of the receiver, and ``/metrics`` for the whole stack.

Under gunicorn set ``PROMETHEUS_MULTIPROC_DIR`` to a directory shared with the workers (``billing dev`` and the
end-to-end stack do): every web and worker process writes its counters there, and ``/metrics`` adds them up
(the workers' are in ``worker/metrics.py``). Figures that live in the database (inbox backlogs, credits,
entries, notifications, discrepancies) are not counted by any process: ``DatabaseCollector`` reads them at
scrape time, at most once every ``DB_CACHE_SECONDS`` per process, so scrapes cannot hammer PostgreSQL.

The request hook (``install``) costs a ``perf_counter`` and one histogram observation per request, with the
labelled child looked up in a dict of our own (prometheus' ``labels()`` takes a lock and builds a tuple).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from billing_core import errors as domain
from billing_core import logs
from billing_core.db.gauges import EntryCounts, Gauges, read_gauges

log = logging.getLogger(__name__)

# -- counted by the web processes ----------------------------------------------------------------------------
WEBHOOKS = Counter("billing_webhooks_total", "Stripe webhook deliveries verified, by outcome", ["outcome"])
WEBHOOKS_RECEIVED = Counter("billing_webhooks_received_total", "Stripe webhook deliveries received")
WEBHOOKS_VERIFIED = Counter("billing_webhooks_verified_total", "Stripe webhook deliveries whose signature matched")
WEBHOOKS_REJECTED = Counter(
    "billing_webhooks_rejected_total", "Stripe webhook deliveries refused, by reason (the error code)", ["reason"]
)
USAGE_EVENTS = Counter("billing_usage_events_total", "Usage reports received by outcome", ["outcome"])
ENQUEUE_FAILURES = Counter("billing_enqueue_failures_total", "Sends to the broker that failed (swept later)")
LIMITS_HIT = Counter(
    "billing_limits_hit_total",
    "Requests refused by a limit (429 rate_limited, 402 quota_exceeded, or a check's refusal), by limit and code",
    ["limit", "code"],
)
# Up to 2.5 s: past that a request is an incident, not a latency.
REQUEST_SECONDS = Histogram(
    "billing_http_request_duration_seconds",
    "HTTP request latency by endpoint (the view's name), method and status",
    ["endpoint", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

_request_children: dict[tuple[str, str, int], Any] = {}


EXTENSION = "billing_metrics"


def install(app: Flask, engine: Engine) -> None:
    """The request hook (latency by endpoint, and a fresh log context: ``request_id``, the URL's ``account``)
    and the database's figures for ``/metrics``."""
    app.extensions[EXTENSION] = DatabaseCollector(engine)

    @app.before_request
    def _started() -> None:
        g.started = time.perf_counter()
        view_args = request.view_args
        logs.new_context(
            request_id=request.environ.get("HTTP_X_REQUEST_ID") or True,  # True: made when first logged
            account=view_args.get("account") if view_args else None,
        )

    @app.after_request
    def _finished(response: Response) -> Response:
        started = g.get("started")
        if started is not None:
            key = (request.endpoint or "unmatched", request.method, response.status_code)
            child = _request_children.get(key)
            if child is None:
                child = _request_children[key] = REQUEST_SECONDS.labels(*key)
            child.observe(time.perf_counter() - started)
        return response


def limit_hit(exc: domain.BillingError | None) -> None:
    """Count a refusal by a limit: ``rate_limited`` (the API key's requests, or a token window) or
    ``quota_exceeded`` (the month's tokens); anything else is not a limit."""
    if isinstance(exc, domain.RateLimited):
        window = exc.details.get("window")
        LIMITS_HIT.labels(f"tokens_{window}" if window else "requests", exc.code).inc()
    elif isinstance(exc, domain.QuotaExceeded):
        LIMITS_HIT.labels(str(exc.details.get("metric") or "tokens_month"), exc.code).inc()


# -- read from the database at scrape time --------------------------------------------------------------------
DB_CACHE_SECONDS = 10.0


class DatabaseCollector(Collector):
    """The database's figures as gauges (and ledger entries as a counter), cached ``DB_CACHE_SECONDS``.

    A failed read is logged and answers nothing (the scrape goes on; ``billing_db_scrape_errors_total`` says it).
    """

    def __init__(self, engine: Engine, cache_seconds: float = DB_CACHE_SECONDS) -> None:
        self.engine, self.cache_seconds = engine, cache_seconds
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._cached: list[Metric] = []
        self._entries = EntryCounts()
        self._errors = 0

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._cached = self._read()
                self._read_at = time.monotonic()
            errors = CounterMetricFamily(
                "billing_db_scrape_errors", "Reads of the database's figures that failed (per process)"
            )
            errors.add_metric([], self._errors)
            return iter([*self._cached, errors])

    def _read(self) -> list[Metric]:
        try:
            with self.engine.connect() as conn:
                gauges = read_gauges(conn)
                entries = self._entries.refresh(conn)
                conn.rollback()
        except Exception as exc:
            self._errors += 1
            log.warning("metrics: the database's figures could not be read: %s", type(exc).__name__)
            return []
        return [*_gauge_metrics(gauges), _entries_metric(entries)]


def _gauge_metrics(gauges: Gauges) -> list[Metric]:
    now = gauges.read_at
    metrics: list[Metric] = []
    for name, what, backlog, statuses in (
        ("stripe_events", "Stripe events", gauges.stripe_events, ("pending", "waiting", "failed", "dead")),
        ("usage_inbox", "usage reports", gauges.usage_inbox, ("pending", "failed", "dead")),
    ):
        rows = GaugeMetricFamily(
            f"billing_inbox_{name}_rows", f"Inbox rows of {what} not done yet, by status", labels=["status"]
        )
        age = GaugeMetricFamily(
            f"billing_inbox_{name}_oldest_age_seconds",
            f"Age of the oldest {what} inbox row not done yet, by status (0 when none)",
            labels=["status"],
        )
        for status in statuses:
            found = backlog.get(status)
            rows.add_metric([status], found.count if found else 0)
            oldest = found.oldest if found else None
            age.add_metric([status], max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
        metrics += [rows, age]
    grants = GaugeMetricFamily(
        "billing_grants_open_millicredits",
        "Credits left in customers' grants, by source (debt: what wallets owe, negative)",
        labels=["source"],
    )
    for source, mc in sorted(gauges.grants_open_mc.items()):
        grants.add_metric([source], mc)
    system = GaugeMetricFamily(
        "billing_system_account_balance_millicredits",
        "Balance of each system ledger account (customers hold minus their sum)",
        labels=["account"],
    )
    for kind, mc in sorted(gauges.system_balances_mc.items()):
        system.add_metric([kind], mc)
    notifications = GaugeMetricFamily(
        "billing_notifications_backlog", "Notifications not sent, by status", labels=["status"]
    )
    for status in ("pending", "dead"):
        found = gauges.notifications.get(status)
        notifications.add_metric([status], found.count if found else 0)
    pending = gauges.notifications.get("pending")
    pending_age = GaugeMetricFamily(
        "billing_notifications_oldest_pending_age_seconds", "Age of the oldest pending notification (0 when none)"
    )
    pending_age.add_metric([], max((now - pending.oldest).total_seconds(), 0.0) if pending and pending.oldest else 0)
    discrepancies = GaugeMetricFamily(
        "billing_reconciliation_open_discrepancies",
        "Discrepancies reconciliation found and nobody resolved yet, by kind",
        labels=["kind"],
    )
    for kind, found in sorted(gauges.open_discrepancies.items()):
        discrepancies.add_metric([kind], found.count)
    runs = GaugeMetricFamily(
        "billing_reconciliation_last_run_timestamp_seconds",
        "When the last reconciliation run of each kind finished (or started, if running), with its status",
        labels=["kind", "status"],
    )
    for kind, (status, at) in sorted(gauges.last_reconciliation.items()):
        runs.add_metric([kind, status], at.timestamp())
    return [*metrics, grants, system, notifications, pending_age, discrepancies, runs]


def _entries_metric(entries: dict[str, int]) -> Metric:
    family = CounterMetricFamily("billing_ledger_entries", "Ledger entries written, by kind", labels=["kind"])
    for kind, n in sorted(entries.items()):
        family.add_metric([kind], n)
    return family


# -- /metrics -------------------------------------------------------------------------------------------------
def render(database: DatabaseCollector | None = None) -> tuple[bytes, str]:
    """Every process's counters (multiprocess mode) or this one's, plus the database's figures."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if database is not None:
        body += generate_latest(database)  # a collector serves as its own registry
    return body, CONTENT_TYPE_LATEST


def database_collector() -> DatabaseCollector | None:
    found: DatabaseCollector | None = current_app.extensions.get(EXTENSION)
    return found
