"""Per-process state of a worker: built on first use, after Celery has forked its pool processes (a
database connection must never be shared across a fork)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.engine import make_engine, make_session_factory
from billing_core.db.wakeups import Wakeups, redis_client
from billing_core.notify.channels import senders_from_settings
from billing_core.notify.outbox import Sender
from billing_core.pricing.catalog import load_price_table
from billing_core.pricing.limits import TokenLimits
from billing_core.pricing.versions import PriceBook
from billing_core.settings import load_settings
from billing_core.stripe.gateway import StripeGateway


@dataclass(frozen=True)
class Runtime:
    session_factory: sessionmaker[Session]
    gateway: StripeGateway | None
    prices: PriceBook
    wakeups: Wakeups
    limits: TokenLimits  # token limits and plan quotas (billing_core/pricing/limits.py)
    notify_senders: dict[str, Sender]  # the configured notification channels (billing_core/notify/channels.py)


@lru_cache(maxsize=1)
def _runtime(pid: int) -> Runtime:
    settings = load_settings()
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=4)
    gateway = None
    if settings.stripe_api_key is not None:
        gateway = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    session_factory = make_session_factory(engine)
    return Runtime(
        session_factory,
        gateway,
        PriceBook(load_price_table(settings.billing_pricing_file), session_factory=session_factory),
        Wakeups(redis_client(settings.redis_url or "")),
        TokenLimits(
            redis_client(settings.limits_redis_url or settings.redis_url or ""),
            fail_closed=settings.limits_fail_closed,
            prefix=settings.limits_prefix,
            policy_cache_seconds=settings.limits_policy_cache_seconds,
        ),
        senders_from_settings(settings),
    )


def runtime() -> Runtime:
    return _runtime(os.getpid())
