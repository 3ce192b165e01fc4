"""``/_emulator/``: the controls that play the buyer, the bank and the network. Form or JSON bodies, JSON answers.

Pay or fail a checkout session, settle a bank debit, open or close a dispute, set how a customer's saved card
answers, move the emulator's clock or advance a test clock, register
webhook endpoints, set delivery faults and wait for deliveries, reset everything.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, request

from stripe_emulator.api.plumbing import control, control_params, emulator, json_response, state
from stripe_emulator.params import StripeError, get_bool, get_int, get_list, get_str

controls = Blueprint("controls", __name__)


def _session_answer(session: dict[str, Any], params: dict[str, Any], target: str | None) -> Response:
    """JSON for programs; for the HTML checkout page (its forms send ``redirect=1``) a redirect to
    ``target`` (``success_url``), or back to the page itself."""
    if get_bool(params, "redirect"):
        url = (session.get(target) if target else None) or f"/_emulator/checkout/{session['id']}"
        return Response(status=303, headers={"Location": url.replace("{CHECKOUT_SESSION_ID}", session["id"])})
    return json_response(session)


# -- webhook endpoints -----------------------------------------------------------------------------------------


@control(controls, "/_emulator/webhook_endpoints", "POST")
def add_webhook_endpoint() -> Response:
    params = control_params()
    url = get_str(params, "url", required=True)
    events = [str(e) for e in get_list(params, "enabled_events")]
    return json_response(state().add_webhook_endpoint(str(url), get_str(params, "secret"), events))


@control(controls, "/_emulator/webhook_endpoints", "GET")
def list_webhook_endpoints() -> Response:
    return json_response({"object": "list", "data": list(state().webhook_endpoints.values())})


@control(controls, "/_emulator/webhook_endpoints/<endpoint_id>", "DELETE")
def delete_webhook_endpoint(endpoint_id: str) -> Response:
    if state().webhook_endpoints.pop(endpoint_id, None) is None:
        raise StripeError(404, f"No such webhook endpoint: '{endpoint_id}'", code="resource_missing")
    return json_response({"id": endpoint_id, "object": "webhook_endpoint", "deleted": True})


# -- the buyer and the bank -------------------------------------------------------------------------------------


@control(controls, "/_emulator/checkout/sessions/<session_id>/pay", "POST")
def pay(session_id: str) -> Response:
    params = control_params()
    session = state().payments.pay(session_id, asynchronous=get_bool(params, "async"))
    return _session_answer(session, params, "success_url")


@control(controls, "/_emulator/checkout/sessions/<session_id>/async_succeed", "POST")
def async_succeed(session_id: str) -> Response:
    return json_response(state().payments.settle_async(session_id, succeeded=True))


@control(controls, "/_emulator/checkout/sessions/<session_id>/async_fail", "POST")
def async_fail(session_id: str) -> Response:
    return json_response(state().payments.settle_async(session_id, succeeded=False))


@control(controls, "/_emulator/checkout/sessions/<session_id>/fail", "POST")
def fail(session_id: str) -> Response:
    params = control_params()
    session = state().payments.fail(session_id)
    return _session_answer(session, params, None)


@control(controls, "/_emulator/checkout/sessions/<session_id>/expire", "POST")
def expire(session_id: str) -> Response:
    return json_response(state().checkout.expire(session_id))


@control(controls, "/_emulator/charges/<charge_id>/dispute", "POST")
def open_dispute(charge_id: str) -> Response:
    params = control_params()
    amount = get_int(params, "amount", minimum=1)
    return json_response(state().disputes.open(charge_id, amount=amount, reason=get_str(params, "reason")))


@control(controls, "/_emulator/disputes/<dispute_id>/close", "POST")
def close_dispute(dispute_id: str) -> Response:
    status = get_str(control_params(), "status", required=True)
    return json_response(state().disputes.close(dispute_id, str(status)))


@control(controls, "/_emulator/customers/<customer_id>/card", "POST")
def card_outcome(customer_id: str) -> Response:
    """How the customer's saved card answers later charges: ``succeed``, ``card_declined``,
    ``authentication_required``."""
    outcome = get_str(control_params(), "outcome", required=True)
    return json_response(state().cards.set_outcome(customer_id, str(outcome)))


@control(controls, "/_emulator/test_clocks/<clock_id>/advance", "POST")
def advance_test_clock(clock_id: str) -> Response:
    """Advance a test clock to ``frozen_time``, or by ``seconds`` and/or ``days``."""
    params = control_params()
    state().base_url = request.host_url.rstrip("/")
    target = get_int(params, "frozen_time")
    if target is None:
        seconds = (get_int(params, "seconds", minimum=0) or 0) + (get_int(params, "days", minimum=0) or 0) * 86400
        target = state().test_clocks.retrieve(clock_id)["frozen_time"] + seconds
    return json_response(state().test_clocks.advance(clock_id, target))


# -- the network: delivery faults, deliveries ------------------------------------------------------------------


@control(controls, "/_emulator/delivery", "GET", "POST")
def delivery_settings() -> Response:
    sender = emulator().sender
    if request.method == "GET":
        return json_response(asdict(sender.settings))
    try:
        return json_response(asdict(sender.configure(control_params())))
    except (TypeError, ValueError) as exc:
        raise StripeError(400, str(exc)) from exc


@control(controls, "/_emulator/api_faults", "GET", "POST")
def api_faults() -> Response:
    """429s on ``/v1``: ``rate_limit_every`` (every n-th request), ``requests_per_second``, ``retry_after``."""
    faults = emulator().api_faults
    if request.method == "GET":
        return json_response(faults.describe())
    try:
        return json_response(faults.configure(control_params()))
    except (TypeError, ValueError) as exc:
        raise StripeError(400, str(exc)) from exc


@control(controls, "/_emulator/events/<event_id>/deliver", "POST", locked=False)
def deliver_event(event_id: str) -> Response:
    return json_response({"object": "list", "data": emulator().sender.deliver_now(event_id)})


@control(controls, "/_emulator/flush", "POST", locked=False)
def flush() -> Response:
    sender = emulator().sender
    timeout = float(control_params().get("timeout", 10))
    flushed = sender.flush(min(max(timeout, 0.0), 120.0))
    return json_response({"flushed": flushed, **sender.counts()})


@control(controls, "/_emulator/deliveries", "GET")
def deliveries() -> Response:
    event_id = request.args.get("event_id")
    log = [e for e in emulator().sender.log if event_id is None or e["event_id"] == event_id]
    return json_response({"object": "list", "data": log})


# -- time and the whole emulator --------------------------------------------------------------------------------


@control(controls, "/_emulator/clock", "GET", "POST")
def clock() -> Response:
    if request.method == "POST":
        advance = get_int(control_params(), "advance", required=True, minimum=0)
        return json_response({"now": state().advance_clock(advance or 0)})
    return json_response({"now": state().now()})


@control(controls, "/_emulator/reset", "POST")
def reset() -> Response:
    state().reset()
    emulator().sender.reset()
    emulator().api_faults.configure({"rate_limit_every": 0, "requests_per_second": 0, "retry_after": 1})
    return json_response({"reset": True})
