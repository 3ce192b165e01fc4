"""The usage inbox's worker side, on the real database: one bad row fails alone, the others apply."""

from __future__ import annotations

import pytest

from billing_core.errors import IdempotencyConflict
from billing_core.intake.usage_inbox import MAX_ATTEMPTS, apply_partition, store_refused, store_usage, usage_status
from billing_core.intake.usage_reports import InvalidUsage, accept_reports, partition_of
from billing_core.ledger.commands import GrantCredits
from billing_core.pricing.catalog import PriceTable


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
    assert (result.outcomes["applied"], result.outcomes["failed"]) == (2, 1)
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
    # the operators are alerted once (an admin alert, which the notifications outbox delivers)
    [alert] = probe.rows("SELECT kind, payload->>'inbox' AS inbox FROM admin_alerts")
    assert tuple(alert) == ("dead_lettered_event", "usage_inbox")


def refuse(session_factory, payload: object) -> list[str]:
    with pytest.raises(InvalidUsage) as refused:
        accept_reports(payload, PriceTable.default())
    return store_refused(session_factory, payload, refused.value.details["problems"], source="celery")


def test_a_refused_batch_keeps_each_keyed_report_rejected_with_its_own_reason(session_factory, probe):
    # given a batch from the broker: one good report, one with negative credits, one without a key
    bad = {**report("neg"), "items": [{"type": "credits", "credits": "-1"}], "metadata": {"note": "a\x00b"}}
    kept = refuse(session_factory, {"events": [report("good"), bad, {"account": "acme"}]})

    # then both keyed reports are kept, rejected, debiting nothing; each says why
    assert sorted(kept) == ["good", "neg"]
    rows = {r.idempotency_key: r for r in probe.rows("SELECT * FROM usage_inbox ORDER BY idempotency_key")}
    assert {k: (r.status, r.reason_code, r.amount_mc, r.source) for k, r in rows.items()} == {
        "good": ("rejected", "invalid_usage", 0, "celery"),
        "neg": ("rejected", "invalid_usage", 0, "celery"),
    }
    assert "batch was refused whole" in rows["good"].reason
    assert "items[0]" in rows["neg"].reason
    assert rows["neg"].report["metadata"]["note"] == "ab"  # jsonb cannot hold the NUL; the rest is kept as sent
    assert usage_status(session_factory, "neg").reason_code == "invalid_usage"
    # a worker finds nothing to apply
    assert apply_partition(session_factory, partition_of("acme")).claimed == 0


def test_a_corrected_report_takes_the_key_of_a_refused_one_but_not_of_a_rejected_debit(session_factory, probe):
    # given a refused report, and a valid one rejected when applied (the account has no credits)
    refuse(session_factory, {**report("k1"), "items": []})
    store_usage(session_factory, accept_reports(report("k2"), PriceTable.default()))
    apply_partition(session_factory, partition_of("acme"))
    assert probe.rows("SELECT idempotency_key, status FROM usage_inbox ORDER BY 1") == [
        ("k1", "rejected"),
        ("k2", "rejected"),
    ]
    probe.run(GrantCredits("acme", 100_000, "fund"))

    # when the corrected k1 arrives, it is accepted and applied; k2 sent again is a duplicate, not re-run
    stored = store_usage(
        session_factory, accept_reports({"events": [report("k1"), report("k2")]}, PriceTable.default())
    )
    assert (stored.accepted, stored.duplicates) == (["k1"], ["k2"])
    apply_partition(session_factory, partition_of("acme"))
    assert probe.rows("SELECT idempotency_key, status, attempts FROM usage_inbox ORDER BY 1") == [
        ("k1", "applied", 1),
        ("k2", "rejected", 1),
    ]
    assert probe.available("acme") == 100_000 - 2_000

    # and k1 with another body is now a conflict, as for any stored report
    with pytest.raises(IdempotencyConflict):
        store_usage(session_factory, accept_reports({**report("k1"), "account": "other"}, PriceTable.default()))
