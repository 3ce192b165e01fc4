"""The usage inbox's worker side, on the real database: one bad row fails alone, the others apply."""

from __future__ import annotations

from billing_core.commands import GrantCredits
from billing_core.pricing import PriceTable
from billing_core.usage_inbox import MAX_ATTEMPTS, apply_partition, store_usage
from billing_core.usage_reports import accept_reports, partition_of


def report(key: str) -> dict[str, object]:
    return {"idempotency_key": key, "account": "acme", "items": [{"type": "credits", "credits": "2"}]}


def test_a_row_that_breaks_the_batch_is_marked_failed_alone_and_the_rest_apply(session_factory, probe):
    # given a funded account and three reports in its partition, the middle one corrupted in storage
    probe.run(GrantCredits("acme", 100_000, "fund"))
    accepted = accept_reports({"events": [report("a"), report("b"), report("c")]}, PriceTable.default())
    store_usage(session_factory, accepted)
    with probe.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE usage_inbox SET report = report - 'items' WHERE idempotency_key = 'b'")

    # when a worker applies the partition
    result = apply_partition(session_factory, partition_of("acme"))

    # then the batch was retried row by row: two applied, the bad one failed with its error and a retry time
    assert (result.applied, result.failed) == (2, 1)
    rows = {
        r.idempotency_key: r
        for r in probe.rows(
            "SELECT idempotency_key, status, attempts, reason, next_attempt_at > now() AS later FROM usage_inbox"
        )
    }
    assert {k: r.status for k, r in rows.items()} == {"a": "applied", "b": "failed", "c": "applied"}
    assert rows["b"].attempts == 1 and "KeyError" in rows["b"].reason and rows["b"].later
    assert probe.available("acme") == 100_000 - 2 * 2_000
    probe.assert_consistent()


def test_a_row_failing_every_time_ends_dead_after_max_attempts(session_factory, probe):
    probe.run(GrantCredits("acme", 100_000, "fund"))
    store_usage(session_factory, accept_reports(report("bad"), PriceTable.default()))
    with probe.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE usage_inbox SET report = report - 'items'")
    for _ in range(MAX_ATTEMPTS):
        with probe.engine.begin() as conn:  # its retry time has come
            conn.exec_driver_sql("UPDATE usage_inbox SET next_attempt_at = now() - interval '1 second'")
        apply_partition(session_factory, partition_of("acme"))
    assert probe.rows("SELECT status, attempts FROM usage_inbox") == [("dead", MAX_ATTEMPTS)]
    assert probe.available("acme") == 100_000
