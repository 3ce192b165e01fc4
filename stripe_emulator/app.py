"""The emulator's HTTP face: Stripe's ``/v1/...`` paths the gateway uses, and test controls under ``/_emulator/``.

``/v1`` behaves like Stripe where the project depends on it: Bearer auth with any ``sk_...`` key, form-encoded
bodies, ``Idempotency-Key`` replay, ``expand[]``, list pagination newest first, Stripe's error shape and codes.
Controls play the buyer, the bank and the network: pay or fail a checkout session, open or close a dispute,
move the test clock, register webhook endpoints and set delivery faults. They take form or JSON bodies and
answer JSON.

Every ``/v1`` request runs under the state's lock, so requests are serialised; that keeps idempotency and
list snapshots simple, and an emulator for tests never needs more throughput than that.
"""

from __future__ import annotations

import html
import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import wraps
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

from stripe_emulator.delivery import WebhookSender
from stripe_emulator.params import StripeError, decode, get_bool, get_int, get_list, get_str
from stripe_emulator.state import EmulatorState, ListQuery, RequestMeta, new_id

Handler = Callable[..., Any]


@dataclass
class Emulator:
    """What ``create_app`` puts in ``app.extensions["stripe_emulator"]``."""

    state: EmulatorState
    sender: WebhookSender


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, indent=2) + "\n", status=status, headers=headers, mimetype="application/json")


def _api_key() -> str | None:
    """The secret key from ``Authorization: Bearer sk_...`` (or HTTP basic, key as user name, as curl -u does)."""
    if request.authorization is None:
        return None
    key = request.authorization.token or request.authorization.username
    return key or None


def _list_query(params: dict[str, Any], *filters: str) -> ListQuery:
    query = ListQuery(
        limit=get_int(params, "limit", minimum=1, maximum=100) or 10,
        starting_after=get_str(params, "starting_after"),
        ending_before=get_str(params, "ending_before"),
        equals={name: str(params[name]) for name in filters if get_str(params, name)},
    )
    created = params.get("created")
    if isinstance(created, dict):
        for op in created:
            if op not in ("gt", "gte", "lt", "lte"):
                raise StripeError(
                    400, f"Received unknown parameter: created[{op}]", code="parameter_unknown", param=f"created[{op}]"
                )
            bound = get_int(created, op, required=True, label=f"created[{op}]")
            if bound is not None:
                query.created[op] = bound
    elif (exact := get_int(params, "created")) is not None:
        query.created["eq"] = exact
    return query


def create_app(state: EmulatorState | None = None) -> Flask:
    """A Flask app emulating Stripe over ``state`` (a fresh one by default), with its webhook sender started."""
    state = state or EmulatorState()
    sender = WebhookSender(state)
    sender.start()
    app = Flask(__name__)
    app.extensions["stripe_emulator"] = Emulator(state, sender)

    # -- /v1 plumbing ----------------------------------------------------------------------------------------

    def api(*methods: str, rule: str, name: str | None = None) -> Callable[[Handler], Handler]:
        """Register a Stripe endpoint: auth, parameters, idempotency, ``expand[]``, errors, all under the lock."""

        def decorate(handler: Handler) -> Handler:
            @wraps(handler)
            def view(**path: str) -> Response:
                key = _api_key()
                if key is None:
                    raise StripeError(
                        401,
                        "You did not provide an API key. You need to provide your API key in the Authorization "
                        "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
                    )
                if not key.startswith(("sk_", "rk_")):
                    raise StripeError(401, f"Invalid API Key provided: {key[:8]}{'*' * max(len(key) - 8, 0)}")
                pairs = list(request.args.items(multi=True))
                if request.method == "POST":
                    pairs += list(request.form.items(multi=True))
                params = decode(pairs)
                idem_key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
                req = RequestMeta(id=new_id("req_", 14), idempotency_key=idem_key)
                headers = {"Request-Id": req.id or ""}
                fingerprint = json.dumps([request.method, request.path, sorted(pairs)])
                with state.lock:
                    if idem_key:
                        replay = state.replay(key, idem_key, fingerprint)
                        if replay is not None:
                            headers["Idempotent-Replayed"] = "true"
                            return _json(replay[1], replay[0], headers)
                    result = handler(params, req, **path)
                    status, body = result if isinstance(result, tuple) else (200, result)
                    body = state.expand(json.loads(json.dumps(body)), [str(p) for p in get_list(params, "expand")])
                    if idem_key:
                        state.remember(key, idem_key, fingerprint, status, body)
                    return _json(body, status, headers)

            app.add_url_rule(rule, endpoint=name or handler.__name__, view_func=view, methods=list(methods))
            return handler

        return decorate

    @app.errorhandler(StripeError)
    def stripe_error(error: StripeError) -> Response:
        return _json(error.body(), error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        message = error.description or error.name
        if request.path.startswith("/v1/") and error.code in (404, 405):
            message = f"Unrecognized request URL ({request.method}: {request.path})."
        return _json({"error": {"type": "invalid_request_error", "message": message}}, error.code or 500)

    # -- customers -------------------------------------------------------------------------------------------

    @api("POST", rule="/v1/customers")
    def create_customer(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
        return state.create_customer(params, req)

    @api("GET", rule="/v1/customers")
    def list_customers(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
        return state.list_objects("customer", _list_query(params, "email"), "/v1/customers")

    @api("GET", rule="/v1/customers/<customer_id>")
    def retrieve_customer(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
        return state.retrieve_customer(customer_id)

    @api("POST", rule="/v1/customers/<customer_id>")
    def update_customer(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
        return state.update_customer(customer_id, params, req)

    @api("DELETE", rule="/v1/customers/<customer_id>")
    def delete_customer(params: dict[str, Any], req: RequestMeta, customer_id: str) -> dict[str, Any]:
        return state.delete_customer(customer_id, req)

    # -- checkout sessions -----------------------------------------------------------------------------------

    @api("POST", rule="/v1/checkout/sessions")
    def create_checkout_session(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
        return state.create_checkout_session(params, request.host_url.rstrip("/"), req)

    @api("GET", rule="/v1/checkout/sessions")
    def list_checkout_sessions(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
        query = _list_query(params, "payment_intent", "customer", "status", "client_reference_id")
        return state.list_objects("checkout.session", query, "/v1/checkout/sessions")

    @api("GET", rule="/v1/checkout/sessions/<session_id>")
    def retrieve_checkout_session(params: dict[str, Any], req: RequestMeta, session_id: str) -> dict[str, Any]:
        return state.get("checkout.session", session_id, param="session")

    @api("GET", rule="/v1/checkout/sessions/<session_id>/line_items")
    def list_line_items(params: dict[str, Any], req: RequestMeta, session_id: str) -> dict[str, Any]:
        return state.retrieve_line_items(session_id, _list_query(params))

    @api("POST", rule="/v1/checkout/sessions/<session_id>/expire")
    def expire_checkout_session(params: dict[str, Any], req: RequestMeta, session_id: str) -> dict[str, Any]:
        return state.expire_checkout_session(session_id, req)

    # -- payment intents, charges, refunds, disputes, events --------------------------------------------------

    def readable(kind: str, path: str, *filters: str) -> None:
        """GET ``path`` (a list with ``filters``) and GET ``path/<id>``, for objects the API only reads."""
        name = path.rsplit("/", 1)[-1]

        @api("GET", rule=path, name=f"list_{name}")
        def list_view(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
            query = _list_query(params, *filters)
            if kind == "event":
                query.types = [str(t) for t in get_list(params, "types")]
                if len(query.types) > 20:
                    raise StripeError(400, "You may pass at most 20 event types.", param="types")
                if get_str(params, "type"):
                    query.types.append(str(params["type"]))
            return state.list_objects(kind, query, path)

        @api("GET", rule=f"{path}/<object_id>", name=f"retrieve_{name}")
        def retrieve_view(params: dict[str, Any], req: RequestMeta, object_id: str) -> dict[str, Any]:
            return state.get(kind, object_id)

    readable("payment_intent", "/v1/payment_intents", "customer", "status")
    readable("charge", "/v1/charges", "payment_intent", "customer")
    readable("refund", "/v1/refunds", "charge", "payment_intent")
    readable("dispute", "/v1/disputes", "charge", "payment_intent")
    readable("event", "/v1/events")

    @api("POST", rule="/v1/refunds")
    def create_refund(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
        return state.create_refund(params, req)

    @api("GET", rule="/v1/charges/<charge_id>/refunds")
    def list_charge_refunds(params: dict[str, Any], req: RequestMeta, charge_id: str) -> dict[str, Any]:
        state.get("charge", charge_id, param="charge")
        query = _list_query(params)
        query.equals["charge"] = charge_id
        return state.list_objects("refund", query, f"/v1/charges/{charge_id}/refunds")

    @api("POST", rule="/v1/disputes/<dispute_id>/close")
    def accept_dispute(params: dict[str, Any], req: RequestMeta, dispute_id: str) -> dict[str, Any]:
        # Stripe's "close" is the merchant accepting the dispute, which means losing it.
        return state.close_dispute(dispute_id, "lost", req)

    # -- controls ----------------------------------------------------------------------------------------------

    def control_params() -> dict[str, Any]:
        if request.is_json:
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise StripeError(400, "The JSON body must be an object.")
            return body
        return decode([*request.args.items(multi=True), *request.form.items(multi=True)])

    def control(rule: str, *methods: str, locked: bool = True) -> Callable[[Handler], Handler]:
        """Register a control. ``locked``: run it under the state's lock, so the objects it answers with are
        serialised before anyone else can change them (not for controls that wait or send HTTP)."""

        def decorate(handler: Handler) -> Handler:
            @wraps(handler)
            def view(**path: str) -> Response:
                if not locked:
                    return handler(**path)
                with state.lock:
                    return handler(**path)

            app.add_url_rule(rule, endpoint=f"control_{handler.__name__}", view_func=view, methods=list(methods))
            return handler

        return decorate

    def session_answer(session: dict[str, Any], params: dict[str, Any], target: str | None) -> Response:
        """JSON for programs; for the HTML checkout page (its forms send ``redirect=1``) a redirect to
        ``target`` (``success_url``), or back to the page itself."""
        if get_bool(params, "redirect"):
            url = (session.get(target) if target else None) or f"/_emulator/checkout/{session['id']}"
            return Response(status=303, headers={"Location": url.replace("{CHECKOUT_SESSION_ID}", session["id"])})
        return _json(session)

    @control("/_emulator/webhook_endpoints", "POST")
    def add_webhook_endpoint() -> Response:
        params = control_params()
        url = get_str(params, "url", required=True)
        events = [str(e) for e in get_list(params, "enabled_events")]
        return _json(state.add_webhook_endpoint(str(url), get_str(params, "secret"), events))

    @control("/_emulator/webhook_endpoints", "GET")
    def list_webhook_endpoints() -> Response:
        return _json({"object": "list", "data": list(state.webhook_endpoints.values())})

    @control("/_emulator/webhook_endpoints/<endpoint_id>", "DELETE")
    def delete_webhook_endpoint(endpoint_id: str) -> Response:
        if state.webhook_endpoints.pop(endpoint_id, None) is None:
            raise StripeError(404, f"No such webhook endpoint: '{endpoint_id}'", code="resource_missing")
        return _json({"id": endpoint_id, "object": "webhook_endpoint", "deleted": True})

    @control("/_emulator/checkout/sessions/<session_id>/pay", "POST")
    def pay(session_id: str) -> Response:
        params = control_params()
        session = state.pay_checkout_session(session_id, asynchronous=get_bool(params, "async"))
        return session_answer(session, params, "success_url")

    @control("/_emulator/checkout/sessions/<session_id>/async_succeed", "POST")
    def async_succeed(session_id: str) -> Response:
        return _json(state.settle_async_payment(session_id, succeeded=True))

    @control("/_emulator/checkout/sessions/<session_id>/async_fail", "POST")
    def async_fail(session_id: str) -> Response:
        return _json(state.settle_async_payment(session_id, succeeded=False))

    @control("/_emulator/checkout/sessions/<session_id>/fail", "POST")
    def fail(session_id: str) -> Response:
        params = control_params()
        session = state.fail_checkout_session(session_id)
        return session_answer(session, params, None)

    @control("/_emulator/checkout/sessions/<session_id>/expire", "POST")
    def expire(session_id: str) -> Response:
        return _json(state.expire_checkout_session(session_id))

    @control("/_emulator/charges/<charge_id>/dispute", "POST")
    def open_dispute(charge_id: str) -> Response:
        params = control_params()
        amount = get_int(params, "amount", minimum=1)
        return _json(state.open_dispute(charge_id, amount=amount, reason=get_str(params, "reason")))

    @control("/_emulator/disputes/<dispute_id>/close", "POST")
    def close_dispute(dispute_id: str) -> Response:
        status = get_str(control_params(), "status", required=True)
        return _json(state.close_dispute(dispute_id, str(status)))

    @control("/_emulator/delivery", "GET", "POST")
    def delivery_settings() -> Response:
        if request.method == "GET":
            return _json(asdict(sender.settings))
        try:
            return _json(asdict(sender.configure(control_params())))
        except (TypeError, ValueError) as exc:
            raise StripeError(400, str(exc)) from exc

    @control("/_emulator/events/<event_id>/deliver", "POST", locked=False)
    def deliver_event(event_id: str) -> Response:
        return _json({"object": "list", "data": sender.deliver_now(event_id)})

    @control("/_emulator/flush", "POST", locked=False)
    def flush() -> Response:
        timeout = float(control_params().get("timeout", 10))
        flushed = sender.flush(min(max(timeout, 0.0), 120.0))
        return _json({"flushed": flushed, **sender.counts()})

    @control("/_emulator/deliveries", "GET")
    def deliveries() -> Response:
        event_id = request.args.get("event_id")
        log = [e for e in sender.log if event_id is None or e["event_id"] == event_id]
        return _json({"object": "list", "data": log})

    @control("/_emulator/clock", "GET", "POST")
    def clock() -> Response:
        if request.method == "POST":
            advance = get_int(control_params(), "advance", required=True, minimum=0)
            return _json({"now": state.advance_clock(advance or 0)})
        return _json({"now": state.now()})

    @control("/_emulator/reset", "POST")
    def reset() -> Response:
        state.reset()
        sender.reset()
        return _json({"reset": True})

    @control("/_emulator/checkout/<session_id>", "GET")
    def checkout_page(session_id: str) -> Response:
        session = state.get("checkout.session", session_id, param="session")
        return Response(_checkout_html(session, state.line_items.get(session_id, [])), mimetype="text/html")

    return app


def _checkout_html(session: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """A bare page for humans following the README: the basket, then Pay and Decline buttons."""
    sid = html.escape(session["id"])
    rows = "".join(
        f"<li>{html.escape(i['description'] or '')} &times; {i['quantity']}: "
        f"{i['amount_total'] / 100:.2f} {i['currency'].upper()}</li>"
        for i in items
    )
    total = f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"
    if session["status"] != "open":
        actions = f"<p>This session is <b>{html.escape(session['status'])}</b>.</p>"
    else:
        actions = "".join(
            f'<form method="post" action="/_emulator/checkout/sessions/{sid}/{action}">'
            f'<input type="hidden" name="redirect" value="1">{extra}<button>{label}</button></form>'
            for action, label, extra in (
                ("pay", "Pay", ""),
                ("pay", "Pay (bank debit, settles later)", '<input type="hidden" name="async" value="true">'),
                ("fail", "Decline card", ""),
            )
        )
        if session.get("cancel_url"):
            actions += f'<p><a href="{html.escape(session["cancel_url"])}">Cancel</a></p>'
    return (
        f"<!doctype html><title>Checkout {sid}</title><h1>Stripe emulator checkout</h1>"
        f"<p>Session <code>{sid}</code></p><ul>{rows}</ul><p>Total: <b>{total}</b></p>{actions}"
    )


# -- running it ------------------------------------------------------------------------------------------------


def _stop_sender(app: Flask) -> None:
    app.extensions["stripe_emulator"].sender.stop()


def serve(host: str = "127.0.0.1", port: int = 12111) -> None:
    """Serve the emulator until SIGTERM or SIGINT; print ``stripe emulator listening on http://HOST:PORT`` first."""
    app = create_app()
    server = make_server(host, port, app, threaded=True)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it must run on another thread than the one serving.
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    print(f"stripe emulator listening on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        _stop_sender(app)
        sys.stdout.flush()


class _QuietRequestHandler(WSGIRequestHandler):
    """No access log line per request: test output stays readable (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def run_in_thread(host: str = "127.0.0.1", port: int = 0) -> tuple[str, Callable[[], None]]:
    """Start an emulator on a background thread (port 0: any free port); returns its base URL and a stop function."""
    app = create_app()
    server = make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)
    # A short poll interval so that stop() (server.shutdown) returns quickly: tests start and stop many of these.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="stripe-emulator-http", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        _stop_sender(app)

    return f"http://{host}:{server.server_port}", stop
