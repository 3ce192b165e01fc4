"""``POST /v1/holds`` (reserve), ``/v1/holds/<id>/capture`` (settle actual usage) and ``/release``.

Client idempotency keys are namespaced before they reach the ledger (``hold:``, ``capture:``, ``release:``):
the ledger's keys are global, and a client key must never be able to claim the key of a Stripe purchase
(``checkout:cs_...``) or of a usage report and so block it as a conflict.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from billing_core.errors import InvalidAmount, InvalidCommand, UnknownHold
from billing_core.ledger.commands import HOLD_ID_RE, KEY_RE, CaptureHold, PlaceHold, ReleaseHold
from billing_core.ledger.handlers import HoldView, Receipt, execute
from billing_core.pricing.catalog import price_items
from billing_core.units import format_credits, parse_credits
from webhook_receiver.auth import require
from webhook_receiver.bodies import json_body, known_fields, parse_json, read_body
from webhook_receiver.errors import ApiError
from webhook_receiver.runtime import runtime

bp = Blueprint("holds", __name__)

PLACE_FIELDS = frozenset({"account", "idempotency_key", "credits", "items", "ttl_seconds", "metadata"})
CAPTURE_FIELDS = frozenset({"idempotency_key", "credits", "items", "metadata"})
RELEASE_FIELDS = frozenset({"idempotency_key"})
MAX_LEDGER_KEY = 255
DEFAULT_TTL_SECONDS = 900


def _or_default(value: Any, default: Any) -> Any:
    """An optional field sent as null means the same as leaving it out."""
    return default if value is None else value


def _check_hold_path(hold_id: str) -> None:
    # A path that cannot name a hold is a missing resource, and must not become part of a default key.
    if not HOLD_ID_RE.fullmatch(hold_id):
        raise UnknownHold(f"no hold {hold_id[:100]!r}", hold_id=hold_id[:100])


def _optional_body(allowed: frozenset[str]) -> dict[str, Any]:
    """Capture and release may be sent with no body at all."""
    raw = read_body(64 * 1024)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_payload", "the body must be a JSON object")
    known_fields(body, allowed)
    return body


def _ledger_key(prefix: str, client_key: object) -> str:
    if not isinstance(client_key, str) or not KEY_RE.fullmatch(client_key) or len(prefix + client_key) > MAX_LEDGER_KEY:
        limit = MAX_LEDGER_KEY - len(prefix)
        raise InvalidCommand(
            f"idempotency_key must be 1-{limit} printable ASCII characters without spaces", field="idempotency_key"
        )
    return prefix + client_key


def _amount_mc(body: dict[str, Any], *, allow_zero: bool) -> int:
    """The amount of ``{"credits": "1.5"}`` or the price of ``{"items": [...]}``: exactly one of them."""
    if ("credits" in body) == ("items" in body):
        raise InvalidCommand("send exactly one of credits or items", field="credits")
    if "items" in body:
        amount, field = price_items(runtime().prices, body["items"]).total_mc, "items"
    else:
        amount, field = parse_credits(body["credits"]), "credits"
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount(f"{field} must come to a positive amount of credits", field=field)
    return amount


def _hold_json(receipt: Receipt, status: int):
    hold: HoldView | None = receipt.hold
    assert hold is not None
    payload: dict[str, Any] = {
        "id": hold.id,
        "account": hold.account,
        "credits": format_credits(hold.amount_mc),
        "status": hold.status,
        "expires_at": hold.expires_at.isoformat(),
        "captured": None if hold.captured_mc is None else format_credits(hold.captured_mc),
        "replayed": receipt.replayed,
    }
    response = jsonify(payload)
    response.status_code = status
    return response


@bp.post("/v1/holds")
@require("holds:write")
def place_hold():
    body = json_body()
    known_fields(body, PLACE_FIELDS)
    cmd = PlaceHold(
        account=body.get("account"),  # type: ignore[arg-type]  # the command validates it
        amount_mc=_amount_mc(body, allow_zero=False),
        idempotency_key=_ledger_key("hold:", body.get("idempotency_key")),
        ttl_seconds=_or_default(body.get("ttl_seconds"), DEFAULT_TTL_SECONDS),
        metadata=_or_default(body.get("metadata"), {}),
    )
    return _hold_json(execute(runtime().session_factory, cmd), 201)


@bp.post("/v1/holds/<hold_id>/capture")
@require("holds:write")
def capture_hold(hold_id: str):
    _check_hold_path(hold_id)
    body = _optional_body(CAPTURE_FIELDS)
    cmd = CaptureHold(
        hold_id=hold_id,
        amount_mc=_amount_mc(body, allow_zero=True),
        idempotency_key=_ledger_key("capture:", body.get("idempotency_key", hold_id)),
        metadata=_or_default(body.get("metadata"), {}),
    )
    return _hold_json(execute(runtime().session_factory, cmd), 200)


@bp.post("/v1/holds/<hold_id>/release")
@require("holds:write")
def release_hold(hold_id: str):
    _check_hold_path(hold_id)
    body = _optional_body(RELEASE_FIELDS)
    cmd = ReleaseHold(hold_id=hold_id, idempotency_key=_ledger_key("release:", body.get("idempotency_key", hold_id)))
    return _hold_json(execute(runtime().session_factory, cmd), 200)
