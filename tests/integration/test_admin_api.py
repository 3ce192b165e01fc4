"""The admin API (issue 13) through real HTTP on the test app: adjustments, stats against a hand-computed
ledger, account search, dead-letter replay, settings, API key rotation and revocation, and the audit row every
mutation leaves (who, what, before and after)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import text

from billing_core.ledger.commands import DebitUsage, PurchaseCredits
from billing_core.notify.low_balance import DEFAULT_THRESHOLD_MC
from tests.integration.test_cli_operators import kill_event, store_customer_event
from tests.integration.test_openapi import answer_schema, conforms

pytestmark = pytest.mark.integration


def audit_rows(probe, action: str | None = None) -> list[Any]:
    sql = "SELECT actor, action, target, before, after, request_id, note FROM admin_audit"
    if action is not None:
        return probe.rows(sql + " WHERE action = :a ORDER BY id", a=action)
    return probe.rows(sql + " ORDER BY id")


def write(probe, sql: str, **params: Any) -> None:
    with probe.engine.begin() as conn:
        conn.execute(text(sql), params)


def error(response) -> dict[str, Any]:
    return response.get_json()["error"]


def key_id(probe, key: str) -> int:
    return probe.scalar("SELECT id FROM api_keys WHERE prefix = :p", p=key[:12])


# -- adjustments ------------------------------------------------------------------------------------------
def test_adjustments_up_and_down_post_ledger_entries_and_one_audit_row_each(api, probe):
    admin = api.key("admin")
    actor = f"api_key:{key_id(probe, admin)} test"

    # when an operator adds 50 credits to a new account (seed 003's user_id alias) and then takes 20.5
    up = api.post(
        "/v1/admin/adjustments",
        key=admin,
        json={"user_id": "ana", "credits": 50, "reason": "goodwill", "idempotency_key": "adj-1"},
    )
    down = api.post(
        "/v1/admin/adjustments",
        key=admin,
        json={"account": "ana", "credits": "-20.5", "reason": "double grant", "idempotency_key": "adj-2"},
    )

    # then both answer success with the new available balance and their entries
    assert up.status_code == 201, up.get_data(as_text=True)
    assert down.status_code == 201, down.get_data(as_text=True)
    first, second = up.get_json(), down.get_json()
    assert first["success"] is True and first["new_balance"] == "50.000" and first["replayed"] is False
    assert first["grant_id"] is not None
    assert second["new_balance"] == "29.500" and second["grant_id"] is None
    assert probe.available("ana") == 29_500
    assert probe.rows(
        "SELECT id, kind, idempotency_key, metadata ->> 'reason', metadata ->> 'actor' FROM ledger_entries ORDER BY id"
    ) == [
        (first["entry_id"], "grant", "admin-adjust:adj-1", "goodwill", actor),
        (second["entry_id"], "adjustment", "admin-adjust:adj-2", "double grant", actor),
    ]
    assert probe.rows("SELECT source, amount_mc FROM grants") == [("adjustment", 50_000)]
    assert probe.system("adjustments") == -29_500
    probe.assert_consistent()

    # and each left one audit row with the balance before and after
    rows = audit_rows(probe)
    assert [(r.actor, r.action, r.target, r.request_id, r.note) for r in rows] == [
        (actor, "adjustment.create", "account:ana", "adj-1", "goodwill"),
        (actor, "adjustment.create", "account:ana", "adj-2", "double grant"),
    ]
    assert rows[0].before["available_mc"] == 0 and rows[0].after["available_mc"] == 50_000
    assert rows[1].before["available_mc"] == 50_000 and rows[1].after["available_mc"] == 29_500
    assert rows[1].after["entry_id"] == second["entry_id"]

    # when the first adjustment is sent again
    snapshot = probe.snapshot()
    replay = api.post(
        "/v1/admin/adjustments",
        key=admin,
        json={"user_id": "ana", "credits": 50, "reason": "goodwill", "idempotency_key": "adj-1"},
    )

    # then it answers the same entry, replayed, and writes nothing (no audit row either)
    assert replay.status_code == 201
    assert replay.get_json()["entry_id"] == first["entry_id"] and replay.get_json()["replayed"] is True
    assert probe.snapshot() == snapshot
    assert probe.scalar("SELECT count(*) FROM admin_audit") == 2


def test_adjustment_refusals_write_nothing(api, probe):
    admin = api.key("admin")
    post = lambda body: api.post("/v1/admin/adjustments", key=admin, json=body)  # noqa: E731
    base = {"account": "bob", "reason": "r", "idempotency_key": "k"}
    api.post("/v1/admin/adjustments", key=admin, json={**base, "credits": "5", "idempotency_key": "seed"})
    snapshot = probe.snapshot()

    zero, bad, missing, extra = (
        post({**base, "credits": "0"}),
        post({**base, "credits": "1.2345"}),
        post({"account": "bob", "credits": "1", "idempotency_key": "k"}),
        post({**base, "credits": "1", "source": "promo"}),
    )
    short = post({**base, "credits": "-6"})
    unknown = post({**base, "account": "nobody", "credits": "-1"})
    conflict = post({**base, "credits": "7", "idempotency_key": "seed"})

    assert (zero.status_code, error(zero)["code"]) == (422, "invalid_amount")
    assert (bad.status_code, error(bad)["code"]) == (422, "invalid_amount")
    assert (missing.status_code, error(missing)["code"], error(missing)["field"]) == (422, "invalid_request", "reason")
    assert (extra.status_code, error(extra)["code"]) == (422, "invalid_request")
    assert (short.status_code, error(short)["code"]) == (402, "insufficient_credits")
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_account")
    assert (conflict.status_code, error(conflict)["code"]) == (409, "idempotency_conflict")
    assert probe.snapshot() == snapshot


def test_admin_endpoints_need_the_admin_scope(api):
    reader = api.key("accounts:read", "usage:write")
    for path in ("/v1/admin/stats/circulation", "/v1/admin/audit", "/v1/admin/api-keys", "/v1/admin/settings"):
        refused = api.get(path, key=reader)
        assert (refused.status_code, error(refused)["code"]) == (403, "insufficient_scope"), path
    refused = api.post(
        "/v1/admin/adjustments",
        key=reader,
        json={"account": "a", "credits": "1", "reason": "r", "idempotency_key": "k"},
    )
    assert refused.status_code == 403
    assert api.get("/v1/admin/audit").status_code == 401


# -- stats ------------------------------------------------------------------------------------------------
def usage(probe, key: str, account: str, when: datetime, lines: list[tuple[str, str, str]]) -> None:
    """A usage entry as a usage report writes it: items, and breakdown[i] pricing items[i]."""
    items = [{"type": "llm_tokens", "provider": p, "model": m, "input_tokens": 10} for p, m, _ in lines]
    breakdown = [{"credits": c, "input_per_1k": "1"} for _, _, c in lines]
    total = sum(int(c.replace(".", "")) for _, _, c in lines)  # every figure written with 3 decimals
    metadata = {"items": items, "metadata": {}, "price_version": "v1", "mode": "system", "breakdown": breakdown}
    probe.run(DebitUsage(account, total, key, occurred_at=when, metadata=metadata), now=when)


def test_stats_answer_the_hand_computed_figures_of_a_seeded_ledger(api, probe, receiver_app):
    admin = api.key("admin")
    doc = receiver_app.test_client().get("/openapi.json").get_json()
    today = datetime.now(UTC).date()
    day1 = datetime.combine(today - timedelta(days=1), time(10), tzinfo=UTC)
    day2 = datetime.combine(today, time(0, 1), tzinfo=UTC)
    old = datetime.combine(today - timedelta(days=40), time(10), tzinfo=UTC)
    sold = {"currency": "usd"}
    # given purchases on two days (and one outside the window)
    probe.run(PurchaseCredits("ana", 10_000_000, "checkout:cs_1", metadata={**sold, "amount_total": 1000}), now=day1)
    probe.run(PurchaseCredits("bob", 5_000_000, "checkout:cs_2", metadata={**sold, "amount_total": 500}), now=day1)
    probe.run(PurchaseCredits("ana", 2_000_000, "checkout:cs_3", metadata={**sold, "amount_total": 200}), now=day2)
    probe.run(PurchaseCredits("cy", 1_000, "checkout:cs_0", metadata={**sold, "amount_total": 1}), now=old)
    # and usage across two providers and three models
    usage(probe, "u1", "ana", day1, [("openai", "gpt-4o", "2.000"), ("anthropic", "claude-3-haiku", "0.500")])
    usage(probe, "u2", "bob", day1, [("openai", "gpt-4o", "1.250")])
    usage(probe, "u3", "ana", day2, [("openai", "gpt-4o-mini", "0.125"), ("openai", "gpt-4o", "3.000")])

    def get(path: str) -> Any:
        response = api.get(path, key=admin)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert conforms(response.get_json(), answer_schema(doc, path.split("?")[0], "get", 200), doc), path
        return response.get_json()

    # then credits sold per day: two days in the window, by currency
    assert get("/v1/admin/stats/sales?days=30")["data"] == [
        {"day": str(day1.date()), "currency": "usd", "purchases": 2, "credits": "15000.000", "amount": 1500},
        {"day": str(day2.date()), "currency": "usd", "purchases": 1, "credits": "2000.000", "amount": 200},
    ]
    assert [d["day"] for d in get("/v1/admin/stats/sales?days=1")["data"]] == [str(day2.date())]
    # usage by day, provider and model
    assert get("/v1/admin/stats/usage")["data"] == [
        {"day": str(day1.date()), "provider": "anthropic", "model": "claude-3-haiku", "credits": "0.500", "lines": 1},
        {"day": str(day1.date()), "provider": "openai", "model": "gpt-4o", "credits": "3.250", "lines": 2},
        {"day": str(day2.date()), "provider": "openai", "model": "gpt-4o", "credits": "3.000", "lines": 1},
        {"day": str(day2.date()), "provider": "openai", "model": "gpt-4o-mini", "credits": "0.125", "lines": 1},
    ]
    # top spenders
    assert [(s["account"], s["spent"], s["entries"]) for s in get("/v1/admin/stats/top-spenders")["data"]] == [
        ("ana", "5.625", 2),
        ("bob", "1.250", 1),
    ]
    # credits in circulation: everything bought less everything spent, in tokens (1,000 per credit)
    circulation = get("/v1/admin/stats/circulation")
    outstanding = 10_000_000 + 5_000_000 + 2_000_000 + 1_000 - 5_625 - 1_250
    assert circulation["outstanding"] == f"{outstanding // 1000}.{outstanding % 1000:03d}"
    assert circulation["outstanding_tokens"] == outstanding and circulation["capacity_tokens"] is None
    assert circulation["wallets"] == 3 and circulation["sales_paused"] is False
    # low balances: cy (1 credit) under the default threshold; bob under his own raised one
    write(probe, "UPDATE wallets SET low_balance_threshold_mc = 6000000 WHERE account = 'bob'")
    assert [(b["account"], b["threshold"]) for b in get("/v1/admin/stats/low-balances")["data"]] == [
        ("cy", f"{DEFAULT_THRESHOLD_MC // 1000}.000"),
        ("bob", "6000.000"),
    ]


def test_failed_payments_and_webhook_success_rate(api, probe):
    admin = api.key("admin")
    write(
        probe,
        "INSERT INTO payment_failures (id, object, account, amount, currency, code, failed_at) VALUES "
        "('cs_f1', 'checkout.session', 'ana', 500, 'brl', 'expired', now() - interval '1 day'), "
        "('pi_f0', 'payment_intent', 'bob', 100, 'usd', 'card_declined', now() - interval '40 days')",
    )
    statuses = ["processed", "processed", "processed", "ignored", "failed", "pending"]
    for i, status in enumerate(statuses):
        write(
            probe,
            "INSERT INTO stripe_events (id, type, payload, status) VALUES (:id, 'x.y', '{}', :s)",
            id=f"evt_{i}",
            s=status,
        )
    write(
        probe,
        "INSERT INTO stripe_events (id, type, payload, status, received_at) "
        "VALUES ('evt_old', 'x.y', '{}', 'dead', now() - interval '3 days')",
    )

    failed = api.get("/v1/admin/stats/failed-payments", key=admin).get_json()
    assert [(f["id"], f["code"], f["amount"]) for f in failed["data"]] == [("cs_f1", "expired", 500)]
    rate = api.get("/v1/admin/stats/webhooks", key=admin).get_json()
    assert (rate["received"], rate["succeeded"], rate["failed"], rate["pending"]) == (6, 4, 1, 1)
    assert rate["success_rate_bp"] == 8000  # 4 of the 5 settled
    week = api.get("/v1/admin/stats/webhooks?days=7", key=admin).get_json()
    assert week["failed"] == 2 and week["success_rate_bp"] == 6666
    bad = api.get("/v1/admin/stats/sales?days=0", key=admin)
    assert (bad.status_code, error(bad)["code"], error(bad)["field"]) == (422, "invalid_request", "days")


# -- search, dead letters, settings ---------------------------------------------------------------------------
def test_account_search_by_prefix_email_and_stripe_customer(api, probe):
    admin = api.key("admin")
    for account in ("acme", "acme_labs", "zed"):
        probe.run(PurchaseCredits(account, 1_000, f"buy-{account}"))
    write(probe, "UPDATE wallets SET email = 'Ops@Zed.example', stripe_customer_id = 'cus_Z1' WHERE account = 'zed'")

    def found(q: str) -> list[tuple[str, str]]:
        response = api.get("/v1/admin/accounts", key=admin, query_string={"q": q})
        assert response.status_code == 200, response.get_data(as_text=True)
        return [(m["account"], m["matched_by"]) for m in response.get_json()["data"]]

    assert found("acm") == [("acme", "account"), ("acme_labs", "account")]
    assert found("acme_") == [("acme_labs", "account")]  # _ is a character, not a wildcard
    assert found("ops@zed.example") == [("zed", "email")]
    assert found("cus_Z1") == [("zed", "stripe_customer_id")]
    assert found("nothing") == []
    missing = api.get("/v1/admin/accounts", key=admin)
    assert (missing.status_code, error(missing)["field"]) == (422, "q")


def test_dead_letter_listed_replayed_and_audited(api, probe, session_factory):
    admin = api.key("admin")
    store_customer_event(session_factory, "evt_dead")
    kill_event(session_factory, "evt_dead")

    listed = api.get("/v1/admin/dead-letters", key=admin).get_json()["data"]
    assert [(d["id"], d["kind"]) for d in listed] == [("evt_dead", "customer.created")]
    replayed = api.post("/v1/admin/dead-letters/evt_dead/replay", key=admin)

    assert replayed.status_code == 200, replayed.get_data(as_text=True)
    assert replayed.get_json() == {"id": "evt_dead", "kind": "customer.created", "status": "processed"}
    assert probe.rows("SELECT account, stripe_customer_id FROM wallets") == [("acme", "cus_acme")]
    (row,) = audit_rows(probe)
    assert (row.action, row.target, row.before["status"], row.after) == (
        "dead_letter.replay",
        "dead_letter:evt_dead",
        "dead",
        {"status": "processed"},
    )
    again = api.post("/v1/admin/dead-letters/evt_dead/replay", key=admin)
    assert (again.status_code, error(again)["code"]) == (404, "unknown_dead_letter")
    assert probe.scalar("SELECT count(*) FROM admin_audit") == 1


def test_settings_read_and_write_audited(api, probe):
    admin = api.key("admin")
    settings = {s["key"]: s for s in api.get("/v1/admin/settings", key=admin).get_json()["data"]}
    assert settings["sales_alert_threshold_percent"]["value"] == 80
    assert settings["upstream_monthly_tokens"]["updated_by"] is None

    written = api.put("/v1/admin/settings/sales_alert_threshold_percent", key=admin, json={"value": 90})
    unknown = api.put("/v1/admin/settings/nope", key=admin, json={"value": 1})
    invalid = api.put("/v1/admin/settings/sales_alert_threshold_percent", key=admin, json={"value": 101})

    assert written.status_code == 200, written.get_data(as_text=True)
    assert written.get_json()["value"] == 90 and written.get_json()["updated_by"].startswith("api_key:")
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_setting")
    assert (invalid.status_code, error(invalid)["code"]) == (422, "invalid_setting")
    (row,) = audit_rows(probe)
    assert (row.action, row.target, row.before, row.after) == (
        "setting.update",
        "setting:sales_alert_threshold_percent",
        {"value": 80, "stored": False},
        {"value": 90, "stored": True},
    )


# -- API keys -------------------------------------------------------------------------------------------------
def test_rotated_key_works_within_the_overlap_and_is_refused_after(api, probe):
    admin = api.key("admin")
    created = api.post("/v1/admin/api-keys", key=admin, json={"name": "app", "scopes": ["accounts:read"]})
    assert created.status_code == 201, created.get_data(as_text=True)
    old = created.get_json()
    assert old["key"].startswith("bk_") and old["scopes"] == ["accounts:read"]
    assert api.get("/v1/accounts/x", key=old["key"]).status_code == 404  # works (and is cached now)

    # when it is rotated with a 10 minute overlap
    rotated = api.post(f"/v1/admin/api-keys/{old['id']}/rotate", key=admin, json={"overlap_seconds": 600})
    assert rotated.status_code == 201, rotated.get_data(as_text=True)
    new = rotated.get_json()["new"]
    assert (new["name"], new["scopes"]) == ("app", ["accounts:read"]) and new["key"] != old["key"]
    expires = datetime.fromisoformat(rotated.get_json()["old"]["expires_at"])

    # then both keys work within the overlap, the old one is refused after it (cached or not), the new one works
    assert api.get("/v1/accounts/x", key=old["key"]).status_code == 404
    assert api.get("/v1/accounts/x", key=new["key"]).status_code == 404
    with freeze_time(expires - timedelta(seconds=1)):
        assert api.get("/v1/accounts/x", key=old["key"]).status_code == 404
    with freeze_time(expires + timedelta(seconds=1)):
        refused = api.get("/v1/accounts/x", key=old["key"])
        assert (refused.status_code, error(refused)["code"]) == (401, "invalid_api_key")
        assert api.get("/v1/accounts/x", key=new["key"]).status_code == 404

    # and the rotation is audited (never with the key itself)
    create_row, rotate_row = audit_rows(probe)
    assert (create_row.action, rotate_row.action) == ("api_key.create", "api_key.rotate")
    assert rotate_row.before["expires_at"] is None and rotate_row.after["expires_at"] == expires.isoformat()
    assert rotate_row.after["replaced_by"]["id"] == new["id"]
    assert old["key"] not in str(rotate_row) and new["key"] not in str(rotate_row)


def test_revoke_refuses_the_key_at_once_and_lists_it(api, probe):
    admin = api.key("admin")
    victim = api.key("accounts:read")
    victim_id = key_id(probe, victim)
    assert api.get("/v1/accounts/x", key=victim).status_code == 404  # cached

    revoked = api.post(f"/v1/admin/api-keys/{victim_id}/revoke", key=admin)
    again = api.post(f"/v1/admin/api-keys/{victim_id}/revoke", key=admin)
    unknown = api.post("/v1/admin/api-keys/999999/rotate", key=admin, json={"overlap_seconds": 5})
    bad = api.post(f"/v1/admin/api-keys/{victim_id}/rotate", key=admin, json={"overlap_seconds": -1})

    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"] is not None
    assert api.get("/v1/accounts/x", key=victim).status_code == 401
    assert (again.status_code, error(again)["code"]) == (409, "api_key_not_live")
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_api_key")
    assert (bad.status_code, error(bad)["field"]) == (422, "overlap_seconds")
    listed = {k["id"]: k for k in api.get("/v1/admin/api-keys", key=admin).get_json()["data"]}
    assert listed[victim_id]["revoked_at"] is not None and "key" not in listed[victim_id]
    (row,) = audit_rows(probe)
    assert (row.action, row.target, row.before["revoked_at"]) == ("api_key.revoke", f"api_key:{victim_id}", None)
    assert row.after["revoked_at"] is not None


# -- the audit log --------------------------------------------------------------------------------------------
def test_audit_log_pages_newest_first_and_filters(api, probe):
    admin = api.key("admin")
    for i in range(3):
        api.post(
            "/v1/admin/adjustments",
            key=admin,
            json={"account": "ana", "credits": "1", "reason": f"r{i}", "idempotency_key": f"a{i}"},
        )
    api.post(
        "/v1/admin/grants",
        key=admin,
        json={"account": "ana", "credits": "2", "reason": "promo", "idempotency_key": "g1"},
    )

    first = api.get("/v1/admin/audit?limit=2", key=admin).get_json()
    second = api.get(f"/v1/admin/audit?limit=2&cursor={first['next_cursor']}", key=admin).get_json()
    grants = api.get("/v1/admin/audit?action=grant.create", key=admin).get_json()

    assert [r["action"] for r in first["data"]] == ["grant.create", "adjustment.create"] and first["has_more"]
    assert [r["note"] for r in second["data"]] == ["r1", "r0"] and not second["has_more"]
    (grant_row,) = grants["data"]
    assert grant_row["target"] == "account:ana" and grant_row["request_id"] == "g1"
    assert (grant_row["before"]["available_mc"], grant_row["after"]["available_mc"]) == (3_000, 5_000)
