"""The emulator's memory: Stripe objects, the events every change records, webhook endpoints, the test clock.

Every object starts as a deep copy of Stripe's own example (``fixtures.json``, taken from Stripe's OpenAPI
fixtures, MIT licence in ``fixtures.LICENSE``) with ids, amounts, statuses, timestamps and links overwritten,
so field names are Stripe's exactly. Example values that would mislead (a random shipping cost, a discount,
a transfer destination) are reset to what a plain card payment has.

One re-entrant lock guards everything. Operations hold it for their whole run, so the events of one operation
(``payment_intent.succeeded``, ``charge.succeeded``, ``checkout.session.completed``) become visible together
and the webhook sender (which waits on the same lock) sees them as one burst.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from stripe_emulator.params import StripeError, get_dict, get_int, get_list, get_str, metadata, missing, no_such

API_VERSION = "2026-10-28.endive"  # what stripe 16.1.0 pins; events say which version shaped them
_ALPHABET = string.ascii_letters + string.digits
_FIXTURES: dict[str, dict[str, Any]] = json.loads(
    resources.files("stripe_emulator").joinpath("fixtures.json").read_text(encoding="utf-8")
)

# Id prefix -> object kind, for lookups by bare id (``expand[]``, list cursors).
PREFIXES = {
    "cus_": "customer",
    "cs_": "checkout.session",
    "pi_": "payment_intent",
    "ch_": "charge",
    "py_": "charge",  # Stripe's id for charges of non-card (async) payment methods
    "re_": "refund",
    "dp_": "dispute",
    "evt_": "event",
}
KINDS = tuple(dict.fromkeys(PREFIXES.values()))


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id: prefix plus random letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def template(kind: str) -> dict[str, Any]:
    """A fresh deep copy of Stripe's example object of that kind."""
    return copy.deepcopy(_FIXTURES[kind])


def kind_of(object_id: str) -> str | None:
    return next((kind for prefix, kind in PREFIXES.items() if object_id.startswith(prefix)), None)


@dataclass(frozen=True)
class RequestMeta:
    """Which API request caused a change; events carry it as ``request: {"id", "idempotency_key"}``."""

    id: str | None = None
    idempotency_key: str | None = None


@dataclass
class ListQuery:
    """A validated list request: Stripe's cursor pagination plus equality and ``created`` filters."""

    limit: int = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: dict[str, int] = field(default_factory=dict)  # {"gte": 1700000000, "eq": ...}
    equals: dict[str, str] = field(default_factory=dict)  # field name -> required value
    types: list[str] = field(default_factory=list)  # event type patterns, ``*`` allowed


_CREATED_OPS: dict[str, Callable[[int, int], bool]] = {
    "eq": lambda a, b: a == b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


class EmulatorState:
    """All objects and events of one emulator, and the operations that change them."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.RLock()
        self._wall_clock = wall_clock
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.reset()

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object, event, endpoint and idempotent response; the clock returns to wall time."""
        with self.lock:
            self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
            self._seq: dict[str, int] = {}  # object id -> insertion order, the tie-break for equal ``created``
            self._counter = itertools.count(1)
            self.deleted_customers: set[str] = set()
            self.line_items: dict[str, list[dict[str, Any]]] = {}  # session id -> its line items
            self.payment_intent_data: dict[str, dict[str, Any]] = {}  # session id -> payment_intent_data
            self.idempotent: dict[tuple[str, str], tuple[str, int, dict[str, Any]]] = {}
            self.webhook_endpoints: dict[str, dict[str, Any]] = {}
            self.clock_offset = 0

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(event)`` (with the lock held) for every event recorded from now on."""
        with self.lock:
            self._listeners.append(listener)

    def now(self) -> int:
        return int(self._wall_clock()) + self.clock_offset

    def _store(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[kind][obj["id"]] = obj
        self._seq[obj["id"]] = next(self._counter)
        return obj

    def get(self, kind: str, object_id: str, *, param: str = "id") -> dict[str, Any]:
        obj = self.objects[kind].get(object_id)
        if obj is None or object_id in self.deleted_customers:
            raise no_such(kind, object_id, param)
        return obj

    def find(self, object_id: str) -> dict[str, Any] | None:
        kind = kind_of(object_id)
        return self.objects[kind].get(object_id) if kind else None

    def record_event(
        self,
        type: str,
        obj: dict[str, Any],
        *,
        previous: dict[str, Any] | None = None,
        req: RequestMeta | None = None,
    ) -> dict[str, Any]:
        """Snapshot ``obj`` into a new event (served by /v1/events) and hand it to the webhook sender."""
        event = template("event")
        event.update(
            id=new_id("evt_"),
            created=self.now(),
            type=type,
            api_version=API_VERSION,
            livemode=False,
            pending_webhooks=len(self.endpoints_for(type)),
            request={"id": req.id if req else None, "idempotency_key": req.idempotency_key if req else None},
            data={"object": copy.deepcopy(obj)},
        )
        if previous is not None:
            event["data"]["previous_attributes"] = copy.deepcopy(previous)
        self._store("event", event)
        for listener in self._listeners:
            listener(event)
        return event

    # -- listing ---------------------------------------------------------------------------------------------

    def list_objects(
        self, kind: str, query: ListQuery, url: str, items: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """One page of a list, newest first: ``{"object": "list", "data", "has_more", "url"}``.

        ``items`` replaces the stored objects of ``kind`` for sub-lists, which keep their own order (a
        session's line items are listed as they were given).
        """
        with self.lock:
            if items is None:
                live = [o for o in self.objects[kind].values() if o["id"] not in self.deleted_customers]
                # Newest first by ``created``; insertion order breaks ties within one second.
                keyed = [((o["created"], self._seq[o["id"]]), o) for o in live]
            else:
                keyed = [((0, -i), o) for i, o in enumerate(items)]
            keys = {o["id"]: k for k, o in keyed}
            keyed = sorted(((k, o) for k, o in keyed if self._matches(o, query)), key=lambda p: p[0], reverse=True)

            def cursor(object_id: str, param: str) -> tuple[int, int]:
                if object_id not in keys:
                    raise no_such(kind, object_id, param)
                return keys[object_id]

            if query.starting_after:
                after = cursor(query.starting_after, "starting_after")
                pool = [o for k, o in keyed if k < after]
                page, has_more = pool[: query.limit], len(pool) > query.limit
            elif query.ending_before:
                before = cursor(query.ending_before, "ending_before")
                pool = [o for k, o in keyed if k > before]
                # The page next to the cursor, still newest first; "more" means more newer objects.
                page, has_more = pool[-query.limit :], len(pool) > query.limit
            else:
                pool = [o for _, o in keyed]
                page, has_more = pool[: query.limit], len(pool) > query.limit
            return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": url}

    @staticmethod
    def _matches(obj: dict[str, Any], query: ListQuery) -> bool:
        if any(obj.get(name) != value for name, value in query.equals.items()):
            return False
        if any(not _CREATED_OPS[op](obj["created"], bound) for op, bound in query.created.items()):
            return False
        return not query.types or any(fnmatch.fnmatchcase(obj.get("type", ""), t) for t in query.types)

    def expand(self, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """Replace id fields named by ``expand[]`` paths (``payment_intent``, ``data.charge``) with objects."""
        for path in paths:
            self._expand_path(obj, path.split("."))
        return obj

    def _expand_path(self, node: Any, parts: list[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._expand_path(item, parts)
            return
        if not isinstance(node, dict) or (parts[0] not in node and parts[0] != "line_items"):
            return
        name, rest = parts[0], parts[1:]
        value = node.get(name)
        if name == "line_items" and node.get("object") == "checkout.session":
            query = ListQuery(limit=100)
            node[name] = value = self.list_objects(
                "item", query, f"/v1/checkout/sessions/{node['id']}/line_items", self.line_items.get(node["id"], [])
            )
        elif isinstance(value, str) and (target := self.find(value)) is not None:
            node[name] = value = copy.deepcopy(target)
        if rest:
            self._expand_path(value, rest)

    # -- webhook endpoints and clock ----------------------------------------------------------------------

    def add_webhook_endpoint(self, url: str, secret: str | None, enabled_events: list[str]) -> dict[str, Any]:
        with self.lock:
            endpoint = {
                "id": new_id("we_"),
                "object": "webhook_endpoint",
                "url": url,
                "secret": secret or new_id("whsec_", 32),
                "enabled_events": enabled_events or ["*"],
                "created": self.now(),
            }
            self.webhook_endpoints[endpoint["id"]] = endpoint
            return endpoint

    def endpoints_for(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                e
                for e in self.webhook_endpoints.values()
                if any(fnmatch.fnmatchcase(event_type, pattern) for pattern in e["enabled_events"])
            ]

    def advance_clock(self, seconds: int) -> int:
        """Move the test clock forward; open sessions past ``expires_at`` expire, as Stripe's would."""
        with self.lock:
            self.clock_offset += seconds
            for session in list(self.objects["checkout.session"].values()):
                if session["status"] == "open" and session["expires_at"] <= self.now():
                    self.expire_checkout_session(session["id"])
            return self.now()

    # -- customers -----------------------------------------------------------------------------------------

    _CUSTOMER_FIELDS = ("email", "name", "description", "phone")

    def create_customer(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.lock:
            customer = template("customer")
            customer.update(
                id=new_id("cus_", 14),
                created=self.now(),
                currency=None,
                discount=None,
                shipping=None,
                invoice_prefix=secrets.token_hex(4).upper(),
                metadata=metadata(params),
                preferred_locales=[str(x) for x in get_list(params, "preferred_locales")],
                **{name: get_str(params, name) for name in self._CUSTOMER_FIELDS},
            )
            self._store("customer", customer)
            self.record_event("customer.created", customer, req=req)
            return customer

    def update_customer(
        self, customer_id: str, params: Mapping[str, Any], req: RequestMeta | None = None
    ) -> dict[str, Any]:
        with self.lock:
            customer = self.get("customer", customer_id)
            previous: dict[str, Any] = {}
            for name in self._CUSTOMER_FIELDS:
                if name in params:
                    value = get_str(params, name)
                    if customer[name] != value:
                        previous[name] = customer[name]
                        customer[name] = value
            if "metadata" in params:
                merged = dict(customer["metadata"])
                for key, value in metadata(params).items():
                    if value == "":  # Stripe: an empty value unsets the key
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                if merged != customer["metadata"]:
                    previous["metadata"] = customer["metadata"]
                    customer["metadata"] = merged
            if previous:
                self.record_event("customer.updated", customer, previous=previous, req=req)
            return customer

    def delete_customer(self, customer_id: str, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.lock:
            customer = self.get("customer", customer_id)
            self.deleted_customers.add(customer_id)
            self.record_event("customer.deleted", customer, req=req)
            return {"id": customer_id, "object": "customer", "deleted": True}

    def retrieve_customer(self, customer_id: str) -> dict[str, Any]:
        with self.lock:
            if customer_id in self.deleted_customers:  # Stripe still answers, with a tombstone
                return {"id": customer_id, "object": "customer", "deleted": True}
            return self.get("customer", customer_id)

    # -- checkout sessions ---------------------------------------------------------------------------------

    def create_checkout_session(
        self, params: Mapping[str, Any], base_url: str, req: RequestMeta | None = None
    ) -> dict[str, Any]:
        with self.lock:
            mode = get_str(params, "mode", required=True)
            if mode != "payment":
                raise StripeError(400, "The emulator supports only mode=payment.", param="mode")
            customer_id = get_str(params, "customer")
            if customer_id:
                self.get("customer", customer_id, param="customer")
            raw_items = get_list(params, "line_items")
            if not raw_items:
                raise missing("line_items")
            now = self.now()
            session_id = "cs_test_" + new_id("a1", 56)
            items = [self._line_item(raw, i, now) for i, raw in enumerate(raw_items)]
            currencies = {item["currency"] for item in items}
            if len(currencies) > 1:
                raise StripeError(400, "All line items must use the same currency.", param="line_items")
            total = sum(item["amount_total"] for item in items)
            pi_data = get_dict(params, "payment_intent_data")
            session = template("checkout.session")
            # The fixture's example values describe a session with tax, shipping and promotions; ours has none.
            session["custom_text"] = dict.fromkeys(session["custom_text"])
            session["invoice_creation"]["enabled"] = False
            session.update(
                id=session_id,
                created=now,
                expires_at=get_int(params, "expires_at") or now + 24 * 3600,
                mode=mode,
                status="open",
                payment_status="unpaid",
                payment_intent=None,  # Stripe creates the PaymentIntent when the buyer pays
                currency=currencies.pop(),
                amount_subtotal=total,
                amount_total=total,
                customer=customer_id,
                customer_email=get_str(params, "customer_email"),
                customer_creation=None if customer_id else get_str(params, "customer_creation") or "if_required",
                customer_details=None,
                client_reference_id=get_str(params, "client_reference_id"),
                metadata=metadata(params),
                success_url=get_str(params, "success_url"),
                cancel_url=get_str(params, "cancel_url"),
                locale=get_str(params, "locale"),
                payment_method_types=[str(t) for t in get_list(params, "payment_method_types")] or ["card"],
                url=f"{base_url}/_emulator/checkout/{session_id}",
                after_expiration=None,
                automatic_tax={"enabled": False, "liability": None, "status": None, "provider": None},
                consent=None,
                consent_collection=None,
                payment_method_configuration_details=None,
                shipping_address_collection=None,
                shipping_cost=None,
                total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                currency_conversion=None,
                collected_information=None,
                adaptive_pricing={"enabled": False},
                managed_payments={"enabled": False},
            )
            self.line_items[session_id] = items
            self.payment_intent_data[session_id] = {
                "metadata": metadata(pi_data),
                "description": get_str(pi_data, "description"),
            }
            return self._store("checkout.session", session)

    @staticmethod
    def _line_item(raw: Any, index: int, now: int) -> dict[str, Any]:
        label = f"line_items[{index}]"
        if not isinstance(raw, dict):
            raise StripeError(400, f"Invalid object: {label}", param=label)
        if "price" in raw:
            raise no_such("price", str(raw["price"]), f"{label}[price]")
        price_data = raw.get("price_data")
        if not isinstance(price_data, dict):
            raise missing(f"{label}[price_data]")
        quantity = get_int(raw, "quantity", required=True, minimum=1, label=f"{label}[quantity]")
        unit_amount = get_int(
            price_data, "unit_amount", required=True, minimum=0, label=f"{label}[price_data][unit_amount]"
        )
        currency = (get_str(price_data, "currency") or "").lower()
        if not currency:
            raise missing(f"{label}[price_data][currency]")
        product = get_dict(price_data, "product_data")
        name = get_str(product, "name", required=False)
        if not name:
            raise missing(f"{label}[price_data][product_data][name]")
        assert quantity is not None and unit_amount is not None
        item = template("item")
        price = item["price"]
        price.update(
            id=new_id("price_"),
            created=now,
            currency=currency,
            product=new_id("prod_", 14),
            recurring=None,
            transform_quantity=None,
            custom_unit_amount=None,
            type="one_time",
            unit_amount=unit_amount,
            unit_amount_decimal=str(unit_amount),
            active=False,  # an inline price_data price is archived right away, as Stripe does
        )
        item.update(
            id=new_id("li_"),
            amount_discount=0,
            amount_tax=0,
            amount_subtotal=unit_amount * quantity,
            amount_total=unit_amount * quantity,
            currency=currency,
            description=name,
            quantity=quantity,
            adjustable_quantity=None,
        )
        return item

    def retrieve_line_items(self, session_id: str, query: ListQuery) -> dict[str, Any]:
        with self.lock:
            self.get("checkout.session", session_id, param="session")
            return self.list_objects(
                "item", query, f"/v1/checkout/sessions/{session_id}/line_items", self.line_items[session_id]
            )

    def expire_checkout_session(self, session_id: str, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.lock:
            session = self.get("checkout.session", session_id, param="session")
            if session["status"] != "open":
                raise StripeError(
                    400,
                    f"Only Checkout Sessions with a status of 'open' can be expired; this one is {session['status']}.",
                )
            session["status"] = "expired"
            session["url"] = None
            self.record_event("checkout.session.expired", session, req=req)
            return session

    def _open_session(self, session_id: str) -> dict[str, Any]:
        session = self.get("checkout.session", session_id)
        if session["status"] != "open":
            raise StripeError(400, f"Checkout Session {session_id} is {session['status']}, not open.")
        return session

    def _payment_intent_for(self, session: dict[str, Any]) -> dict[str, Any]:
        """The session's PaymentIntent: the one an earlier failed attempt created, or a new one."""
        if session["payment_intent"]:
            return self.objects["payment_intent"][session["payment_intent"]]
        pi_data = self.payment_intent_data[session["id"]]
        pi_id = new_id("pi_")
        pi = template("payment_intent")
        pi.update(
            id=pi_id,
            created=self.now(),
            amount=session["amount_total"],
            amount_capturable=0,
            amount_received=0,
            currency=session["currency"],
            customer=session["customer"],
            description=pi_data["description"],
            metadata=dict(pi_data["metadata"]),
            client_secret=f"{pi_id}_secret_{new_id('', 25)}",
            canceled_at=None,
            last_payment_error=None,
            latest_charge=None,
            next_action=None,
            processing=None,
            shipping=None,
            transfer_data=None,
            automatic_payment_methods=None,
            payment_method_configuration_details=None,
            payment_method_types=list(session["payment_method_types"]),
            managed_payments=None,
            status="requires_payment_method",
        )
        session["payment_intent"] = pi_id
        return self._store("payment_intent", pi)

    def _new_charge(self, pi: dict[str, Any], *, status: str, prefix: str = "ch_") -> dict[str, Any]:
        charge_id = new_id(prefix)
        succeeded = status == "succeeded"
        charge = template("charge")
        charge.update(
            id=charge_id,
            created=self.now(),
            amount=pi["amount"],
            amount_captured=pi["amount"] if succeeded else 0,
            amount_refunded=0,
            captured=succeeded,
            paid=succeeded,
            status=status,
            currency=pi["currency"],
            customer=pi["customer"],
            description=pi["description"],
            metadata=dict(pi["metadata"]),  # Stripe copies the PaymentIntent's metadata onto its charges
            payment_intent=pi["id"],
            payment_method=pi["payment_method"],
            balance_transaction=new_id("txn_") if succeeded else None,
            billing_details={**template("charge")["billing_details"], "name": None},
            outcome={
                **template("charge")["outcome"],
                "network_status": "approved_by_network",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            receipt_url=None,
            refunded=False,
            refunds={"object": "list", "data": [], "has_more": False, "url": f"/v1/charges/{charge_id}/refunds"},
            shipping=None,
            source=None,
            transfer_data=None,
        )
        card = charge["payment_method_details"]["card"]
        card["amount_authorized"] = pi["amount"]
        card["overcapture"]["maximum_amount_capturable"] = pi["amount"]
        card["wallet"] = None  # a plain card, not Link or a phone wallet
        pi["latest_charge"] = charge_id
        return self._store("charge", charge)

    def _complete_session(self, session: dict[str, Any], *, paid: bool) -> None:
        customer = self.objects["customer"].get(session["customer"] or "")
        email = session["customer_email"] or (customer or {}).get("email") or "buyer@example.com"
        if session["customer"] is None and session["customer_creation"] == "always":
            customer = self.create_customer({"email": email})
            session["customer"] = customer["id"]
        details = template("checkout.session")["customer_details"]
        details.update(email=email, name=(customer or {}).get("name"))
        session.update(status="complete", payment_status="paid" if paid else "unpaid", customer_details=details)

    def pay_checkout_session(self, session_id: str, *, asynchronous: bool = False) -> dict[str, Any]:
        """The buyer pays. Card: paid at once. ``asynchronous``: complete now, money settles later."""
        with self.lock:
            session = self._open_session(session_id)
            pi = self._payment_intent_for(session)
            pi.update(payment_method=new_id("pm_"), last_payment_error=None, customer=session["customer"])
            if asynchronous:
                pi["status"] = "processing"
                pi["payment_method_types"] = ["us_bank_account"]
                charge = self._new_charge(pi, status="pending", prefix="py_")
                charge["payment_method_details"] = {"type": "us_bank_account", "us_bank_account": {}}
                self._complete_session(session, paid=False)
                self._sync_customer(pi, charge, session)
                self.record_event("payment_intent.processing", pi)
                self.record_event("charge.pending", charge)
                self.record_event("checkout.session.completed", session)
                return session
            pi.update(status="succeeded", amount_received=pi["amount"])
            self._complete_session(session, paid=True)
            charge = self._new_charge(pi, status="succeeded")
            self._sync_customer(pi, charge, session)
            self.record_event("payment_intent.succeeded", pi)
            self.record_event("charge.succeeded", charge)
            self.record_event("checkout.session.completed", session)
            return session

    @staticmethod
    def _sync_customer(pi: dict[str, Any], charge: dict[str, Any], session: dict[str, Any]) -> None:
        pi["customer"] = charge["customer"] = session["customer"]
        charge["billing_details"]["email"] = session["customer_details"]["email"]

    def settle_async_payment(self, session_id: str, *, succeeded: bool) -> dict[str, Any]:
        """The delayed payment of a session paid with ``async`` clears or bounces."""
        with self.lock:
            session = self.get("checkout.session", session_id)
            pi = self.objects["payment_intent"].get(session["payment_intent"] or "")
            if session["status"] != "complete" or pi is None or pi["status"] != "processing":
                raise StripeError(400, f"Checkout Session {session_id} has no payment processing.")
            charge = self.objects["charge"][pi["latest_charge"]]
            if succeeded:
                pi.update(status="succeeded", amount_received=pi["amount"])
                charge.update(
                    status="succeeded",
                    paid=True,
                    captured=True,
                    amount_captured=charge["amount"],
                    balance_transaction=new_id("txn_"),
                )
                session["payment_status"] = "paid"
                self.record_event("payment_intent.succeeded", pi)
                self.record_event("charge.succeeded", charge)
                self.record_event("checkout.session.async_payment_succeeded", session)
            else:
                error = self._payment_error("payment_method_not_available", "The bank declined the debit.")
                pi.update(status="requires_payment_method", last_payment_error=error)
                charge.update(status="failed", failure_code=error["code"], failure_message=error["message"])
                self.record_event("charge.failed", charge)
                self.record_event("payment_intent.payment_failed", pi)
                self.record_event("checkout.session.async_payment_failed", session)
            return session

    @staticmethod
    def _payment_error(code: str, message: str) -> dict[str, Any]:
        return {"type": "card_error", "code": code, "decline_code": "generic_decline", "message": message}

    def fail_checkout_session(self, session_id: str) -> dict[str, Any]:
        """The buyer's card is declined: the PaymentIntent waits for another method, the session stays open."""
        with self.lock:
            session = self._open_session(session_id)
            pi = self._payment_intent_for(session)
            pi.update(
                status="requires_payment_method",
                payment_method=None,
                last_payment_error=self._payment_error("card_declined", "Your card was declined."),
            )
            self.record_event("payment_intent.payment_failed", pi)
            return session

    # -- refunds -------------------------------------------------------------------------------------------

    def create_refund(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.lock:
            charge_id, pi_id = get_str(params, "charge"), get_str(params, "payment_intent")
            if not charge_id and not pi_id:
                raise StripeError(
                    400,
                    "One of the following params should be provided for this request: payment_intent or charge.",
                    code="parameter_missing",
                )
            if pi_id:
                pi = self.get("payment_intent", pi_id, param="payment_intent")
                if pi["status"] != "succeeded" or not pi["latest_charge"]:
                    raise StripeError(
                        400,
                        f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                        param="payment_intent",
                    )
                if charge_id and charge_id != pi["latest_charge"]:
                    raise StripeError(400, "The charge does not belong to this PaymentIntent.", param="charge")
                charge_id = pi["latest_charge"]
            assert charge_id is not None
            charge = self.get("charge", charge_id, param="charge")
            if charge["status"] != "succeeded":
                raise StripeError(400, f"Charge {charge_id} has not succeeded; it cannot be refunded.", param="charge")
            if any(d["charge"] == charge_id and d["status"] not in ("won", "lost") for d in self._disputes()):
                raise StripeError(400, f"Charge {charge_id} has been disputed.", code="charge_disputed")
            remaining = charge["amount_captured"] - charge["amount_refunded"]
            if remaining <= 0:
                raise StripeError(400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded")
            amount = get_int(params, "amount", minimum=1)
            amount = remaining if amount is None else amount
            if amount > remaining:
                raise StripeError(
                    400,
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                    code="amount_too_large",
                    param="amount",
                )
            refund = template("refund")
            refund.update(
                id=new_id("re_"),
                created=self.now(),
                amount=amount,
                charge=charge_id,
                payment_intent=charge["payment_intent"],
                currency=charge["currency"],
                customer=charge["customer"],
                payment_method=charge["payment_method"],
                balance_transaction=new_id("txn_"),
                metadata=metadata(params),
                reason=get_str(params, "reason"),
                status="succeeded",
            )
            self._store("refund", refund)
            previous = {
                "amount_refunded": charge["amount_refunded"],
                "refunded": charge["refunded"],
                "refunds": copy.deepcopy(charge["refunds"]),
            }
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
            charge["refunds"]["data"].insert(0, copy.deepcopy(refund))
            self.record_event("charge.refunded", charge, previous=previous, req=req)
            self.record_event("refund.created", refund, req=req)
            return refund

    # -- disputes ------------------------------------------------------------------------------------------

    def _disputes(self) -> list[dict[str, Any]]:
        return list(self.objects["dispute"].values())

    def open_dispute(self, charge_id: str, *, amount: int | None = None, reason: str | None = None) -> dict[str, Any]:
        """The cardholder's bank disputes a charge: funds are withdrawn and the dispute needs a response."""
        with self.lock:
            charge = self.get("charge", charge_id)
            if charge["status"] != "succeeded":
                raise StripeError(400, f"Charge {charge_id} has not succeeded; it cannot be disputed.")
            if any(d["charge"] == charge_id for d in self._disputes()):
                raise StripeError(400, f"Charge {charge_id} is already disputed.")
            amount = charge["amount"] if amount is None else amount
            if not 1 <= amount <= charge["amount"]:
                raise StripeError(400, f"Dispute amount must be between 1 and {charge['amount']}.", param="amount")
            now = self.now()
            dispute = template("dispute")
            dispute["evidence_details"].update(due_by=now + 7 * 24 * 3600, enhanced_eligibility={})
            dispute["payment_method_details"]["card"]["case_type"] = "chargeback"
            dispute.update(
                id=new_id("dp_"),
                created=now,
                amount=amount,
                charge=charge_id,
                payment_intent=charge["payment_intent"],
                currency=charge["currency"],
                is_charge_refundable=False,
                reason=reason or "fraudulent",
                status="needs_response",
                enhanced_eligibility_types=[],
            )
            self._store("dispute", dispute)
            charge["disputed"] = True
            self.record_event("charge.dispute.created", dispute)
            return dispute

    def close_dispute(self, dispute_id: str, status: str, req: RequestMeta | None = None) -> dict[str, Any]:
        """The dispute ends: ``won`` (funds come back) or ``lost`` (they stay with the cardholder)."""
        with self.lock:
            if status not in ("won", "lost"):
                raise StripeError(400, "status must be 'won' or 'lost'.", param="status")
            dispute = self.get("dispute", dispute_id)
            if dispute["status"] in ("won", "lost"):
                raise StripeError(400, f"Dispute {dispute_id} is already closed ({dispute['status']}).")
            previous = {"status": dispute["status"]}
            dispute["status"] = status
            self.record_event("charge.dispute.closed", dispute, previous=previous, req=req)
            return dispute

    # -- idempotency ---------------------------------------------------------------------------------------

    def replay(self, api_key: str, key: str, fingerprint: str) -> tuple[int, dict[str, Any]] | None:
        """The stored answer for an Idempotency-Key, None when the key is new; 400 when reused differently."""
        stored = self.idempotent.get((api_key, key))
        if stored is None:
            return None
        if stored[0] != fingerprint:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        return stored[1], copy.deepcopy(stored[2])

    def remember(self, api_key: str, key: str, fingerprint: str, status: int, body: dict[str, Any]) -> None:
        self.idempotent[(api_key, key)] = (fingerprint, status, copy.deepcopy(body))
