"""What one receiver process holds: the settings, the database pools, the price table, the gateway and the
Celery sender. Built by the app factory (under gunicorn, once per worker process, after the fork)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing_core.pricing import PriceTable
from billing_core.settings import Settings
from billing_core.stripe_gateway import StripeGateway
from webhook_receiver.enqueue import Enqueue


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    prices: PriceTable
    gateway: StripeGateway | None
    enqueue: Enqueue
    webhook_secrets: list[str]
    # Autocommit connections for the webhook inbox's single insert; opened on first use, so that a pool's
    # threads and connections always belong to the process that uses them.
    direct_pool: ConnectionPool
    _opening: threading.Lock = field(default_factory=threading.Lock)

    def direct(self) -> ConnectionPool:
        if self.direct_pool.closed:
            with self._opening:
                if self.direct_pool.closed:
                    self.direct_pool.open(wait=False)
        return self.direct_pool


def runtime() -> Runtime:
    return current_app.extensions["billing"]
