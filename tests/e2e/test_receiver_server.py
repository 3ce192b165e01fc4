"""The receiver's server model (the Procfile's gevent workers): a request waiting on PostgreSQL does not hold up
the other requests of its process."""

from __future__ import annotations

import concurrent.futures
import json

import psycopg
import requests
import stripe

from billing_cli.dev_stack import web_worker_class
from billing_cli.throwaway import free_port
from billing_core.settings import libpq_url
from tests.e2e.conftest import BIN, Stack, _wait_http, wait_until

APP = "webhook_receiver:create_app()"


def test_a_webhook_waiting_on_the_database_leaves_its_worker_serving_others(stack: Stack, run_id: str) -> None:
    # given a receiver with a single worker of the Procfile's class (gevent)
    assert web_worker_class() == "gevent"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ["--worker-class", web_worker_class(), "--workers", "1"]
    proc = stack.spawn("web-single", [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", *server, APP])
    _wait_http(f"{url}/healthz", proc, stack, "web-single")

    # and another transaction inserting the same event id, not yet committed: the receiver's insert must wait
    event_id = f"evt_wait_{run_id}"
    payload = json.dumps({"id": event_id, "object": "event", "type": "ping.test", "data": {"object": {}}})
    header = stripe.WebhookSignature.generate_signature_header(payload, stack.webhook_secret)
    with psycopg.connect(libpq_url(stack.database_url)) as holder, concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder.execute("INSERT INTO stripe_events (id, type, payload) VALUES (%s, 'ping.test', '{}')", (event_id,))

        # when Stripe delivers it
        delivery = pool.submit(
            requests.post, f"{url}/webhooks/stripe", data=payload, headers={"Stripe-Signature": header}, timeout=30
        )
        wait_until(
            lambda: stack.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'billing-inbox' "
                "AND wait_event_type = 'Lock'"
            ),
            what="the receiver's insert waiting on the row lock",
        )

        # then the same worker still answers other requests while that delivery waits
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
        assert not delivery.done()

        # and once the other transaction gives up, the delivery stores the event
        holder.rollback()
        response = delivery.result(timeout=30)
    assert (response.status_code, response.json()) == (200, {"received": True, "duplicate": False})
    assert stack.scalar("SELECT type FROM stripe_events WHERE id = :i", i=event_id) == "ping.test"
