"""``/v1/checkout/sessions``: create, list, retrieve, line items, expire."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from stripe_emulator.api.plumbing import RawJson, list_query, state, stripe_endpoint
from stripe_emulator.params import get_list
from stripe_emulator.state.store import RequestMeta

checkout = Blueprint("checkout", __name__)


@stripe_endpoint(checkout, "POST", rule="/v1/checkout/sessions")
def create_checkout_session(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
    # The session's ``url`` is this emulator's own checkout page.
    return state().checkout.create(params, request.host_url.rstrip("/"), req)


@stripe_endpoint(checkout, "GET", rule="/v1/checkout/sessions")
def list_checkout_sessions(params: dict[str, Any], req: RequestMeta) -> dict[str, Any] | RawJson:
    query = list_query(params, "payment_intent", "customer", "status", "client_reference_id")
    if get_list(params, "expand"):
        return state().list_objects("checkout.session", query, "/v1/checkout/sessions")
    # The daily objects pass reads pages of 100 at the rate limit: dumped once, not copied and re-parsed first.
    return RawJson(state().list_json("checkout.session", query, "/v1/checkout/sessions"))


@stripe_endpoint(checkout, "GET", rule="/v1/checkout/sessions/<session_id>")
def retrieve_checkout_session(params: dict[str, Any], req: RequestMeta, session_id: str) -> dict[str, Any]:
    return state().get("checkout.session", session_id, param="session")


@stripe_endpoint(checkout, "GET", rule="/v1/checkout/sessions/<session_id>/line_items")
def list_line_items(params: dict[str, Any], req: RequestMeta, session_id: str) -> dict[str, Any]:
    return state().checkout.line_items(session_id, list_query(params))


@stripe_endpoint(checkout, "POST", rule="/v1/checkout/sessions/<session_id>/expire")
def expire_checkout_session(params: dict[str, Any], req: RequestMeta, session_id: str) -> dict[str, Any]:
    return state().checkout.expire(session_id, req)
