"""Usage end to end: HTTP and the broker share one idempotency; a dead broker or a killed worker delays work
but never loses or repeats it."""

from __future__ import annotations

import concurrent.futures
import json

from celery import Celery

from billing_core.ledger.commands import GrantCredits
from billing_core.ledger.handlers import execute
from tests.e2e.conftest import Stack, wait_until

GPT4O_1200_300_MC = 6000  # 1,200 input + 300 output tokens of gpt-4o at 2,500 / 10,000 credits per 1M


def report(key: str, account: str, **extra: object) -> dict[str, object]:
    return {
        "idempotency_key": key,
        "account": account,
        "items": [
            {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}
        ],
        **extra,
    }


def fund(stack: Stack, account: str, credits: int) -> None:
    execute(stack.session_factory, GrantCredits(account, credits * 1000, f"fund:{account}"))


def usage_entries(stack: Stack, account: str) -> int:
    return stack.scalar(
        "SELECT count(DISTINCT p.entry_id) FROM postings p JOIN wallets w ON w.available_account_id = p.account_id "
        "JOIN ledger_entries e ON e.id = p.entry_id WHERE w.account = :a AND e.kind = 'usage'",
        a=account,
    )


def status_of(stack: Stack, key: str) -> str | None:
    response = stack.api("GET", f"/v1/usage/{key}")
    return response.json()["status"] if response.status_code == 200 else None


def test_usage_over_http_and_send_task_with_the_same_key_lands_once(stack: Stack, run_id: str) -> None:
    # given a funded account and one report
    account = f"acct_{run_id}"
    fund(stack, account, 100)
    body = report(f"u_{run_id}", account)

    # when it arrives over HTTP and over the broker, at the same time
    sender = Celery(broker=stack.redis.url)
    sender.conf.task_default_queue = "billing"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        http = pool.submit(stack.api, "POST", "/v1/usage", json=body)
        pool.submit(sender.send_task, "billing.record_usage", args=[body]).result()
        assert http.result().status_code == 202
    sender.send_task("billing.record_usage", args=[body])  # and once more, late

    # then it is applied once: one usage entry, one debit
    wait_until(lambda: status_of(stack, body["idempotency_key"]) == "applied", what="usage applied")
    wait_until(
        lambda: (
            stack.scalar("SELECT count(*) FROM usage_inbox WHERE idempotency_key = :k", k=body["idempotency_key"]) == 1
        ),
        what="one inbox row",
    )
    assert usage_entries(stack, account) == 1
    assert stack.available_mc(account) == 100_000 - GPT4O_1200_300_MC
    status = stack.api("GET", f"/v1/usage/{body['idempotency_key']}").json()
    assert status["credits"] == "6.000" and status["reason"] is None

    # and a third copy over HTTP is reported as a duplicate, not applied again
    again = stack.api("POST", "/v1/usage", json=body)
    assert again.status_code == 202 and again.json()["duplicates"] == [body["idempotency_key"]]
    assert stack.available_mc(account) == 100_000 - GPT4O_1200_300_MC


def test_an_invalid_report_sent_through_the_broker_is_kept_rejected_and_a_corrected_one_takes_its_key(
    stack: Stack, run_id: str
) -> None:
    # given a funded account, and a report with an unknown model sent through the broker (nobody is answered)
    account = f"acct_{run_id}"
    fund(stack, account, 100)
    key = f"bad_{run_id}"
    bad = report(key, account)
    bad["items"][0]["model"] = "gpt-9"  # type: ignore[index]
    sender = Celery(broker=stack.redis.url)
    sender.conf.task_default_queue = "billing"
    sender.send_task("billing.record_usage", args=[bad])

    # then its key says why it was refused, and nothing was debited
    wait_until(lambda: status_of(stack, key) == "rejected", what="the invalid report rejected")
    status = stack.api("GET", f"/v1/usage/{key}").json()
    assert status["reason"]["code"] == "invalid_usage" and "gpt-9" in status["reason"]["message"]
    assert (status["credits"], status["entry_id"]) == ("0.000", None)
    assert stack.available_mc(account) == 100_000

    # when the corrected report is sent with the same key
    fixed = stack.api("POST", "/v1/usage", json=report(key, account))

    # then it is accepted (not a conflict, not a duplicate) and applied once
    assert fixed.status_code == 202 and (fixed.json()["accepted"], fixed.json()["duplicates"]) == (1, [])
    wait_until(lambda: status_of(stack, key) == "applied", what="the corrected report applied")
    assert stack.available_mc(account) == 100_000 - GPT4O_1200_300_MC
    assert stack.scalar("SELECT count(*) FROM usage_inbox WHERE idempotency_key = :k", k=key) == 1


def test_usage_short_of_credits_is_rejected_with_the_reason(stack: Stack, run_id: str) -> None:
    account = f"poor_{run_id}"
    fund(stack, account, 1)
    body = report(f"short_{run_id}", account)
    assert stack.api("POST", "/v1/usage", json=body).status_code == 202
    wait_until(lambda: status_of(stack, body["idempotency_key"]) == "rejected", what="usage rejected")
    status = stack.api("GET", f"/v1/usage/{body['idempotency_key']}").json()
    assert status["reason"]["code"] == "insufficient_credits"
    assert stack.available_mc(account) == 1000


def test_broker_outage_delays_webhooks_and_usage_but_loses_nothing(stack: Stack, run_id: str) -> None:
    # given a funded account, and Redis stopped
    account = f"outage_{run_id}"
    fund(stack, account, 1000)
    stack.redis.pause()
    try:
        # when usage reports and webhooks keep arriving
        keys = [f"out_{run_id}_{i}" for i in range(40)]
        for start in range(0, 40, 10):
            batch = {"events": [report(k, account) for k in keys[start : start + 10]]}
            response = stack.api("POST", "/v1/usage", json=batch)
            assert response.status_code == 202, response.text
        event_ids = [f"evt_outage_{run_id}_{i}" for i in range(5)]
        for event_id in event_ids:
            event = {
                "id": event_id,
                "object": "event",
                "type": "customer.created",
                "created": 1_700_000_000,
                "data": {
                    "object": {
                        "id": f"cus_{run_id}{event_id[-1]}",
                        "object": "customer",
                        "metadata": {"account": account},
                    }
                },
            }
            response = stack.signed_post(event)
            assert response.status_code == 200, response.text
        # then all of it is stored, none applied yet
        assert (
            stack.scalar("SELECT count(*) FROM usage_inbox WHERE account = :a AND status = 'pending'", a=account) == 40
        )
        assert stack.scalar("SELECT count(*) FROM stripe_events WHERE id = ANY(:ids)", ids=event_ids) == 5
    finally:
        stack.redis.resume()

    # and once Redis is back, the sweeper gets everything applied
    wait_until(
        lambda: (
            stack.scalar("SELECT count(*) FROM usage_inbox WHERE account = :a AND status = 'applied'", a=account) == 40
        ),
        timeout=90,
        what="usage applied after the outage",
    )
    wait_until(
        lambda: (
            stack.scalar(
                "SELECT count(*) FROM stripe_events WHERE id = ANY(:ids) AND status = 'processed'", ids=event_ids
            )
            == 5
        ),
        timeout=90,
        what="events processed after the outage",
    )
    assert stack.available_mc(account) == 1_000_000 - 40 * GPT4O_1200_300_MC


def test_worker_killed_mid_batch_loses_nothing_and_applies_nothing_twice(stack: Stack, run_id: str) -> None:
    # given 200 funded accounts and 24,000 reports queued for them
    accounts = [f"kill_{run_id}_{i}" for i in range(200)]
    for account in accounts:
        fund(stack, account, 1000)
    keys = []
    for chunk in range(24):
        events = [report(f"k_{run_id}_{chunk}_{i}", accounts[(chunk * 1000 + i) % 200]) for i in range(1000)]
        keys += [e["idempotency_key"] for e in events]
        response = stack.api(
            "POST", "/v1/usage", data=json.dumps({"events": events}), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 202, response.text

    def applied() -> int:
        return stack.scalar(
            "SELECT count(*) FROM usage_inbox WHERE account LIKE :p AND status = 'applied'", p=f"kill_{run_id}_%"
        )

    # when the worker is SIGKILLed while it is applying them
    wait_until(lambda: applied() >= 1000, what="the worker to get going")
    stack.kill_worker()
    killed_at = applied()
    assert killed_at < len(keys), "the worker finished before it could be killed; use more reports"
    stack.start_worker()

    # then every report ends applied exactly once, and the ledger proves itself
    wait_until(lambda: applied() == len(keys), timeout=180, what="all reports applied after the restart")
    entries = stack.scalar(
        "SELECT count(*) FROM ledger_entries WHERE idempotency_key = ANY(:k)", k=[f"usage:{k}" for k in keys]
    )
    assert entries == len(keys)
    per_account = len(keys) // len(accounts)
    balances = {stack.available_mc(a) for a in accounts}
    assert balances == {1_000_000 - per_account * GPT4O_1200_300_MC}
    check = stack.billing_check()
    assert check.returncode == 0, check.stdout + check.stderr


def test_beat_releases_an_expired_hold_and_usage_can_capture_a_live_one(stack: Stack, run_id: str) -> None:
    # given a funded account with two holds: one that expires at once, one that lives
    account = f"holder_{run_id}"
    fund(stack, account, 100)
    short = stack.api(
        "POST",
        "/v1/holds",
        json={"account": account, "idempotency_key": f"h1_{run_id}", "credits": "10", "ttl_seconds": 1},
    )
    live = stack.api(
        "POST",
        "/v1/holds",
        json={"account": account, "idempotency_key": f"h2_{run_id}", "credits": "20", "ttl_seconds": 600},
    )
    assert short.status_code == live.status_code == 201
    assert stack.available_mc(account) == 70_000

    # when beat's sweep runs, and a usage report settles the live hold
    wait_until(
        lambda: stack.scalar("SELECT status FROM holds WHERE id = :h", h=short.json()["id"]) == "expired",
        timeout=30,
        what="the short hold expired by beat",
    )
    settle = report(f"settle_{run_id}", account, hold_id=live.json()["id"])
    assert stack.api("POST", "/v1/usage", json=settle).status_code == 202
    wait_until(lambda: status_of(stack, settle["idempotency_key"]) == "applied", what="the capture applied")

    # then the expired hold's credits are back, and the live one was captured at the reported 6 credits
    assert stack.scalar("SELECT status FROM holds WHERE id = :h", h=live.json()["id"]) == "captured"
    assert stack.available_mc(account) == 100_000 - GPT4O_1200_300_MC
