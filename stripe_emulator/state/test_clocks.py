"""Test clocks: a frozen time of their own for the customers created on them; advancing one bills their
subscriptions for everything due in between, in order (``subscriptions.run_until``).

Stripe advances a clock asynchronously (``status`` ``advancing``, then ``ready``); the emulator does all the
work inside the advance request, so the clock answered is already ``ready`` at its new time. Events:
``test_helpers.test_clock.created``, ``.advancing`` (at the old time), then what the advance billed, then
``.ready`` (at the new time).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stripe_emulator.params import StripeError, get_int, get_str
from stripe_emulator.state.store import ListQuery, RequestMeta, Store, new_id, template
from stripe_emulator.state.subscriptions import Subscriptions

KEEP = 30 * 24 * 3600  # Stripe deletes a test clock 30 days after it was created


class TestClocks:
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, store: Store, subscriptions: Subscriptions) -> None:
        self.store = store
        self.subscriptions = subscriptions

    def create(self, params: Mapping[str, Any], req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            frozen = get_int(params, "frozen_time", required=True, minimum=0)
            now = self.store.now()
            clock = template("test_helpers.test_clock")
            clock.update(
                id=new_id("clock_"),
                created=now,
                deletes_after=now + KEEP,
                frozen_time=frozen,
                name=get_str(params, "name"),
                status="ready",
                status_details={},
            )
            self.store.add("test_helpers.test_clock", clock)
            self.store.record_event("test_helpers.test_clock.created", clock, req=req)
            return clock

    def retrieve(self, clock_id: str) -> dict[str, Any]:
        with self.store.lock:
            return self.store.get("test_helpers.test_clock", clock_id, param="test_clock")

    def list(self, query: ListQuery) -> dict[str, Any]:
        return self.store.list_objects("test_helpers.test_clock", query, "/v1/test_helpers/test_clocks")

    def delete(self, clock_id: str, req: RequestMeta | None = None) -> dict[str, Any]:
        """Delete the clock and its customers (and so their subscriptions), as Stripe does."""
        with self.store.lock:
            clock = self.retrieve(clock_id)
            for customer in list(self.store.objects["customer"].values()):
                if customer.get("test_clock") == clock_id:
                    self.store.deleted_customers.add(customer["id"])
            for sub in self.store.objects["subscription"].values():
                if sub["test_clock"] == clock_id and sub["status"] != "canceled":
                    sub["status"] = "canceled"
            del self.store.objects["test_helpers.test_clock"][clock_id]
            self.store.record_event("test_helpers.test_clock.deleted", clock, req=req)
            return {"id": clock_id, "object": "test_helpers.test_clock", "deleted": True}

    def advance(self, clock_id: str, frozen_time: int | None, req: RequestMeta | None = None) -> dict[str, Any]:
        with self.store.lock:
            clock = self.retrieve(clock_id)
            if frozen_time is None:
                raise StripeError(
                    400, "Missing required param: frozen_time.", code="parameter_missing", param="frozen_time"
                )
            if frozen_time <= clock["frozen_time"]:
                raise StripeError(
                    400,
                    f"The frozen_time ({frozen_time}) must be after the test clock's current frozen_time "
                    f"({clock['frozen_time']}).",
                    param="frozen_time",
                )
            with self.store.at(clock["frozen_time"]):
                clock["status"] = "advancing"
                clock["status_details"] = {"advancing": {"target_frozen_time": frozen_time}}
                self.store.record_event("test_helpers.test_clock.advancing", clock, req=req)

            def step(at: int) -> None:
                clock["frozen_time"] = at

            self.subscriptions.run_until(clock_id, frozen_time, step)
            clock.update(frozen_time=frozen_time, status="ready", status_details={})
            with self.store.at(frozen_time):
                self.store.record_event("test_helpers.test_clock.ready", clock, req=req)
            return clock
