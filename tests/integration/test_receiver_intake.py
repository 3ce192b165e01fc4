"""The receiver's intake, through the real Flask app on the real database: what is refused, with which code,
and that a refusal stores nothing; what is accepted is committed before the answer."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis
import stripe

from billing_core.db import wakeups
from billing_core.db.event_writer import EventInbox
from billing_core.db.wakeups import Wakeups
from billing_core.settings import Settings, libpq_url
from webhook_receiver import create_app
from webhook_receiver.enqueue import CelerySender

REPORT = {
    "idempotency_key": "r-1",
    "account": "user_1",
    "items": [
        {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}
    ],
}


def inbox_count(probe) -> int:
    return probe.scalar("SELECT count(*) FROM usage_inbox")


def test_a_valid_batch_is_stored_priced_and_partitioned(api, probe):
    key = api.key("usage:write")
    events = [{**REPORT, "idempotency_key": f"b-{i}", "account": f"user_{i % 7}"} for i in range(50)]
    response = api.post("/v1/usage", key=key, json={"events": events})
    assert response.status_code == 202
    assert response.json == {"accepted": 50, "duplicates": [], "duplicate_statuses": {}, "status": "pending"}
    rows = probe.rows("SELECT amount_mc, partition, status FROM usage_inbox")
    assert len(rows) == 50 and {r.amount_mc for r in rows} == {6000} and {r.status for r in rows} == {"pending"}
    assert all(0 <= r.partition < 8 for r in rows)


def test_one_bad_report_refuses_the_whole_request_naming_index_and_field(api, probe):
    key = api.key("usage:write")
    bad_model = {**REPORT, "idempotency_key": "x-2", "items": [{**REPORT["items"][0], "model": "gpt-9"}]}
    negative = {**REPORT, "idempotency_key": "x-3", "items": [{**REPORT["items"][0], "input_tokens": -1}]}
    events = [{**REPORT, "idempotency_key": "x-1"}, bad_model, negative]
    response = api.post("/v1/usage", key=key, json={"events": events})
    assert response.status_code == 422
    problems = response.json["error"]["problems"]
    assert response.json["error"]["code"] == "invalid_usage"
    assert {(p["index"], p["code"]) for p in problems} == {(1, "unknown_model"), (2, "greater_than_equal")}
    assert {p["field"] for p in problems} == {"items[0].model", "items[0].input_tokens"}
    assert inbox_count(probe) == 0


def test_more_than_a_thousand_reports_or_none_are_refused(api, probe):
    key = api.key("usage:write")
    too_many = [{**REPORT, "idempotency_key": f"m-{i}"} for i in range(1001)]
    assert api.post("/v1/usage", key=key, json={"events": too_many}).status_code == 422
    assert api.post("/v1/usage", key=key, json={"events": []}).status_code == 422
    assert api.post("/v1/usage", key=key, json=[REPORT]).status_code == 422
    assert inbox_count(probe) == 0


def test_duplicates_are_reported_and_a_changed_body_under_a_used_key_is_a_conflict(api, probe):
    key = api.key("usage:write")
    assert api.post("/v1/usage", key=key, json=REPORT).status_code == 202
    again = api.post("/v1/usage", key=key, json={"events": [REPORT, {**REPORT, "idempotency_key": "r-2"}]})
    assert again.status_code == 202 and again.json["accepted"] == 1 and again.json["duplicates"] == ["r-1"]

    changed = {**REPORT, "account": "someone_else"}
    conflict = api.post("/v1/usage", key=key, json={"events": [{**REPORT, "idempotency_key": "r-3"}, changed]})
    assert conflict.status_code == 409
    assert conflict.json["error"]["code"] == "idempotency_conflict"
    assert conflict.json["error"]["idempotency_keys"] == ["r-1"]
    # all or nothing: r-3 was not stored either
    assert sorted(probe.rows("SELECT idempotency_key FROM usage_inbox ORDER BY 1")) == [("r-1",), ("r-2",)]


def test_usage_needs_a_key_with_the_scope_and_a_sane_body(api, probe):
    assert api.post("/v1/usage", json=REPORT).status_code == 401
    assert api.post("/v1/usage", key="bk_not_a_real_key", json=REPORT).json["error"]["code"] == "invalid_api_key"
    reader = api.key("accounts:read")
    assert api.post("/v1/usage", key=reader, json=REPORT).json["error"]["code"] == "insufficient_scope"
    writer = api.key("usage:write")
    malformed = api.post("/v1/usage", key=writer, data=b'{"idempotency_key": ', content_type="application/json")
    assert malformed.status_code == 400 and malformed.json["error"]["code"] == "malformed_payload"
    huge = api.post("/v1/usage", key=writer, data=b" " * (9 * 1024 * 1024), content_type="application/json")
    assert huge.status_code == 413
    assert inbox_count(probe) == 0


def test_usage_status_follows_the_row(api, probe):
    key = api.key("usage:write")
    api.post("/v1/usage", key=key, json=REPORT)
    pending = api.get("/v1/usage/r-1", key=key).json
    assert pending["status"] == "pending" and pending["credits"] == "6.000" and pending["processing"] == "pending"
    with probe.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE usage_inbox SET status = 'rejected', reason_code = 'insufficient_credits', reason = 'short'"
        )
    rejected = api.get("/v1/usage/r-1", key=key).json
    assert rejected["status"] == "rejected" and rejected["reason"]["code"] == "insufficient_credits"
    assert api.get("/v1/usage/nope", key=key).status_code == 404


def test_a_webhook_is_stored_once_and_duplicates_are_acknowledged(api, probe):
    event = {
        "id": "evt_1",
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()),
        "data": {"object": {"id": "cus_1", "object": "customer", "metadata": {}}},
    }
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, "whsec_test_current")
    first = api.post("/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
    second = api.post("/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
    assert (first.status_code, first.json) == (200, {"received": True, "duplicate": False})
    assert (second.status_code, second.json) == (200, {"received": True, "duplicate": True})
    assert probe.rows("SELECT id, type, status FROM stripe_events") == [("evt_1", "customer.created", "pending")]


def test_without_the_database_the_receiver_answers_503_and_never_2xx(database_url):
    # given a receiver whose database is unreachable (nothing listens on port 1)
    app = create_app(
        Settings(
            database_url="postgresql://postgres@127.0.0.1:1/none",
            redis_url="redis://127.0.0.1:1/0",
            stripe_webhook_secret="whsec_x",
        )
    )
    client = app.test_client()
    payload = json.dumps({"id": "evt_down", "type": "customer.created", "data": {"object": {"id": "cus_1"}}})
    header = stripe.WebhookSignature.generate_signature_header(payload, "whsec_x")
    # when Stripe delivers
    response = client.post("/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
    # then Stripe is told to come back later
    assert response.status_code == 503 and response.json["error"]["code"] == "store_unavailable"
    assert client.get("/readyz").status_code == 503


def signed_event(event_id: str, secret: str = "whsec_test_current", **fields) -> tuple[str, dict[str, str]]:
    event = {
        "id": event_id,
        "object": "event",
        "type": "customer.updated",
        "created": int(time.time()),
        "data": {"object": {"id": "cus_1", "object": "customer", "metadata": {}}},
        **fields,
    }
    payload = json.dumps(event)
    return payload, {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(payload, secret)}


def test_a_webhook_after_its_pooled_connection_was_killed_is_stored_not_refused(api, probe, database_url):
    # given the receiver's inbox connection, since terminated by the server (a restart or failover)
    payload, headers = signed_event("evt_before")
    assert api.post("/webhooks/stripe", data=payload, headers=headers).status_code == 200
    with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'billing-inbox'"
        ).fetchone()[0]
    assert killed >= 1

    # when the next delivery arrives, then it is stored on a fresh connection, not answered 503
    payload, headers = signed_event("evt_after")
    response = api.post("/webhooks/stripe", data=payload, headers=headers)
    assert (response.status_code, response.json) == (200, {"received": True, "duplicate": False})
    assert probe.rows("SELECT id FROM stripe_events ORDER BY id") == [("evt_after",), ("evt_before",)]


def test_a_signed_event_postgres_cannot_hold_is_refused_for_good_and_stores_nothing(api, probe):
    # a creation time past PostgreSQL's last timestamp is valid JSON: delivering it again could never succeed
    payload, headers = signed_event("evt_far", created=10**15)
    response = api.post("/webhooks/stripe", data=payload, headers=headers)
    assert response.status_code == 400 and response.json["error"]["code"] == "malformed_payload"
    assert probe.scalar("SELECT count(*) FROM stripe_events") == 0


def test_the_body_is_stored_as_delivered_even_with_a_nul_character(api, probe):
    # a NUL in a string is valid JSON ("\u0000"); jsonb could not hold it, the json column keeps the text
    payload, headers = signed_event("evt_nul", data={"object": {"id": "cus_1", "name": "a\x00b"}})
    assert "\\u0000" in payload
    response = api.post("/webhooks/stripe", data=payload, headers=headers)
    assert (response.status_code, response.json) == (200, {"received": True, "duplicate": False})
    # byte for byte what Stripe signed, and it still reads as the event
    assert probe.scalar("SELECT payload::text FROM stripe_events WHERE id = 'evt_nul'") == payload
    assert probe.scalar("SELECT payload FROM stripe_events")["data"]["object"]["name"] == "a\x00b"


@pytest.mark.parametrize(("field", "fields"), [("id", {"id": "evt_a\x00b"}), ("type", {"type": "customer.\x00"})])
def test_a_nul_in_the_event_id_or_type_is_refused(api, probe, field, fields):
    # libpq sends text parameters up to their first NUL: "evt_a\u0000b" would be stored as "evt_a"
    payload, headers = signed_event("evt_x", **fields)
    response = api.post("/webhooks/stripe", data=payload, headers=headers)
    assert response.status_code == 400
    assert (response.json["error"]["code"], response.json["error"].get("field")) == ("malformed_payload", field)
    assert probe.scalar("SELECT count(*) FROM stripe_events") == 0


def test_many_stored_webhooks_wake_the_workers_with_one_message(database_url, redis_db_url, probe):
    # given a receiver on a Redis of its own, with no worker consuming
    client = redis.Redis.from_url(redis_db_url)
    client.flushdb()
    app = create_app(Settings(database_url=database_url, redis_url=redis_db_url, stripe_webhook_secret="whsec_w"))
    sender = app.extensions["billing"].enqueue
    api = app.test_client()

    # when five events are stored and one is delivered again
    for n in range(5):
        payload, headers = signed_event(f"evt_w{n}", secret="whsec_w")
        assert api.post("/webhooks/stripe", data=payload, headers=headers).json["duplicate"] is False
    assert api.post("/webhooks/stripe", data=payload, headers=headers).json["duplicate"] is True
    sender.flush()  # whatever the waker thread has not sent yet

    # then one drain message is queued, delayed by the linger, and the wake-up flag says so
    [message] = [json.loads(m) for m in client.lrange("billing", 0, -1)]
    assert message["headers"]["task"] == "billing.drain_stripe_events"
    assert message["headers"]["eta"] is not None
    assert client.ttl(wakeups.STRIPE_EVENTS) > 0

    # when a worker has started draining (it clears the flag before it claims), the next event wakes another
    Wakeups(client).disarm(wakeups.STRIPE_EVENTS)
    payload, headers = signed_event("evt_w9", secret="whsec_w")
    api.post("/webhooks/stripe", data=payload, headers=headers)
    sender.flush()
    assert client.llen("billing") == 2
    app.extensions["billing"].event_inbox.close()


def test_a_wake_up_lost_to_a_broker_failure_clears_its_flag_so_the_next_commit_retries(redis_db_url):
    client = redis.Redis.from_url(redis_db_url)
    client.flushdb()
    sender = CelerySender(redis_db_url)
    sender.app.conf.broker_url = "redis://127.0.0.1:1/0"  # the flag's Redis answers, the broker does not

    sender.wake("billing.apply_usage", [3], wakeups.usage_partition(3))
    sender.flush()

    assert client.exists(wakeups.usage_partition(3)) == 0


def test_concurrent_deliveries_are_committed_together_each_once_and_a_bad_one_alone(database_url, probe):
    # given one inbox shared by 16 threads (a threaded server), each delivering events, some twice
    inbox = EventInbox(database_url)
    events = [
        {"id": f"evt_g{n}", "type": "customer.updated", "created": 1_700_000_000, "data": {"object": {"id": "c"}}}
        for n in range(80)
    ]
    bad = {"id": "evt_bad", "type": "x", "created": 10**15, "data": {"object": {}}}
    deliveries = [*events, *events[:20], bad]
    start = threading.Barrier(16)

    def deliver(chunk: list[dict]) -> list[object]:
        start.wait()
        out: list[object] = []
        for event in chunk:
            raw = json.dumps(event).encode()
            try:
                out.append((event["id"], inbox.store(event, raw)))
            except psycopg.DataError:
                out.append((event["id"], "refused"))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [r for chunk in pool.map(deliver, [deliveries[i::16] for i in range(16)]) for r in chunk]
    inbox.close()

    # then every event is stored once, exactly one delivery of each was told "stored", the bad one is refused
    stored = [event_id for event_id, outcome in results if outcome is True]
    assert sorted(stored) == sorted(e["id"] for e in events)
    assert sum(1 for _, outcome in results if outcome is False) == 20
    assert ("evt_bad", "refused") in results
    assert probe.scalar("SELECT count(*) FROM stripe_events") == 80


@pytest.mark.parametrize("missing", ["id", "type", "data"])
def test_a_signed_body_that_is_not_an_event_is_a_malformed_payload(api, probe, missing):
    payload, _ = signed_event("evt_part")
    event = json.loads(payload)
    del event[missing]
    payload = json.dumps(event)
    headers = {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(payload, "whsec_test_current")}
    response = api.post("/webhooks/stripe", data=payload, headers=headers)
    assert (response.status_code, response.json["error"]["code"]) == (400, "malformed_payload")
    assert probe.scalar("SELECT count(*) FROM stripe_events") == 0


def test_a_token_count_out_of_range_says_the_range_not_that_it_is_no_integer(api, probe):
    # given a count a JSON encoder wrote in exponent form
    key = api.key("usage:write")
    huge = {**REPORT, "items": [{**REPORT["items"][0], "input_tokens": 1e20}]}
    # when
    response = api.post("/v1/usage", key=key, json=huge)
    # then
    assert response.status_code == 422
    (problem,) = response.json["error"]["problems"]
    assert problem["field"] == "items[0].input_tokens"
    assert problem["message"] == "must be an integer from 0 to 1000000000"
    assert inbox_count(probe) == 0


@pytest.mark.parametrize(("bad", "message"), [(1, "1 report is invalid"), (2, "2 reports are invalid")])
def test_the_refusal_counts_the_invalid_reports_in_good_grammar(api, probe, bad, message):
    key = api.key("usage:write")
    events = [{**REPORT, "idempotency_key": f"g-{i}", "account": "" if i < bad else "user_1"} for i in range(3)]
    response = api.post("/v1/usage", key=key, json={"events": events})
    assert response.status_code == 422
    assert response.json["error"]["message"] == f"{message}; nothing was stored"


def test_the_api_key_cache_belongs_to_the_app(receiver_app):
    from webhook_receiver import auth
    from webhook_receiver.key_cache import KeyCache

    assert isinstance(receiver_app.extensions["billing"].key_cache, KeyCache)
    assert not hasattr(auth, "_cache")
