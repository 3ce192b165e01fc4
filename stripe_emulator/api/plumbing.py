"""What every endpoint shares: the emulator behind the current app, Stripe's auth, parameters, idempotency,
``expand[]`` and error shape for ``/v1``, and form-or-JSON bodies for the ``/_emulator/`` controls.

Every ``/v1`` request runs under the state's lock, so requests are serialised; that keeps idempotency and
list snapshots simple, and an emulator for tests never needs more throughput than that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from stripe_emulator.delivery import WebhookSender
from stripe_emulator.params import StripeError, decode, get_int, get_list, get_str
from stripe_emulator.state import EmulatorState
from stripe_emulator.state.store import ListQuery, RequestMeta, new_id

Handler = Callable[..., Any]


@dataclass
class ApiFaults:
    """``POST /_emulator/api_faults``: answer ``/v1`` requests 429 (``rate_limit``, with ``Retry-After``) every
    ``rate_limit_every``-th request, and/or beyond ``requests_per_second`` (a one-second window), as Stripe's
    rate limiter does. Zero turns a fault off."""

    rate_limit_every: int = 0
    requests_per_second: int = 0
    retry_after: float = 1.0
    requests: int = 0  # /v1 requests seen since configured
    limited: int = 0  # of which answered 429
    _window: int = 0
    _in_window: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def configure(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for name in ("rate_limit_every", "requests_per_second"):
                if name in params:
                    value = int(params[name])
                    if value < 0:
                        raise ValueError(f"{name} must be >= 0")
                    setattr(self, name, value)
            if "retry_after" in params:
                value_f = float(params["retry_after"])
                if value_f < 0:
                    raise ValueError("retry_after must be >= 0")
                self.retry_after = value_f
            self.requests = self.limited = self._in_window = 0
            return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "rate_limit_every": self.rate_limit_every,
            "requests_per_second": self.requests_per_second,
            "retry_after": self.retry_after,
            "requests": self.requests,
            "limited": self.limited,
        }

    def admit(self) -> bool:
        """Count one ``/v1`` request; False when it is to be answered 429."""
        with self._lock:
            self.requests += 1
            limited = bool(self.rate_limit_every) and self.requests % self.rate_limit_every == 0
            if self.requests_per_second:
                second = int(time.monotonic())
                if second != self._window:
                    self._window, self._in_window = second, 0
                self._in_window += 1
                limited = limited or self._in_window > self.requests_per_second
            if limited:
                self.limited += 1
            return not limited


@dataclass(frozen=True)
class RawJson:
    """An answer already serialised (a list of events): sent as it is, with no ``expand[]`` asked."""

    text: str


@dataclass
class Emulator:
    """What ``create_app`` puts in ``app.extensions["stripe_emulator"]``."""

    state: EmulatorState
    sender: WebhookSender
    api_faults: ApiFaults = field(default_factory=ApiFaults)


def emulator() -> Emulator:
    emulator: Emulator = current_app.extensions["stripe_emulator"]
    return emulator


def state() -> EmulatorState:
    return emulator().state


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, indent=2) + "\n", status=status, headers=headers, mimetype="application/json")


def _api_key() -> str | None:
    """The secret key from ``Authorization: Bearer sk_...`` (or HTTP basic, key as user name, as curl -u does)."""
    if request.authorization is None:
        return None
    key = request.authorization.token or request.authorization.username
    return key or None


def list_query(params: dict[str, Any], *filters: str) -> ListQuery:
    """Stripe's list parameters: ``limit``, the cursors, ``created`` (exact or ``[gt|gte|lt|lte]``), ``filters``."""
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


def stripe_endpoint(
    blueprint: Blueprint, *methods: str, rule: str, name: str | None = None
) -> Callable[[Handler], Handler]:
    """Register a Stripe endpoint: auth, parameters, idempotency, ``expand[]``, errors, all under the lock.

    The handler is called as ``handler(params, req, **path)`` and answers a body or ``(status, body)``.
    """

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
            faults = emulator().api_faults
            if not faults.admit():
                error = StripeError(
                    429,
                    "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
                    code="rate_limit",
                )
                return json_response(error.body(), 429, {"Retry-After": f"{faults.retry_after:g}"})
            pairs = list(request.args.items(multi=True))
            if request.method == "POST":
                pairs += list(request.form.items(multi=True))
            params = decode(pairs)
            idem_key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
            req = RequestMeta(id=new_id("req_", 14), idempotency_key=idem_key)
            headers = {"Request-Id": req.id or ""}
            fingerprint = json.dumps([request.method, request.path, sorted(pairs)])
            current = state()
            with current.lock:
                current.base_url = request.host_url.rstrip("/")
                if idem_key:
                    replay = current.replay(key, idem_key, fingerprint)
                    if replay is not None:
                        headers["Idempotent-Replayed"] = "true"
                        return json_response(replay[1], replay[0], headers)
                try:
                    result = handler(params, req, **path)
                except StripeError as error:
                    # A card error happens after the request took effect (a failed PaymentIntent, its event):
                    # Stripe saves that answer for the key like any other; a refused request is not saved.
                    if idem_key and error.status == 402:
                        current.remember(key, idem_key, fingerprint, error.status, error.body())
                    raise
                if isinstance(result, RawJson):
                    return Response(result.text + "\n", 200, headers, mimetype="application/json")
                status, body = result if isinstance(result, tuple) else (200, result)
                body = current.expand(json.loads(json.dumps(body)), [str(p) for p in get_list(params, "expand")])
                if idem_key:
                    current.remember(key, idem_key, fingerprint, status, body)
                return json_response(body, status, headers)

        blueprint.add_url_rule(rule, endpoint=name or handler.__name__, view_func=view, methods=list(methods))
        return handler

    return decorate


def readable(blueprint: Blueprint, kind: str, path: str, *filters: str) -> None:
    """GET ``path`` (a list with ``filters``) and GET ``path/<id>``, for objects the API only reads."""
    name = path.rsplit("/", 1)[-1]

    @stripe_endpoint(blueprint, "GET", rule=path, name=f"list_{name}")
    def list_view(params: dict[str, Any], req: RequestMeta) -> dict[str, Any]:
        return state().list_objects(kind, list_query(params, *filters), path)

    @stripe_endpoint(blueprint, "GET", rule=f"{path}/<object_id>", name=f"retrieve_{name}")
    def retrieve_view(params: dict[str, Any], req: RequestMeta, object_id: str) -> dict[str, Any]:
        return state().get(kind, object_id)


def control_params() -> dict[str, Any]:
    """A control's parameters: a JSON object, or form and query fields decoded as Stripe's."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise StripeError(400, "The JSON body must be an object.")
        return body
    return decode([*request.args.items(multi=True), *request.form.items(multi=True)])


def control(blueprint: Blueprint, rule: str, *methods: str, locked: bool = True) -> Callable[[Handler], Handler]:
    """Register a control. ``locked``: run it under the state's lock, so the objects it answers with are
    serialised before anyone else can change them (not for controls that wait or send HTTP)."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        def view(**path: str) -> Response:
            if not locked:
                return handler(**path)
            with state().lock:
                return handler(**path)

        blueprint.add_url_rule(rule, endpoint=handler.__name__, view_func=view, methods=list(methods))
        return handler

    return decorate


def register_errors(app: Flask) -> None:
    """Stripe's error shape for our errors and Flask's (unknown paths, wrong methods)."""

    @app.errorhandler(StripeError)
    def stripe_error(error: StripeError) -> Response:
        return json_response(error.body(), error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        message = error.description or error.name
        if request.path.startswith("/v1/") and error.code in (404, 405):
            message = f"Unrecognized request URL ({request.method}: {request.path})."
        return json_response({"error": {"type": "invalid_request_error", "message": message}}, error.code or 500)
