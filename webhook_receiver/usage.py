"""``POST /v1/usage`` (store, then workers apply) and ``GET /v1/usage/<key>``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from billing_core.db import wakeups
from billing_core.intake.usage_inbox import UsageStatus, store_usage, usage_status
from billing_core.intake.usage_reports import accept_reports
from billing_core.units import format_credits
from webhook_receiver.auth import require
from webhook_receiver.bodies import parse_json, read_body
from webhook_receiver.errors import ApiError
from webhook_receiver.metrics import USAGE_EVENTS
from webhook_receiver.runtime import runtime

bp = Blueprint("usage", __name__)

# 1,000 reports of a few hundred bytes each, with room for metadata.
MAX_USAGE_BYTES = 8 * 1024 * 1024


@bp.post("/v1/usage")
@require("usage:write")
def post_usage():
    rt = runtime()
    reports = accept_reports(parse_json(read_body(MAX_USAGE_BYTES)), rt.prices)
    stored = store_usage(rt.session_factory, reports, source="http")  # a DBAPIError answers 503 (errors.py)
    for partition in sorted(stored.partitions):
        rt.enqueue.wake("billing.apply_usage", [partition], wakeups.usage_partition(partition))
    USAGE_EVENTS.labels("accepted").inc(len(stored.accepted))
    USAGE_EVENTS.labels("duplicate").inc(len(stored.duplicates))
    # "status" is that of the reports this request stored; each duplicate's own is in "duplicate_statuses".
    response = jsonify(
        {
            "accepted": len(stored.accepted),
            "duplicates": stored.duplicates,
            "duplicate_statuses": stored.duplicate_statuses,
            "status": "pending",
        }
    )
    response.status_code = 202
    return response


@bp.get("/v1/usage/<path:key>")
@require()
def get_usage(key: str):
    status = usage_status(runtime().session_factory, key)
    if status is None:
        raise ApiError(404, "unknown_usage", f"no usage report with idempotency key {key!r}", idempotency_key=key)
    return jsonify(render(status))


def render(status: UsageStatus) -> dict[str, Any]:
    out: dict[str, Any] = {
        "idempotency_key": status.idempotency_key,
        "status": status.status,
        "credits": format_credits(status.amount_mc),
        "reason": None,
        "entry_id": status.entry_id,
        "received_at": status.received_at.isoformat(),
        "applied_at": status.applied_at.isoformat() if status.applied_at else None,
    }
    if status.status == "rejected":
        out["reason"] = {"code": status.reason_code, "message": status.reason}
    if status.status == "pending":
        out["processing"] = status.processing  # pending | failed | dead
        out["attempts"] = status.attempts
    return out
