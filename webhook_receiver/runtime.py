"""What one receiver process holds: the settings, a database pool, the event inbox, the price table, the
gateway, the Celery sender and the API key cache. Built by the app factory (under gunicorn, once per worker
process, after the fork)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.event_writer import EventInbox
from billing_core.pricing.versions import PriceBook
from billing_core.settings import Settings
from billing_core.stripe.gateway import StripeGateway
from webhook_receiver.enqueue import Enqueue
from webhook_receiver.key_cache import KeyCache


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    prices: PriceBook
    gateway: StripeGateway | None
    enqueue: Enqueue
    webhook_secrets: list[str]
    event_inbox: EventInbox
    # One-statement reads in autocommit (billing_core.db.engine.make_read_session_factory).
    read_session_factory: sessionmaker[Session]
    key_cache: KeyCache = field(default_factory=KeyCache)


def runtime() -> Runtime:
    return current_app.extensions["billing"]
