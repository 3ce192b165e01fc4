"""The app factory: ``gunicorn 'webhook_receiver:create_app()'``."""

from __future__ import annotations

from flask import Flask

from billing_core import logs
from billing_core.db.engine import make_engine, make_read_session_factory, make_session_factory
from billing_core.db.event_writer import EventInbox
from billing_core.errors import MissingSetting
from billing_core.pricing.catalog import load_price_table
from billing_core.pricing.versions import PriceBook
from billing_core.settings import Settings, load_settings
from billing_core.stripe.gateway import StripeGateway
from webhook_receiver import (
    accounts,
    admin_accounts,
    admin_adjustments,
    admin_audit,
    admin_discrepancies,
    admin_grants,
    admin_keys,
    admin_ops,
    admin_refunds,
    admin_stats,
    catalog,
    check,
    console,
    errors,
    health,
    holds,
    metrics,
    openapi,
    usage,
    webhooks,
)
from webhook_receiver import auto_recharge as auto_recharge_api
from webhook_receiver.enqueue import CelerySender, Enqueue
from webhook_receiver.rate_limits import install as install_limits
from webhook_receiver.runtime import Runtime
from webhook_receiver.subscriptions import bp as subscriptions_bp


def create_app(settings: Settings | None = None, *, enqueue: Enqueue | None = None) -> Flask:
    """Build the receiver. Missing settings stop start-up with one line naming them."""
    try:
        settings = (settings or load_settings()).require("redis_url", "stripe_webhook_secret")
    except MissingSetting as exc:
        raise SystemExit(f"billing web: {exc.message}") from None
    logs.configure()  # LOG_FORMAT: json (the default) or text
    app = Flask("webhook_receiver")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size, max_overflow=0)
    gateway = None
    if settings.stripe_api_key is not None:
        gateway = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    session_factory = make_session_factory(engine)
    app.extensions["billing"] = Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        prices=PriceBook(load_price_table(settings.billing_pricing_file), session_factory=session_factory),
        gateway=gateway,
        enqueue=enqueue or CelerySender(settings.redis_url or ""),
        webhook_secrets=settings.webhook_secrets(),
        event_inbox=EventInbox(settings.database_url),
        read_session_factory=make_read_session_factory(engine),
    )
    errors.install(app)
    metrics.install(app, engine)  # the request latency hook and the log context, then the database's figures
    for blueprint in (
        webhooks.bp,
        usage.bp,
        health.bp,
        accounts.bp,
        holds.bp,
        check.bp,
        catalog.bp,
        admin_grants.bp,
        admin_refunds.bp,
        admin_discrepancies.bp,
        admin_adjustments.bp,
        admin_stats.bp,
        admin_accounts.bp,
        admin_ops.bp,
        admin_keys.bp,
        admin_audit.bp,
        auto_recharge_api.bp,
        subscriptions_bp,
        openapi.bp,
    ):
        app.register_blueprint(blueprint)
    install_limits(app, settings)  # per-key request limits and the token limits
    console.install(app, settings)  # the operators' console at /admin (session cookie, CSRF)
    return app
