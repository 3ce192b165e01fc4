"""The emulator's lists page through a kept order (binary search to the cursor, a walk of one page) and serve
events from their kept JSON: the same pages as sorting every object per request did (pure: no server)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from stripe_emulator import EmulatorState
from stripe_emulator.params import StripeError
from stripe_emulator.state.store import ListQuery


def _reference(state: EmulatorState, query: ListQuery) -> tuple[list[str], bool]:
    """The page as the emulator computed it before: every event sorted, newest first, then cut."""
    keyed = sorted(
        ((e["created"], state._seq[e["id"]]), e) for e in state.objects["event"].values() if state._matches(e, query)
    )[::-1]
    keys = {e["id"]: (e["created"], state._seq[e["id"]]) for e in state.objects["event"].values()}
    if query.starting_after:
        pool = [e for k, e in keyed if k < keys[query.starting_after]]
        page = pool[: query.limit]
    elif query.ending_before:
        pool = [e for k, e in keyed if k > keys[query.ending_before]]
        page = pool[-query.limit :]
    else:
        pool = [e for _, e in keyed]
        page = pool[: query.limit]
    return [e["id"] for e in page], len(pool) > query.limit


def _state_with_events(count: int, seed: int) -> EmulatorState:
    rng = random.Random(seed)
    now = [1_700_000_000.0]
    state = EmulatorState(wall_clock=lambda: now[0])
    for n in range(count):
        if n == count // 3:
            state._page("event", ListQuery())  # the order kept from here on: later events are inserted in it
        now[0] += rng.choice([0, 0, 1, 3])  # several events a second: insertion order breaks the ties
        kind = rng.choice(["customer.updated", "charge.refunded", "invoice.paid"])
        if n % 17 == 5:
            with state.at(int(now[0]) - 10):  # a test clock's past: lands inside the order, not at its end
                state.record_event(kind, {"id": f"cus_{n}", "object": "customer"})
        else:
            state.record_event(kind, {"id": f"cus_{n}", "object": "customer"})
    return state


def test_pages_match_a_full_sort_for_cursors_created_bounds_and_types() -> None:
    state = _state_with_events(300, seed=7)
    rng = random.Random(11)
    ids = list(state.objects["event"])
    created = sorted(e["created"] for e in state.objects["event"].values())
    for _ in range(400):
        query = ListQuery(limit=rng.choice([1, 3, 10, 100]))
        cursor = rng.choice([None, "after", "before"])
        if cursor == "after":
            query.starting_after = rng.choice(ids)
        elif cursor == "before":
            query.ending_before = rng.choice(ids)
        for op in rng.sample(["gt", "gte", "lt", "lte", "eq"], rng.choice([0, 1, 2])):
            query.created[op] = rng.choice(created) + rng.choice([-1, 0, 1])
        if rng.random() < 0.3:
            query.types = [rng.choice(["charge.*", "invoice.paid", "customer.updated"])]
        page, has_more = state._page("event", query)
        assert ([e["id"] for e in page], has_more) == _reference(state, query), query


def test_walking_all_pages_reads_every_event_once_newest_first() -> None:
    state = _state_with_events(250, seed=3)
    seen: list[dict[str, Any]] = []
    query = ListQuery(limit=100)
    while True:
        body = json.loads(state.list_json("event", query, "/v1/events"))
        seen.extend(body["data"])
        if not body["has_more"]:
            break
        query.starting_after = body["data"][-1]["id"]
    assert len(seen) == 250 == len({e["id"] for e in seen})
    keys = [(e["created"], state._seq[e["id"]]) for e in seen]
    assert keys == sorted(keys, reverse=True)
    assert seen[0] == state.objects["event"][seen[0]["id"]]  # the kept JSON is the event


def test_kept_json_follows_pending_webhooks_and_objects_added_later() -> None:
    state = _state_with_events(5, seed=1)
    first = json.loads(state.list_json("event", ListQuery(limit=10), "/v1/events"))["data"][0]
    state.objects["event"][first["id"]]["pending_webhooks"] = 7  # a delivery counting down
    again = json.loads(state.list_json("event", ListQuery(limit=10), "/v1/events"))["data"][0]
    assert again["id"] == first["id"] and again["pending_webhooks"] == 7
    newest = state.record_event("customer.created", {"id": "cus_new", "object": "customer"})
    assert state._page("event", ListQuery(limit=1))[0][0]["id"] == newest["id"]


def test_an_unknown_cursor_is_resource_missing() -> None:
    state = _state_with_events(3, seed=2)
    with pytest.raises(StripeError) as caught:
        state._page("event", ListQuery(starting_after="evt_nope"))
    assert caught.value.status == 404
