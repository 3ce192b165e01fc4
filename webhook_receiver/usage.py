"""``POST /v1/usage`` (store, then workers apply) and ``GET /v1/usage/<key>``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from billing_core.db import wakeups
from billing_core.intake.usage_inbox import store_usage, usage_status
from billing_core.intake.usage_reports import accept_reports
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
    response = jsonify({"accepted": len(stored.accepted), "duplicates": stored.duplicates, "status": "pending"})
    response.status_code = 202
    return response


@bp.get("/v1/usage/<path:key>")
@require()
def get_usage(key: str):
    status = usage_status(runtime().session_factory, key)
    if status is None:
        raise ApiError(404, "unknown_usage", f"no usage report with idempotency key {key!r}", idempotency_key=key)
    return jsonify(status)
