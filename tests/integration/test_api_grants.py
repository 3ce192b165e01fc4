"""Grants you can see: the balance's spendable grants in spending order, every grant with its status and
history, promotions granted through the CLI and the admin API."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billing_core.accounts.api_keys import SCOPES
from billing_core.ledger.commands import (
    CaptureHold,
    ClawBack,
    DebitUsage,
    ExpireGrants,
    GrantCredits,
    PlaceHold,
    PurchaseCredits,
)
from tests.integration.test_openapi import answer_schema, conforms

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def error(response) -> dict[str, Any]:
    return response.get_json()["error"]


def grant_id(probe, key: str) -> int:
    return probe.scalar(
        "SELECT g.id FROM grants g JOIN ledger_entries e ON e.id = g.entry_id WHERE e.idempotency_key = :k", k=key
    )


def remaining(probe) -> dict[int, int]:
    return dict(probe.rows("SELECT id, remaining_mc FROM grants ORDER BY id"))


def five_grants(probe) -> dict[str, int]:
    """Five grants of different sources, expiries and priorities; returns their ids by name."""
    now = datetime.now(UTC)
    probe.run(PurchaseCredits("acme", 10_000, "buy"))  # never expires, priority 40
    probe.run(GrantCredits("acme", 2_000, "admin", source="adjustment", reason="goodwill"))  # never, 30
    probe.run(GrantCredits("acme", 3_000, "plan", source="plan", expires_at=now + timedelta(days=30)))  # 20
    probe.run(GrantCredits("acme", 5_000, "promo", expires_at=now + timedelta(days=10)))  # 10
    probe.run(GrantCredits("acme", 4_000, "late-promo", priority=45))  # never, after the purchase
    return {name: grant_id(probe, name) for name in ("buy", "admin", "plan", "promo", "late-promo")}


SPENDING_ORDER = ["promo", "plan", "admin", "buy", "late-promo"]


# -- the balance --------------------------------------------------------------------------------------------
def test_the_balance_lists_spendable_grants_in_spending_order(api, probe):
    # given five grants
    ids = five_grants(probe)
    # when
    body = api.get("/v1/accounts/acme", key=api.key("accounts:read")).get_json()
    # then soonest expiry first, then by priority, with public source names and credit strings
    assert [g["id"] for g in body["grants"]] == [ids[n] for n in SPENDING_ORDER]
    assert [g["source"] for g in body["grants"]] == ["promotion", "plan", "admin", "purchase", "promotion"]
    assert [g["priority"] for g in body["grants"]] == [10, 20, 30, 40, 45]
    first = body["grants"][0]
    assert set(first) == {"id", "source", "remaining", "original", "expires_at", "priority"}
    assert (first["remaining"], first["original"]) == ("5.000", "5.000")
    assert first["expires_at"] is not None and body["grants"][2]["expires_at"] is None
    assert body["available"] == "24.000" and body["debt"] == "0.000"


def test_a_debit_and_a_capture_draw_from_grants_in_the_listed_order(api, probe):
    # given five grants
    ids = five_grants(probe)
    # when a debit spans the promotion, the plan allowance and part of the admin grant
    probe.run(DebitUsage("acme", 5_000 + 3_000 + 1_500, "use-1"))
    # then each grant lost what the order says
    left = remaining(probe)
    assert [left[ids[n]] for n in SPENDING_ORDER] == [0, 0, 500, 10_000, 4_000]
    # and the balance lists only what can still be spent, in the same order
    body = api.get("/v1/accounts/acme", key=api.key("accounts:read")).get_json()
    assert [(g["id"], g["remaining"]) for g in body["grants"]] == [
        (ids["admin"], "0.500"),
        (ids["buy"], "10.000"),
        (ids["late-promo"], "4.000"),
    ]
    # when a hold takes the rest of the admin grant and part of the purchase, and is captured in full
    hold = probe.run(PlaceHold("acme", 2_000, "hold-1")).hold
    probe.run(CaptureHold(hold.id, 2_000, "capture-1"))
    # then
    left = remaining(probe)
    assert [left[ids[n]] for n in SPENDING_ORDER] == [0, 0, 0, 8_500, 4_000]
    body = api.get("/v1/accounts/acme", key=api.key("accounts:read")).get_json()
    assert [g["id"] for g in body["grants"]] == [ids["buy"], ids["late-promo"]]
    probe.assert_consistent()


def test_the_debt_grant_is_not_listed_and_shows_as_debt(api, probe):
    # given a refund of credits already held: the wallet owes 2 credits
    probe.run(PurchaseCredits("acme", 5_000, "buy-1"))
    probe.run(PlaceHold("acme", 5_000, "hold-1"))
    probe.run(ClawBack("acme", 2_000, "refund-1"))
    # when
    body = api.get("/v1/accounts/acme", key=api.key("accounts:read")).get_json()
    # then
    assert body["grants"] == []
    assert (body["available"], body["debt"], body["flags"]["negative"]) == ("-2.000", "2.000", True)
    listed = api.get("/v1/accounts/acme/grants", key=api.key("accounts:read")).get_json()
    assert [g["source"] for g in listed["data"]] == ["purchase"]
    debt = probe.scalar("SELECT id FROM grants WHERE source = 'debt'")
    hidden = api.get(f"/v1/accounts/acme/grants?grant={debt}", key=api.key("accounts:read"))
    assert hidden.status_code == 404 and error(hidden)["code"] == "unknown_grant"


# -- every grant, with history --------------------------------------------------------------------------------
def with_spent_and_expired_grants(probe) -> dict[str, int]:
    ids = five_grants(probe)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    probe.run(GrantCredits("acme", 1_000, "swept", expires_at=long_ago + timedelta(hours=1)), now=long_ago)
    probe.run(ExpireGrants())
    probe.run(GrantCredits("acme", 700, "unswept", expires_at=long_ago + timedelta(hours=2)), now=long_ago)
    probe.run(DebitUsage("acme", 5_000 + 3_000 + 1_500, "use-1"))
    hold = probe.run(PlaceHold("acme", 1_000, "hold-1")).hold
    # the hold takes the admin grant's last 0.5 and 0.5 of the purchase; the capture uses 0.3 (from the admin
    # grant, drawn first), and the rest goes back to the grants it came from
    probe.run(CaptureHold(hold.id, 300, "capture-1"))
    return {**ids, "swept": grant_id(probe, "swept"), "unswept": grant_id(probe, "unswept")}


def test_the_grants_list_shows_every_grant_with_its_status(api, probe):
    # given spent, expired (swept and not) and active grants
    ids = with_spent_and_expired_grants(probe)
    # when
    response = api.get("/v1/accounts/acme/grants", key=api.key("accounts:read"))
    # then the spendable ones first, in spending order, then the others newest first
    assert response.status_code == 200
    body = response.get_json()
    assert (body["has_more"], body["next_cursor"]) == (False, None)
    by_id = {g["id"]: g for g in body["data"]}
    assert [g["id"] for g in body["data"]] == [
        ids["admin"],
        ids["buy"],
        ids["late-promo"],
        ids["unswept"],
        ids["swept"],
        ids["promo"],
        ids["plan"],
    ]
    statuses = {name: by_id[ids[name]]["status"] for name in ids}
    assert statuses == {
        "buy": "active",
        "admin": "active",
        "plan": "exhausted",
        "promo": "exhausted",
        "late-promo": "active",
        "swept": "expired",
        "unswept": "expired",
    }
    swept, unswept = by_id[ids["swept"]], by_id[ids["unswept"]]
    assert (swept["remaining"], swept["expired"], swept["original"]) == ("0.000", "1.000", "1.000")
    assert (unswept["remaining"], unswept["expired"]) == ("0.700", "0.000")
    admin = by_id[ids["admin"]]
    assert (admin["source"], admin["remaining"], admin["original"]) == ("admin", "0.200", "2.000")
    assert admin["cause"] == {
        "entry_id": admin["cause"]["entry_id"],
        "kind": "grant",
        "idempotency_key": "admin",
        "reason": "goodwill",
        "actor": None,
    }
    assert admin["history"] is None and admin["created_at"] and admin["external_ref"] is None


def test_one_grant_with_its_history(api, probe):
    # given the admin grant: granted, debited, held, part of the hold returned
    ids = with_spent_and_expired_grants(probe)
    key = api.key("accounts:read")
    # when
    response = api.get(f"/v1/accounts/acme/grants?grant={ids['admin']}", key=key)
    # then its postings, newest first, each with its entry's kind, key and amount
    assert response.status_code == 200
    body = response.get_json()
    [grant] = body["data"]
    assert grant["id"] == ids["admin"]
    moves = [(m["kind"], m["amount"], m["idempotency_key"]) for m in grant["history"]]
    assert moves == [
        ("capture", "0.200", "capture-1"),
        ("hold", "-0.500", "hold-1"),
        ("usage", "-1.500", "use-1"),
        ("grant", "2.000", "admin"),
    ]
    assert all(m["at"] and m["entry_id"] for m in grant["history"])
    # and the history pages like the list does
    first = api.get(f"/v1/accounts/acme/grants?grant={ids['admin']}&limit=3", key=key).get_json()
    assert first["has_more"] is True and len(first["data"][0]["history"]) == 3
    rest = api.get(
        f"/v1/accounts/acme/grants?grant={ids['admin']}&limit=3&cursor={first['next_cursor']}", key=key
    ).get_json()
    assert [m["kind"] for m in rest["data"][0]["history"]] == ["grant"]
    assert (rest["has_more"], rest["next_cursor"]) == (False, None)
    # and the expiry shows in the swept grant's history
    swept = api.get(f"/v1/accounts/acme/grants?grant={ids['swept']}", key=key).get_json()["data"][0]
    assert [(m["kind"], m["amount"]) for m in swept["history"]] == [("grant_expiry", "-1.000"), ("grant", "1.000")]


def test_the_grants_list_pages_through_every_grant_once(api, probe):
    # given seven grants
    with_spent_and_expired_grants(probe)
    key = api.key("accounts:read")
    everything = [g["id"] for g in api.get("/v1/accounts/acme/grants", key=key).get_json()["data"]]
    for limit in (1, 2, 3, 5):
        # when walked a few at a time
        seen: list[int] = []
        cursor = None
        while True:
            query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = api.get(f"/v1/accounts/acme/grants?{query}", key=key).get_json()
            seen += [g["id"] for g in page["data"]]
            assert len(page["data"]) <= limit
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
        # then each grant is seen once, in the same order
        assert seen == everything, limit


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("cursor=bogus", 400, "invalid_cursor"),
        ("limit=0", 422, "invalid_request"),
        ("limit=101", 422, "invalid_request"),
        ("grant=abc", 422, "invalid_request"),
        ("grant=999999", 404, "unknown_grant"),
    ],
)
def test_bad_grant_queries_are_refused(api, probe, query, status, code):
    probe.run(PurchaseCredits("acme", 1_000, "buy-1"))
    response = api.get(f"/v1/accounts/acme/grants?{query}", key=api.key("accounts:read"))
    assert (response.status_code, error(response)["code"]) == (status, code)


def test_grants_of_an_unknown_account_or_of_another_account_are_404(api, probe):
    probe.run(PurchaseCredits("other", 1_000, "buy-other"))
    probe.run(PurchaseCredits("acme", 1_000, "buy-acme"))
    key = api.key("accounts:read")
    unknown = api.get("/v1/accounts/nobody/grants", key=key)
    assert (unknown.status_code, error(unknown)["code"]) == (404, "unknown_account")
    foreign = api.get(f"/v1/accounts/acme/grants?grant={grant_id(probe, 'buy-other')}", key=key)
    assert (foreign.status_code, error(foreign)["code"]) == (404, "unknown_grant")


def test_the_grants_list_needs_accounts_read(api, probe):
    probe.run(PurchaseCredits("acme", 1_000, "buy-1"))
    assert api.get("/v1/accounts/acme/grants").status_code == 401
    others = [s for s in SCOPES if s not in ("accounts:read", "admin")]
    response = api.get("/v1/accounts/acme/grants", key=api.key(*others))
    assert (response.status_code, error(response)["code"]) == (403, "insufficient_scope")


# -- the admin API --------------------------------------------------------------------------------------------
def admin_grant(**overrides: Any) -> dict[str, Any]:
    return {"account": "acme", "credits": "25", "reason": "launch promo", "idempotency_key": "promo-1", **overrides}


def test_an_admin_grant_is_201_with_the_grant_and_the_new_balance(api, probe):
    # given an account with 10 credits
    probe.run(PurchaseCredits("acme", 10_000, "buy-1"))
    expires = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    key = api.key("admin")
    # when an operator grants a promotion with an expiry and a priority
    body = admin_grant(source="promotion", expires_at=expires.isoformat(), priority=5)
    response = api.post("/v1/admin/grants", key=key, json=body)
    # then
    assert response.status_code == 201
    answer = response.get_json()
    assert answer["success"] is True and answer["replayed"] is False
    grant = answer["grant"]
    assert (grant["source"], grant["status"], grant["remaining"], grant["original"]) == (
        "promotion",
        "active",
        "25.000",
        "25.000",
    )
    assert (grant["priority"], grant["expires_at"]) == (5, expires.isoformat())
    assert grant["cause"]["reason"] == "launch promo"
    assert grant["cause"]["idempotency_key"] == "admin-grant:promo-1"
    assert grant["cause"]["actor"].startswith("api_key:")
    assert answer["new_balance"]["account"] == "acme"
    assert (answer["new_balance"]["available"], answer["new_balance"]["total"]) == ("35.000", "35.000")
    # and the ledger has the grant, funded by promotions, with the key that asked as the actor
    row = probe.rows("SELECT source, priority, expires_at FROM grants WHERE id = :g", g=grant["id"])[0]
    assert (row.source, row.priority, row.expires_at) == ("promotional", 5, expires)
    metadata = probe.scalar("SELECT metadata FROM ledger_entries WHERE id = :e", e=answer["entry_id"])
    assert metadata["actor"] == grant["cause"]["actor"] and metadata["reason"] == "launch promo"
    assert probe.system("promotional") == -25_000
    # and the balance lists it first (priority 5, soonest expiry)
    listed = api.get("/v1/accounts/acme", key=key).get_json()["grants"]
    assert listed[0]["id"] == grant["id"]
    probe.assert_consistent()


def test_an_admin_grant_defaults_to_source_admin_and_creates_the_account(api, probe):
    response = api.post("/v1/admin/grants", key=api.key("admin"), json=admin_grant(account="newcomer"))
    assert response.status_code == 201
    grant = response.get_json()["grant"]
    assert (grant["source"], grant["priority"], grant["expires_at"]) == ("admin", 30, None)
    assert probe.rows("SELECT source FROM grants") == [("adjustment",)]
    assert probe.system("adjustments") == -25_000  # an operator's grant is funded like an adjustment
    probe.assert_consistent()


def test_an_admin_grant_replays_and_conflicts(api, probe):
    key = api.key("admin")
    first = api.post("/v1/admin/grants", key=key, json=admin_grant())
    assert first.status_code == 201
    # when the same request is sent again, even by another admin key
    again = api.post("/v1/admin/grants", key=api.key("admin"), json=admin_grant())
    # then it answers the first grant and grants nothing more
    assert again.status_code == 201
    assert again.get_json()["replayed"] is True
    assert again.get_json()["grant"]["id"] == first.get_json()["grant"]["id"]
    assert again.get_json()["entry_id"] == first.get_json()["entry_id"]
    assert probe.available("acme") == 25_000
    # when the same key comes with another body
    before = probe.snapshot()
    conflict = api.post("/v1/admin/grants", key=key, json=admin_grant(credits="26"))
    # then 409, nothing written
    assert (conflict.status_code, error(conflict)["code"]) == (409, "idempotency_conflict")
    assert probe.snapshot() == before
    also = api.post("/v1/admin/grants", key=key, json=admin_grant(priority=3))
    assert (also.status_code, error(also)["code"]) == (409, "idempotency_conflict")


def test_an_admin_grant_needs_the_admin_scope(api, probe):
    others = [s for s in SCOPES if s != "admin"]
    key = api.key(*others)
    before = probe.snapshot()
    response = api.post("/v1/admin/grants", key=key, json=admin_grant())
    assert (response.status_code, error(response)["code"]) == (403, "insufficient_scope")
    assert error(response)["required"] == "admin"
    assert api.post("/v1/admin/grants", json=admin_grant()).status_code == 401
    assert probe.snapshot() == before


PAST = "2001-01-01T00:00:00+00:00"
BAD_BODIES = [
    ({"credits": 1.5}, 422, "invalid_amount", "credits"),
    ({"credits": "0"}, 422, "invalid_amount", "credits"),
    ({"credits": "-3"}, 422, "invalid_amount", "credits"),
    ({"credits": "1.0001"}, 422, "invalid_amount", "credits"),
    ({"source": "purchase"}, 422, "invalid_request", "source"),
    ({"source": "promotional"}, 422, "invalid_request", "source"),
    ({"expires_at": PAST}, 422, "invalid_request", "expires_at"),
    ({"expires_at": "2031-01-01T00:00:00"}, 422, "invalid_request", "expires_at"),  # no zone
    ({"expires_at": "next week"}, 422, "invalid_request", "expires_at"),
    ({"priority": 1001}, 422, "invalid_request", "priority"),
    ({"priority": -1}, 422, "invalid_request", "priority"),
    ({"priority": "5"}, 422, "invalid_request", "priority"),
    ({"reason": " "}, 422, "invalid_request", "reason"),
    ({"reason": None}, 422, "invalid_request", "reason"),
    ({"account": "bad account"}, 422, "invalid_request", "account"),
    ({"idempotency_key": "has space"}, 422, "invalid_request", "idempotency_key"),
    ({"user_id": 1}, 422, "invalid_request", "user_id"),
]


@pytest.mark.parametrize(("change", "status", "code", "field"), BAD_BODIES, ids=[str(b[0]) for b in BAD_BODIES])
def test_a_bad_admin_grant_is_refused_with_nothing_written(api, probe, change, status, code, field):
    probe.run(PurchaseCredits("acme", 1_000, "buy-1"))
    key = api.key("admin")
    before = probe.snapshot()
    response = api.post("/v1/admin/grants", key=key, json=admin_grant(**change))
    assert (response.status_code, error(response)["code"], error(response)["field"]) == (status, code, field)
    assert probe.snapshot() == before


def test_an_admin_grant_without_a_json_object_is_400(api, probe):
    response = api.post("/v1/admin/grants", key=api.key("admin"), data="[1]", content_type="application/json")
    assert (response.status_code, error(response)["code"]) == (400, "malformed_payload")
    missing = api.post("/v1/admin/grants", key=api.key("admin"), json={"account": "acme"})
    assert (missing.status_code, error(missing)["code"]) == (422, "invalid_request")
    assert probe.rows("SELECT id FROM grants") == []


# -- the document -----------------------------------------------------------------------------------------------
def test_the_document_has_the_grant_routes_and_the_answers_match(api, probe, receiver_app):
    doc = receiver_app.test_client().get("/openapi.json").get_json()
    assert "get" in doc["paths"]["/v1/accounts/{account}/grants"]
    admin = doc["paths"]["/v1/admin/grants"]["post"]
    assert admin["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AdminGrantBody")
    assert "idempotency_conflict" in admin["responses"]["409"]["description"]
    assert admin["security"] == [{"bearer": []}]
    key = api.key("admin")
    granted = api.post("/v1/admin/grants", key=key, json=admin_grant(expires_at="2099-01-01T00:00:00Z"))
    assert conforms(granted.get_json(), answer_schema(doc, "/v1/admin/grants", "post", 201), doc)
    balance = api.get("/v1/accounts/acme", key=key).get_json()
    assert balance["grants"] and conforms(balance, answer_schema(doc, "/v1/accounts/{account}", "get", 200), doc)
    gid = granted.get_json()["grant"]["id"]
    for path in ("/v1/accounts/acme/grants", f"/v1/accounts/acme/grants?grant={gid}"):
        listed = api.get(path, key=key).get_json()
        assert conforms(listed, answer_schema(doc, "/v1/accounts/{account}/grants", "get", 200), doc), path


# -- the CLI ------------------------------------------------------------------------------------------------------
@pytest.fixture
def billing(database_url: str, session_factory):
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("STRIPE_API_KEY", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_cli.main", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_billing_grant_takes_an_expiry_time_and_a_priority(billing, probe):
    # when an operator grants a promotion expiring at a set time, spent before anything else
    result = billing(
        "grant", "acme", "12.5", "--reason", "spring promo", "--expires-at", "2031-03-01T12:00:00Z", "--priority", "3"
    )
    # then
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "granted 12.5 credits to acme"
    assert lines[-1] == "source promotion priority 3 expires 2031-03-01T12:00:00+00:00"
    row = probe.rows("SELECT source, amount_mc, priority, expires_at FROM grants")[0]
    assert (row.source, row.amount_mc, row.priority) == ("promotional", 12_500, 3)
    assert row.expires_at == datetime(2031, 3, 1, 12, tzinfo=UTC)
    metadata = probe.scalar("SELECT metadata FROM ledger_entries")
    assert metadata["reason"] == "spring promo" and metadata["actor"].startswith("cli:")


@pytest.mark.parametrize(
    ("source", "stored", "priority"),
    [("admin", "adjustment", 30), ("plan", "plan", 20), ("promotional", "promotional", 10)],
)
def test_billing_grant_sources_by_their_public_names(billing, probe, source, stored, priority):
    result = billing("grant", "acme", "1", "--reason", "r", "--source", source, "--expires-in-days", "3")
    assert result.returncode == 0, result.stderr
    assert probe.rows("SELECT source, priority FROM grants") == [(stored, priority)]
    probe.assert_consistent()


@pytest.mark.parametrize(
    "args",
    [
        ["--expires-at", "2031-01-01T00:00:00Z", "--expires-in-days", "3"],
        ["--expires-at", "soon"],
        ["--priority", "1001"],
        ["--source", "purchase"],
    ],
)
def test_billing_grant_refuses_bad_options_and_writes_nothing(billing, probe, args):
    result = billing("grant", "acme", "1", "--reason", "r", *args)
    assert result.returncode == 2, result.stdout
    assert probe.rows("SELECT id FROM grants") == []


def test_billing_grant_refuses_a_past_expiry(billing, probe):
    result = billing("grant", "acme", "1", "--reason", "r", "--expires-at", "2001-01-01T00:00:00Z")
    assert result.returncode == 1
    assert "expires_at must be in the future" in result.stderr
    assert probe.rows("SELECT id FROM grants") == []
