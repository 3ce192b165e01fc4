"""``POST /v1/holds`` (reserve), ``/v1/holds/<id>/capture`` (settle actual usage) and ``/release``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from billing_core import logs
from billing_core.errors import InvalidAmount, InvalidCommand, UnknownHold
from billing_core.ledger.commands import (
    CAPTURE_KEY_PREFIX,
    HOLD_KEY_PREFIX,
    RELEASE_KEY_PREFIX,
    CaptureHold,
    PlaceHold,
    ReleaseHold,
    ledger_key,
)
from billing_core.ledger.handlers import execute
from billing_core.pricing.items import Item
from billing_core.pricing.quotes import Quote, price_items
from billing_core.types import HOLD_ID_RE
from webhook_receiver.auth import require
from webhook_receiver.rate_limits import check_hold_tokens, record_captured_tokens
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import DEFAULT_TTL_SECONDS, CaptureBody, HoldAnswer, PlaceHoldBody, ReleaseBody
from webhook_receiver.spec import endpoint

bp = Blueprint("holds", __name__)

HOLD_ERRORS = {404: "unknown_hold", 409: "hold_not_pending · idempotency_conflict"}


def _check_hold_path(hold_id: str) -> None:
    # A path that cannot name a hold is a missing resource, and must not become part of a default key.
    if not HOLD_ID_RE.fullmatch(hold_id):
        raise UnknownHold(f"no hold {hold_id[:100]!r}", hold_id=hold_id[:100])


def _amount_mc(
    credits_mc: int | None, items: list[Item] | None, *, mode: str, allow_zero: bool
) -> tuple[int, Quote | None]:
    """The amount of ``{"credits": "1.5"}`` or the price of ``{"items": [...]}`` in key ``mode``: exactly one
    of them; with items, their quote too."""
    if (credits_mc is None) == (items is None):
        raise InvalidCommand("send exactly one of credits or items", field="credits")
    quote = None
    if items is not None:
        quote = price_items(runtime().prices.current(), items, mode=mode)
        amount, field = quote.total_mc, "items"
    else:
        assert credits_mc is not None
        amount, field = credits_mc, "credits"
    if amount == 0 and not allow_zero:
        raise InvalidAmount(f"{field} must come to a positive amount of credits", field=field)
    return amount, quote


@bp.post("/v1/holds")
@require("holds:write")
@endpoint(
    body=PlaceHoldBody,
    answers={201: HoldAnswer},
    errors={
        402: "insufficient_credits · account_negative · quota_exceeded",
        403: "key_mode_not_allowed",
        404: "unknown_account",
        409: "idempotency_conflict",
        429: "rate_limited",
        503: "limits_unavailable (token limits failing closed)",
    },
)
def place_hold(body: PlaceHoldBody):
    """Reserve credits (a price from items, or an amount) until captured, released or expired."""
    logs.bind(account=body.account, idempotency_key=body.idempotency_key)
    amount, quote = _amount_mc(body.credits, body.items, mode=body.mode, allow_zero=False)
    # Token limits next (429 rate_limited · 402 quota_exceeded): a refused hold reserves nothing.
    check_hold_tokens(body.account, body.items, body.mode)
    cmd = hold_command(body.account, amount, quote, body.idempotency_key, body.ttl_seconds, body.metadata)
    return render(HoldAnswer.of(execute(runtime().session_factory, cmd)), status=201)


def hold_command(
    account: str,
    amount_mc: int,
    quote: Quote | None,
    idempotency_key: str,
    ttl_seconds: int | None,
    metadata: dict[str, Any] | None,
) -> PlaceHold:
    """The ledger command of a hold placed over HTTP (``POST /v1/holds``, and ``POST /v1/check`` reserving):
    the client's key namespaced, the default TTL, the pricing recorded beside the client's metadata."""
    return PlaceHold(
        account=account,
        amount_mc=amount_mc,
        idempotency_key=ledger_key(HOLD_KEY_PREFIX, idempotency_key),
        ttl_seconds=ttl_seconds or DEFAULT_TTL_SECONDS,
        metadata=metadata or {},
        pricing=quote.as_metadata() if quote is not None else {},
    )


@bp.post("/v1/holds/<hold_id>/capture")
@require("holds:write")
@endpoint(body=CaptureBody, body_optional=True, answers={200: HoldAnswer}, errors=HOLD_ERRORS)
def capture_hold(hold_id: str, body: CaptureBody):
    """Settle a hold at the actual usage: below the hold returns the rest, above it takes the excess."""
    _check_hold_path(hold_id)
    amount, quote = _amount_mc(body.credits, body.items, mode=body.mode, allow_zero=True)
    cmd = CaptureHold(
        hold_id=hold_id,
        amount_mc=amount,
        idempotency_key=ledger_key(CAPTURE_KEY_PREFIX, body.idempotency_key or hold_id),
        metadata=body.metadata or {},
        pricing=quote.as_metadata() if quote is not None else {},
    )
    receipt = execute(runtime().session_factory, cmd)
    if not receipt.replayed:  # counted once, when the capture is first written
        assert receipt.hold is not None
        record_captured_tokens(receipt.hold.account, body.items, body.mode)
    return render(HoldAnswer.of(receipt))


@bp.post("/v1/holds/<hold_id>/release")
@require("holds:write")
@endpoint(body=ReleaseBody, body_optional=True, answers={200: HoldAnswer}, errors=HOLD_ERRORS)
def release_hold(hold_id: str, body: ReleaseBody):
    """Give a pending hold's credits back."""
    _check_hold_path(hold_id)
    key = ledger_key(RELEASE_KEY_PREFIX, body.idempotency_key or hold_id)
    return render(HoldAnswer.of(execute(runtime().session_factory, ReleaseHold(hold_id=hold_id, idempotency_key=key))))
