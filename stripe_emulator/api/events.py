"""``/v1/events``: every change recorded, newest first, filtered by ``type`` / ``types[]`` and ``created``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from stripe_emulator.api.plumbing import RawJson, list_query, state, stripe_endpoint
from stripe_emulator.params import StripeError, get_list, get_str
from stripe_emulator.state.store import RequestMeta

events = Blueprint("events", __name__)


@stripe_endpoint(events, "GET", rule="/v1/events")
def list_events(params: dict[str, Any], req: RequestMeta) -> dict[str, Any] | RawJson:
    query = list_query(params)
    query.types = [str(t) for t in get_list(params, "types")]
    if len(query.types) > 20:
        raise StripeError(400, "You may pass at most 20 event types.", param="types")
    if get_str(params, "type"):
        query.types.append(str(params["type"]))
    if get_list(params, "expand"):
        return state().list_objects("event", query, "/v1/events")
    # Reconciliation reads pages of 100 at the rate limit: the events' kept JSON, not a copy dumped per request.
    return RawJson(state().list_json("event", query, "/v1/events"))


@stripe_endpoint(events, "GET", rule="/v1/events/<object_id>")
def retrieve_event(params: dict[str, Any], req: RequestMeta, object_id: str) -> dict[str, Any]:
    return state().get("event", object_id)
