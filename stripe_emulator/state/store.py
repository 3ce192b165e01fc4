"""The emulator's memory: Stripe objects, the events every change records, webhook endpoints, the test clock,
the answers to idempotent requests; and what every resource builds on (ids, Stripe's example objects, lists).

Every object starts as a deep copy of Stripe's own example (``fixtures.json``, taken from Stripe's OpenAPI
fixtures, MIT licence in ``fixtures.LICENSE``) with ids, amounts, statuses, timestamps and links overwritten,
so field names are Stripe's exactly. Example values that would mislead (a random shipping cost, a discount,
a transfer destination) are reset to what a plain card payment has.

One re-entrant lock guards everything. Operations hold it for their whole run, so the events of one operation
(``payment_intent.succeeded``, ``charge.succeeded``, ``checkout.session.completed``) become visible together
and the webhook sender (which waits on the same lock) sees them as one burst.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import fnmatch
import itertools
import json
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from stripe_emulator.params import StripeError, no_such

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
    "prod_": "product",  # a Product may also bring its own id (``billing_package_starter``): see ``find``
    "price_": "price",
    "pm_": "payment_method",
    "sub_": "subscription",
    "si_": "subscription_item",
    "in_": "invoice",
    "clock_": "test_helpers.test_clock",
    "bps_": "billing_portal.session",
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
    where: Callable[[dict[str, Any]], bool] | None = None  # filters beyond equality (booleans, sets of keys)


_CREATED_OPS: dict[str, Callable[[int, int], bool]] = {
    "eq": lambda a, b: a == b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _dumps(obj: dict[str, Any]) -> str:
    # orjson: a page of 100 Checkout Sessions (~0.5 MB) dumps several times faster than with ``json``.
    return orjson.dumps(obj).decode()


class Store:
    """The memory: every object and event, the webhook endpoints, the clock, the idempotent answers.

    Resources (``Customers``, ``CheckoutSessions``, ...) hold Stripe's rules and keep their data here, so that
    one lock and one ``reset`` cover all of it.
    """

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.RLock()
        self._wall_clock = wall_clock
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.base_url = "http://127.0.0.1:12111"  # this emulator's address, as the latest request saw it
        self.reset()

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object, event, endpoint and idempotent response; the clock returns to wall time."""
        with self.lock:
            self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
            self._seq: dict[str, int] = {}  # object id -> insertion order, the tie-break for equal ``created``
            self._order: dict[str, list[tuple[int, int, str]]] = {}  # kind -> its objects in list order (_ordered)
            self._event_texts: dict[str, tuple[Any, str]] = {}  # event id -> (pending_webhooks, its JSON)
            self._counter = itertools.count(1)
            self.deleted_customers: set[str] = set()
            self.line_items: dict[str, list[dict[str, Any]]] = {}  # session id -> its line items
            self.payment_intent_data: dict[str, dict[str, Any]] = {}  # session id -> payment_intent_data
            self.idempotent: dict[tuple[str, str], tuple[str, int, dict[str, Any]]] = {}
            self.webhook_endpoints: dict[str, dict[str, Any]] = {}
            self.clock_offset = 0
            # Subscriptions and invoices (``subscriptions``, ``invoices``, ``test_clocks``):
            self.subscription_data: dict[str, dict[str, Any]] = {}  # session id -> subscription_data
            self.card_outcomes: dict[str, str] = {}  # customer id -> how its saved card answers
            self.billing: dict[str, dict[str, Any]] = {}  # subscription id -> engine bookkeeping
            self.invoice_counts: dict[str, int] = {}  # customer id -> invoices numbered so far
            self._time_override: int | None = None

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(event)`` (with the lock held) for every event recorded from now on."""
        with self.lock:
            self._listeners.append(listener)

    def now(self) -> int:
        """The emulator's time: wall time plus the global offset, or a test clock's time while ``at`` runs."""
        if self._time_override is not None:
            return self._time_override
        return int(self._wall_clock()) + self.clock_offset

    @contextlib.contextmanager
    def at(self, timestamp: int | None) -> Iterator[int]:
        """Run with ``now()`` pinned to ``timestamp`` (a test clock's time); None leaves the time as it is."""
        saved = self._time_override
        if timestamp is not None:
            self._time_override = timestamp
        try:
            yield self.now()
        finally:
            self._time_override = saved

    def clock_of(self, customer_id: str | None) -> dict[str, Any] | None:
        """The test clock a customer was created on, if any."""
        customer = self.objects["customer"].get(customer_id or "")
        clock_id = (customer or {}).get("test_clock")
        return self.objects["test_helpers.test_clock"].get(clock_id) if clock_id else None

    def time_for(self, customer_id: str | None) -> int:
        """Now, for this customer: its test clock's frozen time, else the emulator's time."""
        clock = self.clock_of(customer_id)
        return int(clock["frozen_time"]) if clock is not None else self.now()

    def add(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        replaced = obj["id"] in self.objects[kind]
        self.objects[kind][obj["id"]] = obj
        self._seq[obj["id"]] = next(self._counter)
        order = self._order.get(kind)
        if replaced:
            self._order.pop(kind, None)  # its old place is in the list: rebuilt by the next list
        elif order is not None:
            # Mostly the newest: appended, no sort (a test clock's past time lands further in).
            bisect.insort(order, (obj["created"], self._seq[obj["id"]], obj["id"]))
        return obj

    def get(self, kind: str, object_id: str, *, param: str = "id") -> dict[str, Any]:
        obj = self.objects[kind].get(object_id)
        if obj is None or object_id in self.deleted_customers:
            raise no_such(kind, object_id, param)
        return obj

    def find(self, object_id: str) -> dict[str, Any] | None:
        kind = kind_of(object_id)
        if kind is None:  # a Product created with its own id
            return self.objects["product"].get(object_id)
        return self.objects[kind].get(object_id)

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
        self.add("event", event)
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
                page, has_more = self._page(kind, query)
            else:
                page, has_more = self._items_page(kind, query, items)
            return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": url}

    def list_json(self, kind: str, query: ListQuery, url: str) -> str:
        """``list_objects`` already serialised (no ``expand[]``): events from the JSON kept for each, which a
        page of 100 costs next to nothing, as Stripe's own list does (reconciliation pages through tens of
        thousands of them at the rate limit); other kinds change after they are made, so they are dumped now."""
        with self.lock:
            page, has_more = self._page(kind, query)
            parts = [self._event_json(o) if kind == "event" else _dumps(o) for o in page]
            return (
                '{"object": "list", "data": ['
                + ", ".join(parts)
                + f'], "has_more": {"true" if has_more else "false"}, "url": {json.dumps(url)}}}'
            )

    def _event_json(self, event: dict[str, Any]) -> str:
        # An event is a snapshot: only its ``pending_webhooks`` counts down as deliveries succeed, so that count
        # tells whether the kept text is still the event's.
        pending = event.get("pending_webhooks")
        kept = self._event_texts.get(event["id"])
        if kept is None or kept[0] != pending:
            kept = (pending, _dumps(event))
            self._event_texts[event["id"]] = kept
        return kept[1]

    def _ordered(self, kind: str) -> list[tuple[int, int, str]]:
        """The kind's objects as ``(created, insertion order, id)``, oldest first, kept sorted as they are added
        (``created`` never changes once an object exists); rebuilt when the objects were changed around ``add``."""
        order = self._order.get(kind)
        if order is None or len(order) != len(self.objects[kind]):
            order = sorted((o["created"], self._seq.get(i, 0), i) for i, o in self.objects[kind].items())
            self._order[kind] = order
        return order

    def _page(self, kind: str, query: ListQuery) -> tuple[list[dict[str, Any]], bool]:
        """A page of the stored objects of ``kind``: a binary search to the cursor and the ``created`` bounds,
        then a walk from there that stops one object past the page, so its cost is the page's, not the list's.
        Newest first by ``created``; insertion order breaks ties within one second."""
        objects = self.objects[kind]
        order = self._ordered(kind)
        lo, hi = 0, len(order)
        for op, bound in query.created.items():
            if op in ("gte", "eq"):
                lo = max(lo, bisect.bisect_left(order, (bound, -1, "")))
            if op == "gt":
                lo = max(lo, bisect.bisect_left(order, (bound + 1, -1, "")))
            if op in ("lte", "eq"):
                hi = min(hi, bisect.bisect_left(order, (bound + 1, -1, "")))
            if op == "lt":
                hi = min(hi, bisect.bisect_left(order, (bound, -1, "")))

        def cursor(object_id: str, param: str) -> tuple[int, int, str]:
            obj = objects.get(object_id)
            if obj is None or object_id in self.deleted_customers:
                raise no_such(kind, object_id, param)
            return (obj["created"], self._seq.get(object_id, 0), object_id)

        def wanted(index: int) -> dict[str, Any] | None:
            object_id = order[index][2]
            obj = objects.get(object_id)
            if obj is None or object_id in self.deleted_customers or not self._matches(obj, query):
                return None
            return obj

        found: list[dict[str, Any]] = []
        if query.ending_before and not query.starting_after:
            lo = max(lo, bisect.bisect_right(order, cursor(query.ending_before, "ending_before")))
            for index in range(lo, hi):
                if (obj := wanted(index)) is not None:
                    found.append(obj)
                    if len(found) > query.limit:
                        break
            # The page next to the cursor, still newest first; "more" means more newer objects.
            return found[: query.limit][::-1], len(found) > query.limit
        if query.starting_after:
            hi = min(hi, bisect.bisect_left(order, cursor(query.starting_after, "starting_after")))
        for index in range(hi - 1, lo - 1, -1):
            if (obj := wanted(index)) is not None:
                found.append(obj)
                if len(found) > query.limit:
                    break
        return found[: query.limit], len(found) > query.limit

    def _items_page(
        self, kind: str, query: ListQuery, items: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], bool]:
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
            return pool[: query.limit], len(pool) > query.limit
        if query.ending_before:
            before = cursor(query.ending_before, "ending_before")
            pool = [o for k, o in keyed if k > before]
            return pool[-query.limit :], len(pool) > query.limit
        pool = [o for _, o in keyed]
        return pool[: query.limit], len(pool) > query.limit

    @staticmethod
    def _matches(obj: dict[str, Any], query: ListQuery) -> bool:
        if any(obj.get(name) != value for name, value in query.equals.items()):
            return False
        if any(not _CREATED_OPS[op](obj["created"], bound) for op, bound in query.created.items()):
            return False
        if query.where is not None and not query.where(obj):
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

    # -- webhook endpoints ------------------------------------------------------------------------------------

    def add_webhook_endpoint(self, url: str, secret: str | None, enabled_events: list[str]) -> dict[str, Any]:
        with self.lock:
            endpoint: dict[str, Any] = {
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
