"""Prometheus metrics of the receiver. Under gunicorn set ``PROMETHEUS_MULTIPROC_DIR`` so that
``/metrics`` adds up every worker process (``billing dev`` and the Procfile do)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest, multiprocess

WEBHOOKS = Counter("billing_webhooks_total", "Stripe webhook deliveries by outcome", ["outcome"])
USAGE_EVENTS = Counter("billing_usage_events_total", "Usage reports received by outcome", ["outcome"])
ENQUEUE_FAILURES = Counter("billing_enqueue_failures_total", "Sends to the broker that failed (swept later)")


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
