"""API key authentication and scopes: 401 without a valid key, 403 without the scope."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from billing_core.accounts.api_keys import ApiKeyView, find_api_key, hash_key
from billing_core.clock import utcnow
from billing_core.db.unit_of_work import retry_transient
from billing_core.types import MAX_ACTOR_LEN
from webhook_receiver.errors import ApiError
from webhook_receiver.runtime import runtime

F = TypeVar("F", bound=Callable[..., Any])


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def current_key() -> ApiKeyView:
    key = _presented_key()
    if key is None:
        raise ApiError(401, "missing_api_key", "send an API key: Authorization: Bearer <key>")
    digest = hash_key(key)
    now = time.monotonic()
    cache = runtime().key_cache
    found, view = cache.get(digest, now)
    if not found:
        view = retry_transient(lambda: _lookup(key))
        cache.put(digest, view, now)
    # A cached view is checked against the clock too: a rotated key's overlap ends at its expiry, not up to
    # the cache's lifetime later.
    if view is None or not view.live_at(utcnow()):
        raise ApiError(401, "invalid_api_key", "the API key is unknown, revoked or expired")
    return view


def _lookup(key: str) -> ApiKeyView | None:
    with runtime().read_session_factory() as session:
        return find_api_key(session, key)


def require(scope: str | None = None) -> Callable[[F], F]:
    """Decorator: a valid key, and ``scope`` when given (``admin`` implies every scope)."""

    def wrap(view: F) -> F:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            key = current_key()
            if scope is not None and not key.allows(scope):
                raise ApiError(403, "insufficient_scope", f"this key lacks the {scope!r} scope", required=scope)
            g.api_key = key
            return view(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap


def key_actor() -> str:
    """Who is acting, as ledger entries and the audit log record it: the request's API key, by id and name."""
    key: ApiKeyView = g.api_key
    return f"api_key:{key.id} {key.name}"[:MAX_ACTOR_LEN]
