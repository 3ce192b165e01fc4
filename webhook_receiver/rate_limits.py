"""Limits on the HTTP API: requests per API key (flask-limiter on Redis) and the token limits of holds and usage.

Requests per key: every authenticated request counts against its API key's limit (``BILLING_API_RATE_LIMIT``,
default ``1000/second``; a fixed window in Redis, one round trip per request). Requests without a valid key are
not counted (they fail authentication anyway), nor are Stripe's webhooks, health, metrics and the API's own
document. Over the limit: 429 ``rate_limited`` with ``retry_after`` and ``limit``, and a ``Retry-After`` header.
Redis unreachable: flask-limiter falls back to counting in this process's memory (one warning in the log) and
goes back to Redis when it answers again.

``POST /v1/check`` and ``POST /v1/holds`` read the account's token windows on Redis anyway: they count the
request on the same key flask-limiter uses (``request_windows``), in that same round trip, and flask-limiter
skips them (its own work was about a quarter of a check: resolving limits, then a call of its own). The
counter, the window and the 429 are flask-limiter's; what differs is when Redis is down (these two fail open
uncounted, as their token limits do, rather than counting in memory) and that a request refused by
validation before any read is not counted. When the token counters live on another Redis
(``BILLING_LIMITS_REDIS_URL``), flask-limiter counts these endpoints too.

Token limits (``billing_core.pricing.limits``): ``install`` builds the process's ``TokenLimits``;
``check_hold_tokens`` is what ``POST /v1/holds`` calls, ``usage_gate`` what ``POST /v1/usage`` hands to
``store_usage``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from flask import Flask, current_app, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from limits import RateLimitItem, parse_many

from billing_core.db.engine import raw_read
from billing_core.db.wakeups import redis_client
from billing_core.errors import LimitsUnavailable, RateLimited
from billing_core.pricing.limits import RequestWindow, TokenLimits, UsageGate, count_tokens, plan_row
from billing_core.settings import Settings
from webhook_receiver.auth import current_key
from webhook_receiver.errors import ApiError, error_response, status_for
from webhook_receiver.metrics import LIMITS_HIT, limit_hit
from webhook_receiver.runtime import runtime

log = logging.getLogger(__name__)

# Not counted per key: Stripe signs its own requests, and probes and documents carry no key.
EXEMPT_BLUEPRINTS = frozenset({"webhooks", "health", "reference"})
EXTENSION = "billing_limits"
REQUESTS_EXTENSION = "billing_request_limits"
# Endpoints that count their request with their token check (``request_windows``); flask-limiter skips them.
SELF_COUNTED = frozenset({"check.check", "holds.place_hold"})
# flask-limiter's scope of application-wide limits: part of its counter's key.
_APPLICATION_SCOPE = "global"
_NO_KEY = ""
LIMITS_HIT_REQUESTS = LIMITS_HIT.labels("requests", "rate_limited")


def _key_id() -> str:
    """The id of the request's API key, or ``_NO_KEY`` (no key, or an invalid one: not counted)."""
    found = g.get("rate_limit_key")
    if found is None:
        try:
            found = f"key:{current_key().id}"
        except ApiError:
            found = _NO_KEY
        g.rate_limit_key = found
    return str(found)


def _exempt() -> bool:
    return request.blueprint in EXEMPT_BLUEPRINTS or request.endpoint is None or _key_id() == _NO_KEY


def request_windows() -> list[RequestWindow]:
    """The request's API key counters as flask-limiter keeps them (same keys, windows and limits), for an
    endpoint of ``SELF_COUNTED`` to take in its token check; none without a valid key."""
    prefix, items, self_counted = current_app.extensions[REQUESTS_EXTENSION]
    key_id = _key_id()
    # Not self-counted (the token counters live on another Redis): flask-limiter counted it already.
    if key_id == _NO_KEY or request.endpoint not in self_counted:
        return []
    return [
        RequestWindow(f"{prefix}:{item.key_for(key_id, _APPLICATION_SCOPE)}", item.get_expiry(), item.amount, str(item))
        for item in items
    ]


def token_limits() -> TokenLimits:
    """The receiver process's token limits."""
    limits: TokenLimits = current_app.extensions[EXTENSION]
    return limits


def install(app: Flask, settings: Settings) -> Limiter:
    """The per-key request limit and the token limits, on ``app``; answers 429s in the API's error shape."""
    redis_url = settings.limits_redis_url or settings.redis_url or ""
    app.extensions[EXTENSION] = TokenLimits(
        redis_client(redis_url),
        fail_closed=settings.limits_fail_closed,
        prefix=settings.limits_prefix,
        policy_cache_seconds=settings.limits_policy_cache_seconds,
    )
    api_prefix = f"{settings.limits_prefix}:api"
    # Self-counting needs the token counters on the Redis flask-limiter uses; otherwise flask-limiter counts all.
    self_counted = SELF_COUNTED if redis_url == (settings.redis_url or "") else frozenset()
    items: list[RateLimitItem] = parse_many(settings.api_rate_limit)
    app.extensions[REQUESTS_EXTENSION] = (api_prefix, items, self_counted)
    limiter = Limiter(
        key_func=_key_id,
        app=app,
        application_limits=[settings.api_rate_limit],
        application_limits_exempt_when=_exempt,
        storage_uri=settings.redis_url,
        # A Redis that does not answer must not hold a request for long; meanwhile this process counts alone.
        # Keys beside the token counters, under the same prefix.
        storage_options={
            "socket_connect_timeout": 1,
            "socket_timeout": 1,
            "key_prefix": api_prefix,
        },
        strategy="fixed-window",
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        headers_enabled=False,  # headers would cost a second Redis call per request
    )

    # Checked before flask-limiter resolves any limit: a Stripe webhook (the receiver's busiest path) pays a set
    # lookup, not the ~0.3 ms of resolving and exempting limits it found per request (bench.ingest's webhook
    # ratio fell from ~0.53 to ~0.41 of the bare endpoint without it).
    limiter.request_filter(lambda: request.blueprint in EXEMPT_BLUEPRINTS or request.endpoint in self_counted)

    @app.errorhandler(RateLimitExceeded)
    def _too_many_requests(exc: RateLimitExceeded) -> Any:
        current = limiter.current_limit
        retry_after = 1
        if current is not None:
            try:
                retry_after = max(1, math.ceil(current.reset_at - time.time()))
            except Exception:  # the window could not be read back (Redis just went away): say a second
                retry_after = 1
        limit = str(exc.limit.limit)
        LIMITS_HIT_REQUESTS.inc()
        response = error_response(
            429,
            "rate_limited",
            f"too many requests with this API key (limit {limit})",
            retry_after=retry_after,
            limit=limit,
        )
        response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(RateLimited)
    def _rate_limited(exc: RateLimited) -> Any:
        # The domain's refusal (a token limit): the error shape of errors.py, plus the header clients read.
        limit_hit(exc)
        response = error_response(status_for(exc), exc.code, exc.message, **exc.details)
        response.headers["Retry-After"] = str(exc.details.get("retry_after", 1))
        return response

    return limiter


# -- token limits, called by the views ------------------------------------------------------------------------
def check_hold_tokens(account: str, items: Sequence[Any] | None, mode: str = "system") -> None:
    """Refuse a hold (429/402, or 503 failing closed) whose items' tokens would take ``account`` over a limit;
    a hold of credits alone only when a window is at its limit already. Holds are not counted: their usage
    is, when it is reported."""
    rt = runtime()
    limits = token_limits()
    table = rt.prices.current()
    policy = limits.cached_policy(table, account)
    if policy is None:
        with raw_read(rt.engine) as conn:
            policy = limits.policy_of_row(table, account, *plan_row(conn, account))
    state = limits.check(account, count_tokens(items or (), mode), policy, requests=request_windows())
    if state.refusal is not None:
        raise state.refusal


def record_captured_tokens(account: str, items: Sequence[Any] | None, mode: str = "system") -> None:
    """Count the tokens of a hold captured over HTTP (``POST /v1/holds/<id>/capture`` with items): usage that
    never comes as a usage report must still count against the account's windows, and may cross a quota level
    (its notice is written then). Never refused (the hold was admitted), and never an error once the capture
    is committed: Redis down only leaves it uncounted."""
    tokens = count_tokens(items or (), mode)
    if tokens:
        rt = runtime()
        try:
            token_limits().record_settled(
                rt.session_factory, {account: tokens}, rt.prices.current(), read_session_factory=rt.read_session_factory
            )
        except LimitsUnavailable:  # failing closed refuses new work; work already done is not refused
            log.warning("token limits: a capture's %s tokens were not counted (Redis unreachable)", tokens)


def usage_gate() -> UsageGate:
    """The token admission of one usage request, for ``store_usage(admit=...)``."""
    return token_limits().gate(runtime().prices.current())
