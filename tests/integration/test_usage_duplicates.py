"""A usage report sent again is a duplicate, and its answer says where the first one really is."""

from __future__ import annotations

import pytest

from billing_core.intake.usage_inbox import apply_partition
from billing_core.intake.usage_reports import partition_of
from billing_core.ledger.commands import GrantCredits

pytestmark = pytest.mark.integration


def report(key: str, account: str = "acme") -> dict[str, object]:
    return {"idempotency_key": key, "account": account, "items": [{"type": "credits", "credits": "2"}]}


def test_a_duplicate_answers_the_status_of_the_report_already_stored(api, probe, session_factory):
    # given a report applied, one rejected (its account has no credits) and one still pending
    probe.run(GrantCredits("acme", 100_000, "fund"))
    key = api.key("usage:write")
    sent = api.post("/v1/usage", key=key, json={"events": [report("k-applied"), report("k-rejected", "broke")]})
    assert sent.status_code == 202 and sent.json["duplicate_statuses"] == {}
    apply_partition(session_factory, partition_of("acme"))
    apply_partition(session_factory, partition_of("broke"))
    assert api.post("/v1/usage", key=key, json=report("k-pending")).status_code == 202

    # when all three are sent again with a new one, which is itself repeated within the request
    again = api.post(
        "/v1/usage",
        key=key,
        json={
            "events": [
                report("k-applied"),
                report("k-rejected", "broke"),
                report("k-pending"),
                report("k-new"),
                report("k-new"),
            ]
        },
    )

    # then only the new one is accepted, and each duplicate says where its report stands
    assert again.status_code == 202
    assert again.json["accepted"] == 1
    assert again.json["status"] == "pending"  # of the reports this request stored
    assert again.json["duplicates"] == ["k-applied", "k-rejected", "k-pending", "k-new"]
    assert again.json["duplicate_statuses"] == {
        "k-applied": "applied",
        "k-rejected": "rejected",
        "k-pending": "pending",
        "k-new": "pending",
    }
    # and the statuses agree with GET /v1/usage/<key>
    for dup, status in again.json["duplicate_statuses"].items():
        assert api.get(f"/v1/usage/{dup}", key=key).json["status"] == status
    assert probe.available("acme") == 100_000 - 2_000
