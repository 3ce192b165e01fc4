"""The one module that talks to Stripe (DESIGN rule 8).

Everything else in the project sees Stripe through ``StripeGateway``: plain dicts in Stripe's shapes, never
SDK objects, and ``GatewayError`` subclasses, never SDK exceptions. Keeping the SDK behind this one door means
tests and the offline dev stack swap real Stripe for the project's emulator by setting ``api_base``
(``STRIPE_API_BASE``), an SDK upgrade touches one file, and the metadata that ties a Stripe payment back to a
credit account (``{"account", "package", "credits"}``) is written in exactly one place.

The SDK retries connection errors, 409s and 5xx twice with backoff; POSTs always carry an idempotency key
(ours when the caller gives one, else a random one the SDK reuses across its own retries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import stripe

Params = dict[str, Any]


class GatewayError(Exception):
    """Stripe answered with an error or could not be reached."""

    def __init__(
        self, message: str, *, http_status: int | None = None, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.param = param


class StripeNotFound(GatewayError):
    """The object does not exist (HTTP 404, ``resource_missing``)."""


class StripeRejected(GatewayError):
    """Stripe refused the request as made (4xx: bad parameters, over-refund, idempotency key reuse, auth)."""


class StripeUnavailable(GatewayError):
    """Transient: network failure, rate limit or Stripe-side error after the SDK's own retries; retry later."""


class StripeRateLimited(StripeUnavailable):
    """HTTP 429: too many requests; ``retry_after`` is Stripe's ``Retry-After`` in seconds (None: not said)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _plain(value: Any) -> Any:
    """SDK objects (and lists of them) as plain dicts and lists, all the way down."""
    if isinstance(value, stripe.StripeObject):
        return _plain(value.to_dict(recursive=True))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _translate(exc: stripe.StripeError) -> GatewayError:
    status = exc.http_status
    code = getattr(exc, "code", None)
    param = getattr(exc, "param", None)
    message = exc.user_message or str(exc)
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return StripeRateLimited(message, retry_after=_retry_after(exc), http_status=status, code=code, param=param)
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or (status is not None and status >= 500):
        return StripeUnavailable(message, http_status=status, code=code, param=param)
    if status == 404:
        return StripeNotFound(message, http_status=status, code=code, param=param)
    return StripeRejected(message, http_status=status, code=code, param=param)


def _data(page: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of a list page (Stripe's list objects carry them, as objects, in ``data``)."""
    data: list[dict[str, Any]] = page["data"]
    return data


def stripe_key(idempotency_key: str) -> str:
    """The key as Stripe's ``Idempotency-Key`` header can carry it: HTTP headers are Latin-1 and Stripe takes
    at most 255 characters, while our keys may be any text. Others are sent as the hash of the key (stable:
    a retry sends the same one)."""
    if idempotency_key.isascii() and idempotency_key.isprintable() and len(idempotency_key) <= 255:
        return idempotency_key
    return "sha256:" + hashlib.sha256(idempotency_key.encode()).hexdigest()


def _options(idempotency_key: str | None) -> Params | None:
    return {"idempotency_key": stripe_key(idempotency_key)} if idempotency_key else None


class StripeGateway:
    """Stripe's API as the billing core uses it; every method returns plain dicts."""

    def __init__(self, api_key: str, api_base: str | None = None) -> None:
        base = api_base.rstrip("/") if api_base else None
        self._client = stripe.StripeClient(
            api_key,
            # Written out here, not built beforehand, so the type checker holds it to the SDK's BaseAddresses.
            base_addresses={"api": base, "files": base, "connect": base} if base else None,
            max_network_retries=2,
        )

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            answer = _plain(method(*args, **kwargs))
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        # Every endpoint used here answers one Stripe object (a list is an object too): anything else means the
        # API base points at something that is not Stripe.
        if not isinstance(answer, dict):
            raise GatewayError(f"Stripe answered a {type(answer).__name__}, not an object")
        return answer

    def _list_page(self, path: str, params: Params) -> dict[str, Any]:
        """One page of a list as plain dicts: ``{"data": [...], "has_more": bool}``.

        A raw request whose body is parsed once: the SDK's StripeObjects, built and then turned back into dicts
        by ``_plain``, cost several times the rest of a page (CPU a page of 100, emulator included: events 18
        against 4 ms, Checkout Sessions 170 against 24), most of a reconciliation run's time at Stripe's rate
        limit. Errors are the SDK's own, translated as everywhere else.
        """
        try:
            response = self._client.raw_request("get", path, **params)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        page = orjson.loads(response.body)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise GatewayError(f"Stripe answered something else than a list to GET {path}")
        return {"data": _data(page), "has_more": bool(page.get("has_more"))}

    def _pages(self, list_method: Callable[..., Any], params: Params) -> Iterator[dict[str, Any]]:
        """Every object of a list, newest first, following ``starting_after`` from page to page."""
        params = dict(params)
        while True:
            page = self._call(list_method, params=params)
            yield from _data(page)
            if not page["has_more"] or not page["data"]:
                return
            params["starting_after"] = page["data"][-1]["id"]

    def _page(
        self,
        list_method: Callable[..., Any],
        filters: Params,
        created_gte: int | None,
        starting_after: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """One page of a list, for callers that walk the pages themselves (reconciliation paces its requests)."""
        params: Params = {**filters, "limit": limit}
        if created_gte is not None:
            params["created"] = {"gte": created_gte}
        if starting_after is not None:
            params["starting_after"] = starting_after
        page = self._call(list_method, params=params)
        return {"data": _data(page), "has_more": bool(page["has_more"])}

    # -- customers -----------------------------------------------------------------------------------------

    def create_customer(
        self,
        *,
        account: str,
        email: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        test_clock: str | None = None,
    ) -> dict[str, Any]:
        """A customer tied to ``account``; ``test_clock`` puts it on a test clock (tests only)."""
        params: Params = {"metadata": {"account": account}}
        if email is not None:
            params["email"] = email
        if name is not None:
            params["name"] = name
        if test_clock is not None:
            params["test_clock"] = test_clock
        return self._call(self._client.v1.customers.create, params=params, options=_options(idempotency_key))

    def retrieve_customer(self, customer_id: str) -> dict[str, Any]:
        """The customer; a deleted one comes back as ``{"id", "object": "customer", "deleted": True}``."""
        return self._call(self._client.v1.customers.retrieve, customer_id)

    def list_customers(self, *, email: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` (at most 100) customers, optionally only those with this exact email."""
        params: Params = {"limit": limit}
        if email is not None:
            params["email"] = email
        return _data(self._call(self._client.v1.customers.list, params=params))

    # -- checkout ------------------------------------------------------------------------------------------

    def create_checkout_session(
        self,
        *,
        account: str,
        package_id: str,
        package_name: str,
        credits: str,
        unit_amount: int,
        currency: str,
        success_url: str,
        cancel_url: str,
        customer: str | None = None,
        idempotency_key: str | None = None,
        price: str | None = None,
        payment_method_types: list[str] | None = None,
        bonus_credits: str | None = None,
    ) -> dict[str, Any]:
        """A hosted Checkout Session selling one credit package; its metadata (on the session and on the
        PaymentIntent, hence on the charge) names the account, package and credits that payment buys
        (``credits`` is everything it credits, the bonus included; ``bonus_credits`` says how much of it is
        bonus). ``price``: a stored Stripe Price to sell; without it the amount goes inline as ``price_data``."""
        metadata = {"account": account, "package": package_id, "credits": credits}
        if bonus_credits is not None:
            metadata["bonus_credits"] = bonus_credits
        line_item: Params
        if price is not None:
            line_item = {"price": price, "quantity": 1}
        else:
            line_item = {
                "price_data": {
                    "currency": currency,
                    "unit_amount": unit_amount,
                    "product_data": {"name": package_name},
                },
                "quantity": 1,
            }
        params: Params = {
            "mode": "payment",
            "line_items": [line_item],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": account,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
        }
        if payment_method_types:
            params["payment_method_types"] = list(payment_method_types)
        if customer is not None:
            params["customer"] = customer
        return self._call(self._client.v1.checkout.sessions.create, params=params, options=_options(idempotency_key))

    def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.checkout.sessions.retrieve, session_id)

    def list_checkout_sessions(self, *, payment_intent: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` (at most 100) sessions, optionally only those of one PaymentIntent."""
        params: Params = {"limit": limit}
        if payment_intent is not None:
            params["payment_intent"] = payment_intent
        return _data(self._call(self._client.v1.checkout.sessions.list, params=params))

    def list_checkout_sessions_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One page of sessions, newest first, from ``created_gte`` on: ``{"data": [...], "has_more": bool}``."""
        params: Params = {"limit": limit}
        if created_gte is not None:
            params["created"] = {"gte": created_gte}
        if starting_after is not None:
            params["starting_after"] = starting_after
        return self._list_page("/v1/checkout/sessions", params)

    def list_checkout_line_items(self, session_id: str) -> list[dict[str, Any]]:
        """The line items of a session (what it sells: each with its ``price``)."""
        return _data(self._call(self._client.v1.checkout.sessions.line_items.list, session_id, params={"limit": 100}))

    # -- products and prices (``billing stripe sync-products``) ---------------------------------------------

    def create_product(
        self,
        *,
        name: str,
        product_id: str | None = None,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A Product; ``product_id`` gives it our own stable id (Stripe accepts one on create)."""
        params: Params = {"name": name, "metadata": metadata or {}}
        if product_id is not None:
            params["id"] = product_id
        if description is not None:
            params["description"] = description
        return self._call(self._client.v1.products.create, params=params, options=_options(idempotency_key))

    def retrieve_product(self, product_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.products.retrieve, product_id)

    def update_product(self, product_id: str, **fields: Any) -> dict[str, Any]:
        """Change ``name``, ``description``, ``active``, ``default_price``, ``metadata`` (the fields given)."""
        return self._call(self._client.v1.products.update, product_id, params=dict(fields))

    def create_price(
        self,
        *,
        product: str,
        unit_amount: int,
        currency: str,
        lookup_key: str | None = None,
        transfer_lookup_key: bool = False,
        nickname: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        recurring_interval: str | None = None,
    ) -> dict[str, Any]:
        """A one-time Price, or with ``recurring_interval`` (``month``, ``year``) a recurring one billed every
        interval; with ``transfer_lookup_key`` the lookup key moves here from the Price holding it."""
        params: Params = {
            "product": product,
            "unit_amount": unit_amount,
            "currency": currency,
            "metadata": metadata or {},
        }
        if recurring_interval is not None:
            params["recurring"] = {"interval": recurring_interval}
        if lookup_key is not None:
            params["lookup_key"] = lookup_key
            if transfer_lookup_key:
                params["transfer_lookup_key"] = True
        if nickname is not None:
            params["nickname"] = nickname
        return self._call(self._client.v1.prices.create, params=params, options=_options(idempotency_key))

    def retrieve_price(self, price_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.prices.retrieve, price_id)

    def update_price(self, price_id: str, **fields: Any) -> dict[str, Any]:
        """Change ``active``, ``nickname``, ``lookup_key``, ``metadata`` (a Price's amount never changes)."""
        return self._call(self._client.v1.prices.update, price_id, params=dict(fields))

    def list_prices(
        self,
        *,
        lookup_keys: list[str] | None = None,
        product: str | None = None,
        active: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` (at most 100) Prices matching the filters."""
        params: Params = {"limit": limit}
        if lookup_keys:
            params["lookup_keys"] = list(lookup_keys)
        if product is not None:
            params["product"] = product
        if active is not None:
            params["active"] = active
        return _data(self._call(self._client.v1.prices.list, params=params))

    # -- payments ------------------------------------------------------------------------------------------

    def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.payment_intents.retrieve, payment_intent_id)

    def retrieve_charge(self, charge_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.charges.retrieve, charge_id)

    def retrieve_dispute(self, dispute_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.disputes.retrieve, dispute_id)

    def retrieve_refund(self, refund_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.refunds.retrieve, refund_id)

    def list_refunds(self, *, charge: str) -> list[dict[str, Any]]:
        """Every refund of a charge (all pages), newest first."""
        return list(self._pages(self._client.v1.refunds.list, {"charge": charge, "limit": 100}))

    def list_refunds_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One page of every refund (all charges), newest first, from ``created_gte`` on: ``{"data", "has_more"}``."""
        return self._page(self._client.v1.refunds.list, {}, created_gte, starting_after, limit)

    def list_disputes_page(
        self, *, created_gte: int | None = None, starting_after: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """One page of disputes, newest first, from ``created_gte`` on: ``{"data", "has_more"}``."""
        return self._page(self._client.v1.disputes.list, {}, created_gte, starting_after, limit)

    def create_refund(
        self,
        *,
        payment_intent: str | None = None,
        charge: str | None = None,
        amount: int | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Refund ``amount`` (default: all that is left) of a payment; ``StripeRejected`` when over-refunding.
        ``metadata``: kept on the refund (who asked for it and why)."""
        if payment_intent is None and charge is None:
            raise ValueError("create_refund needs payment_intent or charge")
        params: Params = {}
        if payment_intent is not None:
            params["payment_intent"] = payment_intent
        if charge is not None:
            params["charge"] = charge
        if amount is not None:
            params["amount"] = amount
        if metadata:
            params["metadata"] = dict(metadata)
        return self._call(self._client.v1.refunds.create, params=params, options=_options(idempotency_key))

    def create_off_session_payment_intent(
        self,
        *,
        customer: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        payment_method: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Charge the customer's saved card now, without the customer (``off_session``, ``confirm``); the card
        is ``payment_method`` or else the customer's ``invoice_settings.default_payment_method``.

        Returns the PaymentIntent either way: ``status == "succeeded"`` when paid; on a card error (402:
        declined, authentication required) the failed PaymentIntent that Stripe sends with the error, with
        ``status`` ``requires_payment_method`` (or ``requires_action``) and ``last_payment_error`` (``code``,
        ``decline_code``, ``message``). Other errors raise as usual."""
        params: Params = {
            "amount": amount,
            "currency": currency,
            "customer": customer,
            "off_session": True,
            "confirm": True,
            "metadata": metadata or {},
        }
        if payment_method is not None:
            params["payment_method"] = payment_method
        create: Callable[..., Any] = self._client.v1.payment_intents.create
        try:
            return self._call(create, params=params, options=_options(idempotency_key))
        except StripeRejected as rejected:
            cause = rejected.__cause__
            if isinstance(cause, stripe.CardError) and isinstance(cause.json_body, dict):
                intent = (cause.json_body.get("error") or {}).get("payment_intent")
                if isinstance(intent, dict):
                    failed: dict[str, Any] = _plain(intent)
                    return failed
            raise

    # -- subscriptions ---------------------------------------------------------------------------------------

    def create_subscription_checkout_session(
        self,
        *,
        customer: str,
        price: str,
        success_url: str,
        cancel_url: str,
        client_reference_id: str | None = None,
        metadata: dict[str, str] | None = None,
        subscription_metadata: dict[str, str] | None = None,
        trial_period_days: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A hosted Checkout Session subscribing ``customer`` to one recurring ``price``; once paid it names the
        ``subscription`` (whose ``metadata`` is ``subscription_metadata``) and its first ``invoice``."""
        subscription_data: Params = {"metadata": subscription_metadata or {}}
        if trial_period_days is not None:
            subscription_data["trial_period_days"] = trial_period_days
        params: Params = {
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": metadata or {},
            "subscription_data": subscription_data,
        }
        if client_reference_id is not None:
            params["client_reference_id"] = client_reference_id
        return self._call(self._client.v1.checkout.sessions.create, params=params, options=_options(idempotency_key))

    def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        """The subscription, canceled ones included (``status == "canceled"``)."""
        return self._call(self._client.v1.subscriptions.retrieve, subscription_id)

    def list_subscriptions(
        self, *, customer: str | None = None, status: str | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` (at most 100) subscriptions; without ``status`` every one but the canceled
        (Stripe's default), ``status="all"`` for all."""
        params: Params = {"limit": limit}
        if customer is not None:
            params["customer"] = customer
        if status is not None:
            params["status"] = status
        return _data(self._call(self._client.v1.subscriptions.list, params=params))

    def update_subscription(self, subscription_id: str, **fields: Any) -> dict[str, Any]:
        """Change the fields given, as Stripe names them: ``items=[{"id": item_id, "price": price_id}]`` with
        ``proration_behavior`` (``create_prorations``, ``always_invoice``, ``none``), ``cancel_at_period_end``,
        ``metadata``, ``default_payment_method``; ``idempotency_key`` is taken out and sent as the key."""
        key = fields.pop("idempotency_key", None)
        return self._call(
            self._client.v1.subscriptions.update, subscription_id, params=dict(fields), options=_options(key)
        )

    def cancel_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Cancel at once (``status == "canceled"``); to cancel at the period's end, ``update_subscription``
        with ``cancel_at_period_end=True``."""
        return self._call(self._client.v1.subscriptions.cancel, subscription_id)

    def retrieve_invoice(self, invoice_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.invoices.retrieve, invoice_id)

    def list_invoices(
        self,
        *,
        customer: str | None = None,
        subscription: str | None = None,
        limit: int = 10,
        starting_after: str | None = None,
    ) -> dict[str, Any]:
        """One page of invoices, newest first: ``{"data": [...], "has_more": bool}``; the next page starts after
        the last invoice of this one (``starting_after=page["data"][-1]["id"]``)."""
        params: Params = {"limit": limit}
        if customer is not None:
            params["customer"] = customer
        if subscription is not None:
            params["subscription"] = subscription
        if starting_after is not None:
            params["starting_after"] = starting_after
        page = self._call(self._client.v1.invoices.list, params=params)
        return {"data": _data(page), "has_more": bool(page["has_more"])}

    def list_invoices_page(
        self,
        *,
        created_gte: int | None = None,
        status: str | None = None,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of invoices (every customer's), newest first, from ``created_gte`` on, optionally of one
        ``status`` (``paid``): ``{"data", "has_more"}``."""
        filters: Params = {"status": status} if status is not None else {}
        return self._page(self._client.v1.invoices.list, filters, created_gte, starting_after, limit)

    def create_billing_portal_session(self, *, customer: str, return_url: str) -> dict[str, Any]:
        """A Billing Portal session: send the customer to its ``url``; the portal links back to ``return_url``."""
        params: Params = {"customer": customer, "return_url": return_url}
        return self._call(self._client.v1.billing_portal.sessions.create, params=params)

    # -- test clocks (tests and the offline stack only) -------------------------------------------------------

    def create_test_clock(self, frozen_time: int, name: str | None = None) -> dict[str, Any]:
        params: Params = {"frozen_time": frozen_time}
        if name is not None:
            params["name"] = name
        return self._call(self._client.v1.test_helpers.test_clocks.create, params=params)

    def advance_test_clock(self, test_clock_id: str, frozen_time: int) -> dict[str, Any]:
        """Move the clock to ``frozen_time``; the clock comes back ``ready`` from the emulator, Stripe may
        answer ``advancing`` first (poll ``retrieve_test_clock`` until ``status == "ready"``)."""
        return self._call(
            self._client.v1.test_helpers.test_clocks.advance, test_clock_id, params={"frozen_time": frozen_time}
        )

    def retrieve_test_clock(self, test_clock_id: str) -> dict[str, Any]:
        return self._call(self._client.v1.test_helpers.test_clocks.retrieve, test_clock_id)

    # -- events --------------------------------------------------------------------------------------------

    def iter_events(
        self, *, created_gte: int | None = None, types: list[str] | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every event (Stripe keeps 30 days), newest first, optionally from ``created_gte`` on and of ``types``
        (at most 20, ``*`` wildcards allowed); pages are fetched lazily as the iterator is consumed."""
        params: Params = {"limit": page_size}
        if created_gte is not None:
            params["created"] = {"gte": created_gte}
        if types:
            params["types"] = list(types)
        return self._pages(self._client.v1.events.list, params)

    def list_events_page(
        self,
        *,
        created_gte: int | None = None,
        created_lt: int | None = None,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of events, newest first: ``{"data": [...], "has_more": bool}`` (reconciliation walks the
        pages itself, to pace its requests and remember its place)."""
        params: Params = {"limit": limit}
        created: Params = {}
        if created_gte is not None:
            created["gte"] = created_gte
        if created_lt is not None:
            created["lt"] = created_lt
        if created:
            params["created"] = created
        if starting_after is not None:
            params["starting_after"] = starting_after
        return self._list_page("/v1/events", params)
