"""``GET``/``PUT /v1/accounts/<account>`` and ``GET /v1/accounts/<account>/transactions``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from billing_core.accounts.profile import (
    MAX_PAGE,
    UNSET,
    InvalidCursor,
    StripeCustomerTaken,
    account_view,
    list_transactions,
    update_account,
)
from billing_core.errors import InvalidCommand, UnknownAccount
from billing_core.units import parse_credits
from webhook_receiver.auth import require
from webhook_receiver.bodies import json_body, known_fields
from webhook_receiver.errors import ApiError
from webhook_receiver.runtime import runtime

bp = Blueprint("accounts", __name__)

PROFILE_FIELDS = frozenset({"email", "name", "low_balance_threshold", "stripe_customer_id"})
DEFAULT_PAGE = 25


@bp.get("/v1/accounts/<account>")
@require("accounts:read")
def get_account(account: str):
    with runtime().session_factory() as session:
        view = account_view(session, account)
    if view is None:
        raise UnknownAccount.named(account)
    return jsonify(view)


@bp.put("/v1/accounts/<account>")
@require("accounts:write")
def put_account(account: str):
    body = json_body()
    known_fields(body, PROFILE_FIELDS)
    changes: dict[str, Any] = {name: body.get(name, UNSET) for name in ("email", "name", "stripe_customer_id")}
    threshold = body.get("low_balance_threshold", UNSET)
    if threshold is not UNSET and threshold is not None:
        threshold = parse_credits(threshold)
    changes["low_balance_threshold_mc"] = threshold
    try:
        view = update_account(runtime().session_factory, account, **changes)
    except StripeCustomerTaken as exc:
        raise ApiError(409, exc.code, exc.message, **exc.details) from None
    return jsonify(view)


def _limit() -> int:
    raw = request.args.get("limit", str(DEFAULT_PAGE))
    if not (len(raw) <= 3 and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
        raise InvalidCommand(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit")
    return int(raw)


@bp.get("/v1/accounts/<account>/transactions")
@require("accounts:read")
def get_transactions(account: str):
    limit = _limit()
    try:
        with runtime().session_factory() as session:
            page = list_transactions(session, account, cursor=request.args.get("cursor"), limit=limit)
    except InvalidCursor as exc:
        raise ApiError(400, exc.code, exc.message, **exc.details) from None
    return jsonify(page)
