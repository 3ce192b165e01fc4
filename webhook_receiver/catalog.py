"""What credits cost and how to buy them: ``POST /v1/estimate``, ``GET /v1/packages``, ``POST /v1/checkout``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, jsonify

from billing_core.accounts.profile import ensure_stripe_customer
from billing_core.db.unit_of_work import utcnow
from billing_core.errors import InvalidCommand
from billing_core.ledger.balances import spendable_mc
from billing_core.ledger.commands import check_account
from billing_core.pricing.catalog import price_items
from billing_core.stripe.gateway import GatewayError, StripeUnavailable
from billing_core.units import format_credits
from webhook_receiver.auth import require
from webhook_receiver.bodies import json_body, known_fields
from webhook_receiver.errors import ApiError
from webhook_receiver.runtime import runtime

bp = Blueprint("catalog", __name__)

ESTIMATE_FIELDS = frozenset({"items", "account"})
CHECKOUT_FIELDS = frozenset({"account", "package", "success_url", "cancel_url", "idempotency_key"})
MAX_URL_LEN = 2048


def _url(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    parts = urlsplit(value) if isinstance(value, str) and len(value) <= MAX_URL_LEN else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidCommand(f"{field} must be an http(s) URL of at most {MAX_URL_LEN} characters", field=field)
    return value  # type: ignore[return-value]  # checked above


@bp.post("/v1/estimate")
@require()
def estimate():
    body = json_body(1024 * 1024)
    known_fields(body, ESTIMATE_FIELDS)
    quote = price_items(runtime().prices, body.get("items"))  # type: ignore[arg-type]  # it validates
    answer = quote.as_dict()
    if body.get("account") is not None:
        account = check_account(body["account"])
        with runtime().session_factory() as session:
            # What a hold placed now could reserve, not the ledger balance: an expired grant the sweeper has
            # not closed yet still counts in the balance but cannot be spent.
            available = spendable_mc(session, account, utcnow())
        answer["available"] = format_credits(available)
        answer["sufficient"] = available >= quote.total_mc
    return jsonify(answer)


@bp.get("/v1/packages")
@require()
def packages():
    return jsonify({"data": [p.as_dict() for p in runtime().prices.packages], "has_more": False, "next_cursor": None})


@bp.post("/v1/checkout")
@require("checkout:write")
def checkout():
    rt = runtime()
    body = json_body()
    known_fields(body, CHECKOUT_FIELDS)
    account = check_account(body.get("account"))
    package = rt.prices.package(body.get("package"))  # type: ignore[arg-type]  # it validates
    success_url, cancel_url = _url(body, "success_url"), _url(body, "cancel_url")
    client_key = body.get("idempotency_key")
    if client_key is not None and (not isinstance(client_key, str) or not 1 <= len(client_key) <= 200):
        raise InvalidCommand("idempotency_key must be a string of 1-200 characters", field="idempotency_key")
    if rt.gateway is None:
        raise ApiError(503, "stripe_unavailable", "payments are not configured on this server (STRIPE_API_KEY)")
    try:
        customer = ensure_stripe_customer(rt.session_factory, rt.gateway, account)
        session = rt.gateway.create_checkout_session(
            account=account,
            package_id=package.id,
            package_name=package.name,
            credits=format_credits(package.credits_mc),
            unit_amount=package.unit_amount,
            currency=package.currency,
            success_url=success_url,
            cancel_url=cancel_url,
            customer=customer,
            # Scoped to the account: the same client key from two accounts must open two sessions.
            idempotency_key=f"checkout:{account}:{client_key}" if client_key else None,
        )
    except StripeUnavailable as exc:
        raise ApiError(503, "stripe_unavailable", f"Stripe is unavailable: {exc.message}") from None
    except GatewayError as exc:
        message = f"Stripe refused the request: {exc.message}"
        raise ApiError(502, "stripe_error", message, stripe_code=exc.code) from None
    response = jsonify({"id": session["id"], "url": session["url"]})
    response.status_code = 201
    return response
