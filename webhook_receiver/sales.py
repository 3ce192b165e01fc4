"""The receiver's sales guard and database settings: one of each per app (per gunicorn worker process), kept in
``app.extensions`` next to the runtime, so their few-seconds caches live as long as the process."""

from __future__ import annotations

from flask import current_app

from billing_core.db.config import ConfigCache
from billing_core.pricing.sales_guard import SalesGuard
from webhook_receiver.runtime import runtime

CACHE_SECONDS = 5.0


def sales_guard() -> SalesGuard:
    """This app's sales guard (created on first use)."""
    guard: SalesGuard | None = current_app.extensions.get("billing_sales_guard")
    if guard is None:
        session_factory = runtime().session_factory
        config = ConfigCache(session_factory, CACHE_SECONDS)
        guard = current_app.extensions.setdefault(
            "billing_sales_guard", SalesGuard(session_factory, config, CACHE_SECONDS)
        )
    return guard
