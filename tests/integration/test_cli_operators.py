"""The operators' command line run for real (``python -m billing_cli.main``) on the test database: API keys,
dead letters and their replay."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.intake import stripe_events, usage_inbox
from billing_core.intake.usage_reports import accept_reports
from billing_core.ledger.commands import GrantCredits
from billing_core.pricing.catalog import PriceTable
from tests.fixtures import STRIPE_FIXTURES
from tests.integration.conftest import event_inbox_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def billing(database_url: str, session_factory):
    """``billing(*args)``: the CLI in a child process on the (emptied) test database; Stripe is not configured,
    so nothing here can reach it."""
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


def execute_sql(session_factory, sql: str, **params: Any) -> None:
    with session_factory() as s, s.begin():
        s.execute(text(sql), params)


def created_key(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# -- API keys --------------------------------------------------------------------------------------------
def test_apikey_create_prints_the_key_once_and_stores_only_its_hash(billing, probe, api):
    # when an operator creates a key
    result = billing("apikey", "create", "--name", "reporting app", "--scopes", "usage:write,accounts:read")

    # then the key is printed alone on the last line
    key = created_key(result)
    assert key.startswith("bk_") and " " not in key and len(key) == 46
    # and only its sha256 is stored: the plaintext appears in no column of the table
    rows = probe.rows("SELECT id, name, key_hash, scopes, revoked_at FROM api_keys")
    assert len(rows) == 1
    assert rows[0].name == "reporting app"
    assert rows[0].key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert sorted(rows[0].scopes) == ["accounts:read", "usage:write"]
    assert rows[0].revoked_at is None
    assert probe.scalar("SELECT count(*) FROM api_keys t WHERE strpos(t::text, :k) > 0", k=key) == 0
    assert f"created API key {rows[0].id} " in result.stdout

    # and it authenticates: a read in its scope finds no such account (404, not 401)
    found = api.client.get("/v1/accounts/x", headers={"Authorization": f"Bearer {key}"})
    assert found.status_code == 404, found.get_json()
    assert found.get_json()["error"]["code"] == "unknown_account"
    # and a call outside its scopes is forbidden, not unauthenticated
    hold = api.client.post(
        "/v1/holds",
        headers={"Authorization": f"Bearer {key}"},
        json={"account": "x", "idempotency_key": "h-1", "credits": "1"},
    )
    assert hold.status_code == 403, hold.get_json()
    assert hold.get_json()["error"]["code"] == "insufficient_scope"


def test_apikey_create_refuses_an_unknown_scope(billing, probe):
    # when an operator asks for a scope that does not exist
    result = billing("apikey", "create", "--name", "typo", "--scopes", "usage:write,usage:delete")

    # then the command fails, says why, and creates nothing
    assert result.returncode == 1
    assert "scopes must be" in result.stderr and "usage:write" in result.stderr
    assert result.stdout == ""
    assert probe.scalar("SELECT count(*) FROM api_keys") == 0


def test_apikey_revoke_stops_the_key(billing, probe, api):
    # given a key that works
    from billing_core.accounts.api_keys import hash_key

    key = created_key(billing("apikey", "create", "--name", "leaked", "--scopes", "accounts:read"))
    headers = {"Authorization": f"Bearer {key}"}
    assert api.client.get("/v1/accounts/x", headers=headers).status_code == 404
    key_id = probe.scalar("SELECT id FROM api_keys")

    # when an operator revokes it (and the receiver's short cache has run out)
    result = billing("apikey", "revoke", str(key_id))
    api.client.application.extensions["billing"].key_cache.forget(hash_key(key))

    # then the key is refused, and listed as revoked
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"revoked key {key_id}"
    refused = api.client.get("/v1/accounts/x", headers=headers)
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_api_key"
    listed = billing("apikey", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"{key_id}\t") and "\trevoked " in listed.stdout
    assert key not in listed.stdout

    # when it is revoked again
    again = billing("apikey", "revoke", str(key_id))

    # then there is no active key to revoke
    assert again.returncode == 1
    assert f"no active key {key_id}" in again.stderr


# -- dead letters ----------------------------------------------------------------------------------------
def store_usage_report(session_factory, key: str, credits: str, account: str = "acme") -> None:
    payload = {"idempotency_key": key, "account": account, "items": [{"type": "credits", "credits": credits}]}
    stored = usage_inbox.store_usage(session_factory, accept_reports(payload, PriceTable.default()))
    assert stored.accepted == [key]


def kill_usage(session_factory, key: str) -> None:
    execute_sql(
        session_factory,
        "UPDATE usage_inbox SET status = 'dead', attempts = :n, reason_code = 'processing_error', "
        "reason = 'OperationalError: worker lost' WHERE idempotency_key = :k",
        n=usage_inbox.MAX_ATTEMPTS,
        k=key,
    )


def store_customer_event(session_factory, event_id: str) -> None:
    """A customer.created event naming account acme, built from Stripe's own fixtures."""
    resources = json.loads(STRIPE_FIXTURES.read_text())["resources"]
    event = copy.deepcopy(resources["event"])
    customer = copy.deepcopy(resources["customer"])
    customer.update(id="cus_acme", metadata={"account": "acme"})
    event.update(id=event_id, type="customer.created", data={"object": customer})
    assert event_inbox_for(session_factory).store(stripe_events.check_event(event), json.dumps(event).encode())


def kill_event(session_factory, event_id: str) -> None:
    execute_sql(
        session_factory,
        "UPDATE stripe_events SET status = 'dead', attempts = :n, last_error = 'RuntimeError: boom' WHERE id = :id",
        n=stripe_events.MAX_ATTEMPTS,
        id=event_id,
    )


def test_dead_lists_dead_usage_reports_and_stripe_events(billing, session_factory):
    # given a dead usage report, a dead Stripe event, and a live report
    store_usage_report(session_factory, "use-dead", "2.5")
    kill_usage(session_factory, "use-dead")
    store_customer_event(session_factory, "evt_dead")
    kill_event(session_factory, "evt_dead")
    store_usage_report(session_factory, "use-live", "1")

    # when an operator lists dead letters
    result = billing("dead")

    # then both dead ones are listed, with their attempts and errors, and the live one is not
    assert result.returncode == 0, result.stderr
    lines = sorted(line.split("\t") for line in result.stdout.strip().splitlines())
    assert [(f[0], f[1], f[2], f[4]) for f in lines] == [
        ("evt_dead", "customer.created", f"{stripe_events.MAX_ATTEMPTS} attempts", "RuntimeError: boom"),
        ("use-dead", "usage", f"{usage_inbox.MAX_ATTEMPTS} attempts", "OperationalError: worker lost"),
    ]
    assert "2 dead letter(s)" in result.stderr


def test_replay_applies_a_dead_usage_report_once(billing, probe, session_factory):
    # given credits in the wallet and a usage report of 2.5 credits that died
    probe.run(GrantCredits("acme", 10_000, "welcome"))
    store_usage_report(session_factory, "use-1", "2.5")
    kill_usage(session_factory, "use-1")

    # when an operator replays it
    result = billing("replay", "use-1")

    # then it is applied and the wallet debited once
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "use-1: applied"
    row = probe.rows("SELECT status, attempts, entry_id FROM usage_inbox WHERE idempotency_key = 'use-1'")[0]
    assert (row.status, row.attempts) == ("applied", 1)
    assert probe.scalar("SELECT kind FROM ledger_entries WHERE id = :e", e=row.entry_id) == "usage"
    assert probe.available("acme") == 10_000 - 2_500
    assert billing("dead").stdout == ""

    # when it is replayed again
    again = billing("replay", "use-1")

    # then there is nothing to replay, and nothing more is debited
    assert again.returncode == 1
    assert "nothing to replay" in again.stderr
    assert probe.available("acme") == 10_000 - 2_500
    assert probe.scalar("SELECT count(*) FROM ledger_entries WHERE idempotency_key = 'usage:use-1'") == 1
    probe.assert_consistent()


def test_replay_processes_a_dead_stripe_event(billing, probe, session_factory):
    # given a dead customer.created event (handled from its payload: no Stripe needed)
    store_customer_event(session_factory, "evt_dead")
    kill_event(session_factory, "evt_dead")

    # when an operator replays it
    result = billing("replay", "evt_dead")

    # then it is processed and the wallet linked to the customer
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "evt_dead: processed"
    assert probe.rows("SELECT status, attempts, last_error FROM stripe_events") == [("processed", 1, None)]
    assert probe.rows("SELECT account, stripe_customer_id FROM wallets") == [("acme", "cus_acme")]


def test_replay_of_an_unknown_letter_exits_1(billing):
    # when an operator replays an id nothing is stored under
    result = billing("replay", "no-such-letter")

    # then the command fails and says so
    assert result.returncode == 1
    assert "nothing to replay under 'no-such-letter'" in result.stderr


# -- balance ---------------------------------------------------------------------------------------------
def test_balance_shows_a_granted_account(billing, probe):
    # given an account with credits
    probe.run(GrantCredits("acme", 12_345, "welcome"))

    # when an operator reads its balance
    result = billing("balance", "acme")

    # then it prints the credits and exits 0
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "acme: available 12.345  held 0.000  total 12.345 credits"


def test_balance_of_an_unknown_account_exits_1(billing):
    # when an operator reads the balance of an account that has no wallet
    result = billing("balance", "nobody")

    # then it says so on stderr and fails, as the API's 404 does, instead of printing zeros
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "billing: unknown_account: no account 'nobody'"
