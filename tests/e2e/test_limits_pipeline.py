"""Token limits end to end: a report sent through the broker over its account's limit is kept rejected with
the reason, nothing debited; one within it is applied and counted, and the beat task flushes the counters."""

from __future__ import annotations

from celery import Celery

from tests.e2e.conftest import Stack, wait_until
from tests.e2e.test_usage_pipeline import GPT4O_1200_300_MC, fund, report, status_of


def test_a_broker_report_over_the_hourly_limit_is_rejected_and_one_within_it_applied(stack: Stack, run_id: str) -> None:
    # given a funded account allowed 2,000 tokens an hour
    account = f"lim_{run_id}"
    fund(stack, account, 100)
    put = stack.api("PUT", f"/v1/accounts/{account}", json={"limits": {"hourly_tokens": 2_000}})
    assert put.status_code == 200 and put.json()["limits"]["hourly_tokens"] == 2_000
    sender = Celery(broker=stack.redis.url)
    sender.conf.task_default_queue = "billing"

    # when two reports of 1,500 tokens each arrive through the broker, one after the other
    first, second = report(f"a_{run_id}", account), report(f"b_{run_id}", account)
    sender.send_task("billing.record_usage", args=[first])
    wait_until(lambda: status_of(stack, first["idempotency_key"]) == "applied", what="the first report applied")
    sender.send_task("billing.record_usage", args=[second])

    # then the second is kept as rejected, rate limited, and only the first was debited
    wait_until(lambda: status_of(stack, second["idempotency_key"]) == "rejected", what="the second report rejected")
    status = stack.api("GET", f"/v1/usage/{second['idempotency_key']}").json()
    assert status["reason"]["code"] == "rate_limited"
    assert stack.available_mc(account) == 100_000 - GPT4O_1200_300_MC
    usage = {line["metric"]: line for line in stack.api("GET", f"/v1/accounts/{account}/usage").json()["usage"]}
    assert usage["tokens_hour"]["current"] == 1_500

    # and the hourly flush copies the counters into usage_records
    sender.send_task("billing.flush_usage_records")
    wait_until(
        lambda: stack.scalar("SELECT count(*) FROM usage_records WHERE account = :a", a=account) == 3,
        what="usage records flushed",
    )
    assert stack.scalar("SELECT max(quantity) FROM usage_records WHERE account = :a", a=account) == 1_500
