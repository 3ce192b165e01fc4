"""Every error answers ``{"error": {"code", "message", ...details}}`` with a precise status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from billing_core import errors as domain
from billing_core.accounts.profile import StripeCustomerTaken
from billing_core.intake.stripe_events import MalformedEvent
from billing_core.intake.usage_reports import UsageKeyModeNotAllowed
from billing_core.ledger.history import InvalidCursor
from billing_core.stripe import subscription_checkout as subscriptions
from webhook_receiver.metrics import limit_hit

# The domain's error codes, mapped to HTTP once, here.
STATUS_BY_ERROR: dict[type[domain.BillingError], int] = {
    InvalidCursor: 400,
    MalformedEvent: 400,  # the webhook contract: a signed body that is not an event is malformed_payload, 400
    domain.InsufficientCredits: 402,
    domain.AccountFlagged: 402,
    domain.KeyModeNotAllowed: 403,
    UsageKeyModeNotAllowed: 403,
    domain.UnknownAccount: 404,
    domain.UnknownHold: 404,
    domain.UnknownGrant: 404,
    domain.UnknownPackage: 404,
    domain.HoldNotPending: 409,
    domain.IdempotencyConflict: 409,
    StripeCustomerTaken: 409,
    domain.InvalidAmount: 422,
    domain.InvalidCommand: 422,
    domain.UnknownModel: 422,
    domain.UnknownPriceCode: 422,
    domain.PaymentsRefused: 502,
    domain.PaymentsUnavailable: 503,
    domain.SalesPaused: 409,  # packages and the sales guard
    domain.UnknownSetting: 404,
    domain.InvalidSetting: 422,
    # limits
    domain.RateLimited: 429,
    domain.QuotaExceeded: 402,
    domain.LimitsUnavailable: 503,
    domain.UnknownPlan: 422,
    # plans sold as subscriptions
    subscriptions.UnknownInterval: 422,
    subscriptions.SubscriptionExists: 409,
    subscriptions.PlanNotSynced: 409,
    subscriptions.UnknownSubscription: 404,
    subscriptions.SubscriptionEnded: 409,
    subscriptions.NoStripeCustomer: 409,
}


log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(status: int, code: str, message: str, /, **details: Any):
    response = jsonify({"error": {"code": code, "message": message, **details}})
    response.status_code = status
    return response


def status_for(exc: domain.BillingError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 422


def install(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, **exc.details)

    @app.errorhandler(domain.BillingError)
    def _domain(exc: domain.BillingError):
        limit_hit(exc)  # quota_exceeded (rate_limited has its own handler, in rate_limits.py)
        return error_response(status_for(exc), exc.code, exc.message, **exc.details)

    @app.errorhandler(DBAPIError)
    def _store(exc: DBAPIError):
        # PostgreSQL is down or restarting: nothing was committed; the caller (or Stripe) tries again later.
        log.warning("database error answered with 503: %s", type(exc.orig).__name__ if exc.orig else exc)
        return error_response(503, "store_unavailable", "the database is unavailable; try again later")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.code or 500, "http_error"
        )
        return error_response(exc.code or 500, code, exc.description or exc.name)
