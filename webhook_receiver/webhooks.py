"""``POST /webhooks/stripe``: verify, store (deduplicated on the event id), enqueue after commit.

A 2xx means the event is committed (DESIGN.md rule 1); if the store is unavailable the answer is 503 and
Stripe delivers again later.
"""

from __future__ import annotations

import psycopg
import stripe
from flask import Blueprint, Response, request

from billing_core import logs
from billing_core.db import wakeups
from billing_core.intake.stripe_events import MalformedEvent, check_event
from webhook_receiver.bodies import parse_json, read_body
from webhook_receiver.errors import ApiError
from webhook_receiver.metrics import WEBHOOKS, WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED, WEBHOOKS_VERIFIED
from webhook_receiver.runtime import runtime
from webhook_receiver.schemas import StripeEvent, WebhookAnswer
from webhook_receiver.spec import endpoint

bp = Blueprint("webhooks", __name__)

MAX_WEBHOOK_BYTES = 1024 * 1024
TOLERANCE_SECONDS = 300


def verify_signature(payload: str, header: str | None, secrets: list[str]) -> None:
    """Accept the event if any configured secret signed it (several while a rotated secret rolls out)."""
    if not header:
        raise ApiError(400, "invalid_signature", "missing Stripe-Signature header")
    stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE_SECONDS)
            return
        except stripe.SignatureVerificationError as exc:
            # The SDK checks the timestamp only after a signature matched: a stale message is authentic.
            stale = stale or "tolerance" in str(exc).lower()
    if stale:
        raise ApiError(400, "timestamp_outside_tolerance", f"the signature is older than {TOLERANCE_SECONDS} s")
    raise ApiError(400, "invalid_signature", "no signature matches the payload")


# The two possible answers, serialised once: this endpoint is the receiver's hottest.
STORED = b'{"received":true,"duplicate":false}'
DUPLICATE = b'{"received":true,"duplicate":true}'


@bp.post("/webhooks/stripe")
@endpoint(
    documented_body=StripeEvent,
    answers={200: WebhookAnswer},
    errors={
        400: "invalid_signature · timestamp_outside_tolerance · malformed_payload",
        413: "payload_too_large",
        503: "store_unavailable",
    },
    keyed=False,
    tags=("stripe",),
)
def stripe_webhook() -> Response:
    """A Stripe event, signed (``Stripe-Signature``): stored once by event id, then handled by the workers."""
    rt = runtime()
    WEBHOOKS_RECEIVED.inc()
    try:
        raw = read_body(MAX_WEBHOOK_BYTES)
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "malformed_payload", "the body is not UTF-8") from None
        verify_signature(payload, request.headers.get("Stripe-Signature"), rt.webhook_secrets)
        WEBHOOKS_VERIFIED.inc()
        event = check_event(parse_json(raw))
    except (ApiError, MalformedEvent) as exc:
        missing = exc.code == "invalid_signature" and not request.headers.get("Stripe-Signature")
        WEBHOOKS_REJECTED.labels("missing_signature" if missing else exc.code).inc()
        raise
    logs.bind(event_id=event["id"], event_type=event["type"])

    try:
        stored = rt.event_inbox.store(event, raw)
    except psycopg.DataError as exc:
        # Signed, but PostgreSQL cannot hold it (a \u0000 in a string, a timestamp out of range): delivering
        # it again cannot help.
        WEBHOOKS_REJECTED.labels("malformed_payload").inc()
        raise ApiError(400, "malformed_payload", f"the event cannot be stored: {exc}") from None
    except psycopg.Error:
        WEBHOOKS_UNAVAILABLE.inc()
        raise ApiError(503, "store_unavailable", "the event store is unavailable; deliver again later") from None
    if stored:
        WEBHOOKS_STORED.inc()
        rt.enqueue.wake(
            "billing.drain_stripe_events", [], wakeups.STRIPE_EVENTS, countdown=wakeups.STRIPE_EVENTS_LINGER_SECONDS
        )
        return Response(STORED, mimetype="application/json")
    WEBHOOKS_DUPLICATE.inc()
    return Response(DUPLICATE, mimetype="application/json")


WEBHOOKS_STORED, WEBHOOKS_DUPLICATE, WEBHOOKS_UNAVAILABLE = (
    WEBHOOKS.labels(outcome) for outcome in ("stored", "duplicate", "store_unavailable")
)
