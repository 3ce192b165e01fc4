"""The logs of a whole run, scraped: every line of web, worker and beat is JSON with the context it should
carry, and none holds a secret (API keys, the webhook signing secret, the Stripe key, a signature header, the
notification webhook's secret). Real processes on a stack of their own, as the Procfile runs
them (``LOG_FORMAT=json``, gunicorn's access log on)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from billing_cli.mail_catcher import MailCatcher
from tests.e2e.conftest import Stack, launch_stack, wait_until

STRIPE_KEY = "sk_test_logs_" + uuid.uuid4().hex
NOTIFY_SECRET = "whsec_notify_" + uuid.uuid4().hex
# Celery's worker prints its shutdown notices from its signal handlers, straight to the terminal (logging is not
# safe there): fixed texts, no data. The only lines that are not JSON.
CELERY_SIGNAL_LINE = re.compile(r"|worker: (Warm|Cold) shutdown \(MainProcess\)|Waiting gracefully for cold shutdown.*")


class _Hooks(BaseHTTPRequestHandler):
    received: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hooks.received.append({"signature": self.headers.get("Billing-Signature", "")})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def logged_stack() -> Iterator[tuple[Stack, list[dict[str, str]]]]:
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    with MailCatcher(lambda _line: None) as mail:
        env = {
            "LOG_FORMAT": "json",
            "STRIPE_API_KEY": STRIPE_KEY,
            "SMTP_URL": mail.url,  # the catcher takes no AUTH: URL passwords are tests/unit/test_logs.py's
            "BILLING_ADMIN_EMAILS": "ops@localhost",
            "NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{hooks.server_port}/hooks",
            "NOTIFY_WEBHOOK_SECRET": NOTIFY_SECRET,
        }
        try:
            with launch_stack("logs", env, web_args=("--access-logfile", "-")) as stack:
                yield stack, _Hooks.received
        finally:
            hooks.shutdown()


def test_a_full_run_logs_json_with_context_and_no_secret(logged_stack: tuple[Stack, list[dict[str, str]]]) -> None:
    stack, hooks = logged_stack
    account, run = "logs_acct", uuid.uuid4().hex[:8]
    secrets = {"api key": stack.api_key, "webhook secret": stack.webhook_secret, "stripe key": STRIPE_KEY}
    secrets["notify secret"] = NOTIFY_SECRET

    # given an account with an email, a package bought and paid in the emulator (its signed webhook credits it)
    assert stack.api("PUT", f"/v1/accounts/{account}", json={"email": "logs@example.com"}).status_code == 200
    checkout = stack.api(
        "POST",
        "/v1/checkout",
        json={"account": account, "package": "starter", "success_url": "https://a/ok", "cancel_url": "https://a/no"},
    )
    assert checkout.status_code == 201, checkout.text
    stack.emulator(f"/_emulator/checkout/sessions/{checkout.json()['id']}/pay")
    wait_until(lambda: (stack.available_mc(account) or 0) > 0, timeout=60, what="the purchase credited")

    # and a webhook signed with a wrong secret, whose signature header must not be logged
    bad = {"id": f"evt_bad_{run}", "type": "checkout.session.completed", "data": {"object": {"id": "cs_x"}}}
    refused = stack.signed_post(bad, secret="whsec_not_ours_" + run)
    assert refused.status_code == 400
    secrets["sent signature"] = refused.request.headers["Stripe-Signature"]

    # when usage is reported, a hold placed and captured, and the receipt notification goes out
    report = {
        "idempotency_key": f"logs-usage-{run}",
        "account": account,
        "items": [
            {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10}
        ],
    }
    assert stack.api("POST", "/v1/usage", json=report).status_code == 202
    hold = stack.api(
        "POST", "/v1/holds", json={"account": account, "idempotency_key": f"logs-hold-{run}", "credits": "2"}
    )
    assert hold.status_code == 201, hold.text
    assert stack.api("POST", f"/v1/holds/{hold.json()['id']}/capture", json={"credits": "1"}).status_code == 200
    wait_until(
        lambda: (
            stack.scalar("SELECT status FROM usage_inbox WHERE idempotency_key = :k", k=report["idempotency_key"])
            == "applied"
        ),
        timeout=60,
        what="the usage applied",
    )
    wait_until(
        lambda: (
            stack.scalar("SELECT count(*) FROM notifications WHERE account = :a AND status = 'sent'", a=account) >= 2
        ),
        timeout=90,
        what="the receipt sent by email and webhook",
    )
    assert hooks and hooks[0]["signature"].startswith("t=")
    secrets["notify signature"] = hooks[0]["signature"]
    metrics = requests.get(stack.web_url + "/metrics", timeout=10).text
    stack.stop()  # waits for every process to exit: their last lines are written (unbuffered) by then

    # then every line of every process is a JSON object with its level and message
    lines: dict[str, list[dict[str, Any]]] = {}
    for name in ("web", "worker", "beat"):
        raw = (stack.scratch / f"{name}.log").read_text().splitlines()
        assert raw or name == "beat", f"{name} logged nothing"  # beat logs warnings only, by default
        for number, line in enumerate(raw, 1):
            for label, secret in secrets.items():
                assert secret not in line, f"{name}.log:{number} holds the {label}: {line}"
            if name == "worker" and CELERY_SIGNAL_LINE.fullmatch(line):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"{name}.log:{number} is not JSON: {line}") from None
            assert {"ts", "level", "logger", "message"} <= set(record), line
        lines[name] = [json.loads(line) for line in raw if not CELERY_SIGNAL_LINE.fullmatch(line)]

    # and the lines carry their context: the webhook its event id, usage and holds their key and account
    access = [r for r in lines["web"] if r["logger"] == "gunicorn.access"]
    webhooks = [r for r in access if r["path"] == "/webhooks/stripe" and r["status"] == 200]
    assert webhooks and all(r.get("event_id", "").startswith("evt_") and r.get("request_id") for r in webhooks)
    usage = [r for r in access if r["path"] == "/v1/usage"]
    assert usage and usage[0]["idempotency_key"] == report["idempotency_key"] and usage[0]["account"] == account
    holds = [r for r in access if r["path"] == "/v1/holds"]
    assert holds and holds[0]["idempotency_key"] == f"logs-hold-{run}" and holds[0]["account"] == account
    assert any(r["path"] == f"/v1/accounts/{account}" and r.get("account") == account for r in access)
    tasks = [r for r in lines["worker"] if r.get("task")]
    assert any(r["task"] == "billing.drain_stripe_events" for r in tasks)
    assert any(r["task"] == "billing.apply_usage" and r.get("task_id") for r in tasks)

    # and the workers' task counters reached the receiver's /metrics through the shared directory
    assert 'billing_tasks_processed_total{task="billing.apply_usage"}' in metrics
    assert "billing_http_request_duration_seconds_bucket" in metrics
