"""``/v1/disputes``: list, retrieve, and close (the merchant accepts the dispute)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from stripe_emulator.api.plumbing import readable, state, stripe_endpoint
from stripe_emulator.state.store import RequestMeta

disputes = Blueprint("disputes", __name__)

readable(disputes, "dispute", "/v1/disputes", "charge", "payment_intent")


@stripe_endpoint(disputes, "POST", rule="/v1/disputes/<dispute_id>/close")
def accept_dispute(params: dict[str, Any], req: RequestMeta, dispute_id: str) -> dict[str, Any]:
    # Stripe's "close" is the merchant accepting the dispute, which means losing it.
    return state().disputes.close(dispute_id, "lost", req)
