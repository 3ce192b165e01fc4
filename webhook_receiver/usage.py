"""``POST /v1/usage`` (store, then workers apply) and ``GET /v1/usage/<key>``."""

from __future__ import annotations

from flask import Blueprint

from billing_core import logs
from billing_core.db import wakeups
from billing_core.intake.usage_inbox import store_usage, usage_status
from billing_core.intake.usage_reports import UsageBatch, accept_reports
from webhook_receiver.auth import require
from webhook_receiver.bodies import parse_json, read_body
from webhook_receiver.errors import ApiError
from webhook_receiver.metrics import USAGE_EVENTS
from webhook_receiver.rate_limits import usage_gate
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import UsageAccepted, UsageStatusAnswer
from webhook_receiver.spec import endpoint

bp = Blueprint("usage", __name__)

# 1,000 reports of a few hundred bytes each, with room for metadata.
MAX_USAGE_BYTES = 8 * 1024 * 1024


@bp.post("/v1/usage")
@require("usage:write")
@endpoint(
    documented_body=UsageBatch,  # or one UsageReport alone; validated report by report below
    answers={202: UsageAccepted},
    errors={
        400: "malformed_payload",
        403: "key_mode_not_allowed (a request of one report refused only for its key mode)",
        409: "idempotency_conflict",
        413: "payload_too_large",
        422: "invalid_usage (problems: index, field, code, message)",
        402: "quota_exceeded",
        429: "rate_limited",
        503: "limits_unavailable (token limits failing closed) · store_unavailable",
    },
)
def post_usage():
    """Store one usage report or ``{"events": [...]}`` (all or nothing); workers apply them to the ledger."""
    rt = runtime()
    # Validated here, report by report, rather than by ``endpoint``: a refusal names every problem of every
    # report with its index (``invalid_usage``), and nothing of the request is stored.
    reports = accept_reports(parse_json(read_body(MAX_USAGE_BYTES)), rt.prices.current())
    if len(reports) == 1:  # a batch's lines carry its size; its keys are in the inbox
        logs.bind(idempotency_key=reports[0].idempotency_key, account=reports[0].account)
    else:
        logs.bind(reports=len(reports))
    # Token limits inside the store's transaction (429 rate_limited · 402 quota_exceeded: nothing stored).
    stored = store_usage(rt.session_factory, reports, source="http", admit=usage_gate())  # DBAPIError: 503
    for partition in sorted(stored.partitions):
        rt.enqueue.wake("billing.apply_usage", [partition], wakeups.usage_partition(partition))
    USAGE_EVENTS.labels("accepted").inc(len(stored.accepted))
    USAGE_EVENTS.labels("duplicate").inc(len(stored.duplicates))
    return render(
        UsageAccepted(
            accepted=len(stored.accepted),
            duplicates=stored.duplicates,
            duplicate_statuses=stored.duplicate_statuses,
        ),
        status=202,
    )


@bp.get("/v1/usage/<path:key>")
@require()
@endpoint(answers={200: UsageStatusAnswer}, errors={404: "unknown_usage"})
def get_usage(key: str):
    """Where a report is: ``pending``, ``applied`` (the entry, the credits) or ``rejected`` (the reason)."""
    status = usage_status(runtime().session_factory, key)
    if status is None:
        raise ApiError(404, "unknown_usage", f"no usage report with idempotency key {key!r}", idempotency_key=key)
    answer = UsageStatusAnswer.of(status)
    return render(answer, exclude=answer.hidden)
