"""Reconciliation's events pass against the Stripe emulator: webhooks lost on the way (30 % of them) are read
back from ``GET /v1/events`` and applied through the normal path, exactly the missing credits and nothing else;
a second run changes nothing; a 429-answering Stripe slows the run down and it completes; a run killed half way
resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.intake.stripe_events import PROCESSED
from billing_core.reconcile.discrepancies import record
from billing_core.reconcile.events import RunReport, reconcile_events
from billing_core.reconcile.objects import reconcile_objects
from billing_core.reconcile.pacing import Pacer, TokenBucket
from tests.integration import paying_stack as _paying

paying_stack, shop = _paying.paying_stack, _paying.shop

pytestmark = pytest.mark.integration

URLS = {"success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"}
ACCOUNTS = ("ana", "ben", "cy")
SESSIONS = 10
PRO_MC = 55_000_000  # the "pro" package: 50,000 credits + 5,000 bonus


def _sell(stack: Any, api: Any, session_factory: Any, *, drop_every: int = 3) -> tuple[dict[str, int], list[str]]:
    """``SESSIONS`` paid checkouts; every ``drop_every``-th completion is lost on the way (never delivered), and
    so is every other event. The credits each account must end with, and the dropped sessions."""
    key = api.key("checkout:write")
    expected = dict.fromkeys(ACCOUNTS, 0)
    dropped = []
    for n in range(SESSIONS):
        account = ACCOUNTS[n % len(ACCOUNTS)]
        answer = api.post("/v1/checkout", key=key, json={"account": account, "package": "pro", **URLS})
        assert answer.status_code == 201, answer.get_data(as_text=True)
        session_id = answer.get_json()["id"]
        stack.control(f"checkout/sessions/{session_id}/pay")
        expected[account] += PRO_MC
        (completed,) = stack.events("checkout.session.completed", session_id)
        if n % drop_every == drop_every - 1:
            dropped.append(session_id)
        else:
            assert stack.deliver(session_factory, completed) == PROCESSED
    return expected, dropped


def _ledger(probe: Any) -> tuple[Any, ...]:
    return (
        probe.scalar("SELECT count(*) FROM ledger_entries"),
        tuple(tuple(r) for r in probe.rows("SELECT code, balance_mc FROM ledger_accounts ORDER BY code")),
    )


def _fast(sleeps: list[float] | None = None) -> Pacer:
    """A pacer that never really sleeps: it records what it was asked to sleep."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)
        now[0] += seconds

    return Pacer(TokenBucket(1000.0, clock=lambda: now[0], sleep=sleep))


def _purchases(probe: Any) -> list[str]:
    return sorted(
        r[0] for r in probe.rows("SELECT idempotency_key FROM ledger_entries WHERE idempotency_key LIKE 'checkout:%'")
    )


def test_reconciliation_restores_exactly_the_missing_credits_and_a_second_run_changes_nothing(
    shop, session_factory, probe
):
    stack, api = shop
    expected, dropped = _sell(stack, api, session_factory)
    assert len(dropped) == 3
    assert sum(probe.available(a) for a in ACCOUNTS) == (SESSIONS - len(dropped)) * PRO_MC

    run = reconcile_events(session_factory, stack.gateway, pace=_fast())
    assert run.status == "done" and not run.resumed
    assert run.counts["missing"] >= len(dropped)
    assert run.counts["read"] == run.counts["missing"] + SESSIONS - len(dropped)
    assert run.counts["applied"] >= len(dropped)
    for account, credits in expected.items():
        assert probe.available(account) == credits, account
    assert len(_purchases(probe)) == SESSIONS  # one purchase per session, none twice
    assert probe.scalar("SELECT count(*) FROM stripe_events WHERE source = 'reconciliation'") == run.counts["missing"]
    assert probe.scalar("SELECT count(*) FROM stripe_events WHERE source = 'webhook'") == SESSIONS - len(dropped)
    probe.assert_consistent()

    before = _ledger(probe)
    again = reconcile_events(session_factory, stack.gateway, pace=_fast())
    assert again.status == "done"
    assert again.counts.get("missing", 0) == 0 and again.counts.get("applied", 0) == 0
    assert _ledger(probe) == before
    # the checkpoint moved: the second run read only the overlap's events, from the checkpoint on
    assert again.window_start is not None and run.window_end is not None
    assert again.window_start < run.window_end
    probe.assert_consistent()


def test_a_rate_limiting_stripe_slows_the_run_down_and_it_completes(shop, session_factory, probe):
    stack, api = shop
    expected, _ = _sell(stack, api, session_factory)
    stack.control("api_faults", rate_limit_every=3, retry_after=0.25)
    sleeps: list[float] = []
    pace = _fast(sleeps)
    try:
        run = reconcile_events(session_factory, stack.gateway, pace=pace, page_size=5)
    finally:
        faults = stack.control("api_faults", rate_limit_every=0)
    assert run.status == "done"
    assert run.counts["rate_limited"] == pace.rate_limited >= 1
    assert sleeps.count(0.25) == pace.rate_limited  # Retry-After honoured, once per 429
    assert pace.bucket.rate < 1000.0  # and the pace slowed down
    assert faults["limited"] == 0  # (reset by configuring)
    for account, credits in expected.items():
        assert probe.available(account) == credits, account
    assert len(_purchases(probe)) == SESSIONS
    probe.assert_consistent()


class Killed(Exception):
    pass


def test_a_run_killed_half_way_resumes_from_its_checkpoint(shop, session_factory, probe):
    stack, api = shop
    expected, _ = _sell(stack, api, session_factory)
    total = len(stack.gateway.list_events_page(limit=100)["data"])

    def kill_after_two(pages: int) -> None:
        if pages == 2:
            raise Killed

    with pytest.raises(Killed):
        reconcile_events(session_factory, stack.gateway, pace=_fast(), page_size=4, after_page=kill_after_two)
    failed = probe.rows("SELECT status, counts, checkpoint FROM reconciliation_runs")
    assert [(r[0], r[1]["read"], r[1]["pages"]) for r in failed] == [("failed", 8, 2)]
    assert failed[0][2]["starting_after"]
    assert probe.scalar("SELECT count(*) FROM reconciliation_checkpoints") == 0  # not before the window is stored

    seen: list[str] = []
    resumed: RunReport = reconcile_events(
        session_factory, stack.gateway, pace=_fast(), page_size=4, after_page=lambda pages: seen.append(str(pages))
    )
    assert resumed.resumed and resumed.status == "done" and resumed.id == 1
    assert resumed.counts["read"] == total  # each event read once: the walk went on where it stopped
    for account, credits in expected.items():
        assert probe.available(account) == credits, account
    assert len(_purchases(probe)) == SESSIONS
    assert probe.scalar("SELECT count(*) FROM reconciliation_checkpoints") == 1
    probe.assert_consistent()


# -- the command line ------------------------------------------------------------------------------------------


def _billing(database_url: str, emulator_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_API_KEY": _paying.API_KEY}
    env["STRIPE_API_BASE"] = emulator_url
    return subprocess.run(
        [sys.executable, "-m", "billing_cli.main", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_billing_reconcile_runs_the_pass_and_prints_the_run(shop, session_factory, probe, database_url):
    stack, api = shop
    expected, dropped = _sell(stack, api, session_factory)
    done = _billing(database_url, stack.emulator_url, "reconcile", "--since", "2020-01-01")
    assert done.returncode == 0, done.stderr
    assert "run 1 events: done" in done.stdout
    assert "window   2020-01-01T00:00:00+00:00 .. " in done.stdout
    counts = json.loads(done.stdout.split("counts   ", 1)[1].splitlines()[0])
    assert counts["missing"] >= len(dropped) and counts["read"] >= SESSIONS
    for account, credits in expected.items():
        assert probe.available(account) == credits, account
    objects = _billing(database_url, stack.emulator_url, "reconcile", "--objects", "--days", "2")
    assert objects.returncode == 0, objects.stderr
    assert "run 2 objects: done" in objects.stdout and '"checked_sessions": 10' in objects.stdout
    listed = _billing(database_url, stack.emulator_url, "reconcile", "--runs")
    assert listed.returncode == 0 and "run 1 events: done" in listed.stdout and "run 2 objects" in listed.stdout


def test_billing_discrepancies_lists_and_resolves_with_a_note(session_factory, database_url):
    with session_factory.begin() as session:
        first = record(
            session,
            kind="amount_differs",
            dedupe_key="amount:checkout:cs_1",
            stripe_id="cs_1",
            account="ana",
            expected={"amount_mc": 55_000_000},
            found={"amount_mc": 50_000_000},
        )
        assert record(session, kind="amount_differs", dedupe_key="amount:checkout:cs_1", stripe_id="cs_1") is None
    assert first == 1
    shown = _billing(database_url, "http://127.0.0.1:9", "discrepancies")
    assert shown.returncode == 0, shown.stderr
    assert "amount_differs\tcs_1\tana" in shown.stdout and "1 discrepancies open" in shown.stdout
    blank = _billing(database_url, "http://127.0.0.1:9", "discrepancies", "resolve", "1", "--note", " ")
    assert blank.returncode == 1 and "note" in blank.stderr
    resolved = _billing(database_url, "http://127.0.0.1:9", "discrepancies", "resolve", "1", "--note", "refunded 5k")
    assert resolved.returncode == 0, resolved.stderr
    assert "discrepancy 1 resolved by" in resolved.stdout and "refunded 5k" in resolved.stdout
    assert "0 discrepancies open" in _billing(database_url, "http://127.0.0.1:9", "discrepancies").stdout
    every = _billing(database_url, "http://127.0.0.1:9", "discrepancies", "--all").stdout
    assert "refunded 5k" in every and "1 discrepancies" in every
    unknown = _billing(database_url, "http://127.0.0.1:9", "discrepancies", "resolve", "7", "--note", "x")
    assert unknown.returncode == 1 and "no discrepancy 7" in unknown.stderr


# -- the objects pass ------------------------------------------------------------------------------------------


def test_objects_pass_credits_missing_sessions_and_reports_an_altered_amount_once(shop, session_factory, probe):
    stack, api = shop
    expected, dropped = _sell(stack, api, session_factory)
    run = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    assert run.status == "done" and run.kind == "objects"
    assert run.counts["checked_sessions"] == SESSIONS
    assert run.counts["missing_sessions"] == run.counts["applied_sessions"] == len(dropped)
    assert run.counts.get("discrepancies", 0) == 0
    for account, credits in expected.items():
        assert probe.available(account) == credits, account
    assert len(_purchases(probe)) == SESSIONS

    # the ledger's amount of one purchase altered behind the pipeline's back
    altered = dropped[0]
    with session_factory.begin() as session:
        session.execute(
            text(
                "UPDATE grants SET amount_mc = amount_mc - 1000 WHERE entry_id = "
                "(SELECT id FROM ledger_entries WHERE idempotency_key = :k)"
            ),
            {"k": f"checkout:{altered}"},
        )
    before = _ledger(probe)
    second = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    assert second.counts["discrepancies"] == 1 and second.counts.get("applied_sessions", 0) == 0
    assert _ledger(probe) == before  # reported, not "healed"
    found = probe.rows("SELECT kind, stripe_id, expected, found FROM discrepancies")
    assert [tuple(r) for r in found] == [
        ("amount_differs", altered, {"credits_mc": PRO_MC}, {"credits_mc": PRO_MC - 1000})
    ]
    assert probe.scalar("SELECT count(*) FROM admin_alerts WHERE kind = 'reconciliation_discrepancy'") == 1
    third = reconcile_objects(session_factory, stack.gateway, pace=_fast())
    assert third.counts.get("discrepancies", 0) == 0  # once
    assert probe.scalar("SELECT count(*) FROM discrepancies") == 1
    assert probe.scalar("SELECT count(*) FROM admin_alerts WHERE kind = 'reconciliation_discrepancy'") == 1
