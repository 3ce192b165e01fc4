"""Price versions on the real database and through the real app: a version loaded ahead of time takes effect
at its time (freezegun) and every usage entry names the version that priced it; the CLI's load, show and
diff; the HTTP contract of pricing refusals (422 unknown_model with known_models, 403 key_mode_not_allowed);
the agent costs; and the estimate equal to what the ledger debits for the same items (hypothesis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_core.db.tables import PriceVersion
from billing_core.errors import IdempotencyConflict, InvalidCommand
from billing_core.intake.usage_inbox import apply_partition, usage_status
from billing_core.intake.usage_reports import partition_of
from billing_core.ledger.commands import PurchaseCredits
from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.versions import BEGINNING, PriceBook, load_version

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = PriceTable.default()
# Far in the future: a version these tests leave behind can never price another test's work at the real now.
T0 = datetime(2031, 1, 1, 12, 0, tzinfo=UTC)
SWITCH = T0 + timedelta(hours=1)
GPT4O = {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}


def catalog(version: str, gpt4o_input_usd: str = "5.00") -> dict[str, Any]:
    """The shipped catalog as another version, with gpt-4o's input price changed."""
    data = BASE.catalog
    data["version"] = version
    data["llm_tokens"]["openai"]["gpt-4o"]["input_usd_per_1m"] = gpt4o_input_usd
    return data


@pytest.fixture
def book(session_factory) -> PriceBook:
    return PriceBook(BASE, session_factory=session_factory, refresh_seconds=0)


@pytest.fixture
def app_prices(receiver_app, session_factory):
    """The running app's PriceBook; emptied of this test's versions afterwards (its session-wide book would
    otherwise keep them until its next refresh)."""
    prices: PriceBook = receiver_app.extensions["billing"].prices
    yield prices
    with session_factory() as session, session.begin():
        session.execute(PriceVersion.__table__.delete())
    prices.refresh()


# ------------------------------------------------------------------------------------------ loading versions
def test_loading_a_version_is_idempotent_and_a_version_id_names_one_content(session_factory, probe):
    v2 = PriceTable(catalog("v2"))
    with freeze_time(T0):
        first = load_version(session_factory, v2, effective_at=SWITCH, note="gpt-4o up")
        again = load_version(session_factory, v2, effective_at=SWITCH)
        assert (first.created, again.created) == (True, False)
        # the same id with other content, or at another time, is refused
        with pytest.raises(IdempotencyConflict):
            load_version(session_factory, PriceTable(catalog("v2", "6.00")), effective_at=SWITCH)
        with pytest.raises(IdempotencyConflict):
            load_version(session_factory, v2, effective_at=SWITCH + timedelta(hours=1))
        # a past effective time needs force
        with pytest.raises(InvalidCommand) as err:
            load_version(session_factory, PriceTable(catalog("v0")), effective_at=T0 - timedelta(seconds=1))
        assert err.value.details["field"] == "effective_at"
        forced = load_version(
            session_factory, PriceTable(catalog("v0")), effective_at=T0 - timedelta(days=1), force=True
        )
        assert forced.created
        # the file's own version id with other content is refused
        with pytest.raises(IdempotencyConflict):
            load_version(session_factory, PriceTable(catalog(str(BASE.version))), effective_at=SWITCH, base=BASE)
    rows = probe.rows("SELECT version, effective_at, sha256, note FROM price_versions ORDER BY effective_at")
    assert [(r.version, r.effective_at, r.note) for r in rows] == [
        ("v0", T0 - timedelta(days=1), None),
        ("v2", SWITCH, "gpt-4o up"),
    ]
    assert rows[1].sha256 == v2.sha256


def test_the_book_switches_at_the_effective_time(session_factory, book):
    with freeze_time(T0) as clock:
        assert book.current().version == BASE.version
        load_version(session_factory, PriceTable(catalog("v2")), effective_at=SWITCH)
        # loaded but not yet in effect
        assert book.current().version == BASE.version
        clock.move_to(SWITCH - timedelta(microseconds=1))
        assert book.current().version == BASE.version
        clock.move_to(SWITCH)
        assert book.current().version == "v2"
        assert book.current().model_price("openai", "gpt-4o").input_per_1m == 5000
    # any time can be asked without moving the clock; the beginning of time has the file's version
    assert book.current(SWITCH - timedelta(days=365)).version == BASE.version
    assert [(v.version, v.source) for v in book.schedule()] == [(BASE.version, "file"), ("v2", "database")]
    assert book.schedule()[0].effective_at == BEGINNING


def test_a_running_book_notices_a_new_version_within_its_refresh_interval(session_factory):
    ticks = [0.0]
    book = PriceBook(BASE, session_factory=session_factory, refresh_seconds=5, clock=lambda: ticks[0])
    assert book.current(SWITCH).version == BASE.version  # first look at the database
    load_version(session_factory, PriceTable(catalog("v2")), effective_at=SWITCH, now=T0)
    ticks[0] = 4.9
    assert book.current(SWITCH).version == BASE.version  # no database call yet
    ticks[0] = 5.0
    assert book.current(SWITCH).version == "v2"


# ------------------------------------------------------------------------------------------ entries explained
def entry_of(probe, key: str) -> Any:
    return probe.rows("SELECT e.id, e.metadata FROM ledger_entries e WHERE e.idempotency_key = :k", k=f"usage:{key}")[0]


def test_entries_before_and_after_a_switch_are_explained_by_their_versions(api, probe, session_factory, app_prices):
    key = api.key("usage:write")
    with freeze_time(T0) as clock:
        probe.run(PurchaseCredits("acme", 1_000_000, "buy-1"))
        load_version(session_factory, PriceTable(catalog("v2")), effective_at=SWITCH)
        app_prices.refresh()
        report = {"account": "acme", "items": [GPT4O]}
        # before: $2.50 input: 1000 * 2.5 + 100 * 10 = 3500 mc
        assert api.post("/v1/usage", key=key, json={**report, "idempotency_key": "before"}).status_code == 202
        clock.move_to(SWITCH + timedelta(minutes=1))
        # after: $5.00 input: 1000 * 5 + 100 * 10 = 6000 mc
        assert api.post("/v1/usage", key=key, json={**report, "idempotency_key": "after"}).status_code == 202
        # a replay of the first report under the new prices is a duplicate, not a conflict nor a new price
        replay = api.post("/v1/usage", key=key, json={**report, "idempotency_key": "before"})
        assert replay.status_code == 202 and replay.json["duplicates"] == ["before"]
        apply_partition(session_factory, partition_of("acme"))
    assert probe.available("acme") == 1_000_000 - 3500 - 6000
    assert usage_status(session_factory, "before").amount_mc == 3500
    assert usage_status(session_factory, "after").amount_mc == 6000
    before, after = entry_of(probe, "before").metadata, entry_of(probe, "after").metadata
    assert (before["price_version"], after["price_version"]) == (BASE.version, "v2")
    assert before["mode"] == after["mode"] == "system"
    assert before["breakdown"][0]["input_per_1m"] == "2500" and after["breakdown"][0]["input_per_1m"] == "5000"
    # re-priced on paper from the entry alone: tokens * credits per 1M / 1e6 credits, * 1000 mc
    for metadata, amount in ((before, 3500), (after, 6000)):
        used, line = metadata["items"][0], metadata["breakdown"][0]  # breakdown[i] prices items[i]
        on_paper = (
            used["input_tokens"] * int(line["input_per_1m"]) + used["output_tokens"] * int(line["output_per_1m"])
        ) // 1000
        assert on_paper == amount and line["credits"] == f"{amount // 1000}.{amount % 1000:03d}"
    probe.assert_consistent()


def test_a_hold_and_its_capture_record_their_pricing(api, probe):
    key = api.key("holds:write")
    probe.run(PurchaseCredits("acme", 100_000, "buy-1"))
    hold = api.post(
        "/v1/holds",
        key=key,
        json={"account": "acme", "idempotency_key": "h1", "items": [GPT4O, {"type": "tier", "tier": "tier1b"}]},
    )
    assert hold.status_code == 201 and hold.json["credits"] == "53.500"  # 3.5 + 50
    capture = api.post(f"/v1/holds/{hold.json['id']}/capture", key=key, json={"items": [GPT4O]})
    assert capture.status_code == 200
    rows = probe.rows("SELECT kind, metadata FROM ledger_entries WHERE kind IN ('hold', 'capture') ORDER BY id")
    assert [r.kind for r in rows] == ["hold", "capture"]
    for row in rows:
        assert row.metadata["price_version"] == BASE.version and row.metadata["mode"] == "system"
        assert row.metadata["breakdown"][0]["model"] == "gpt-4o"
    assert rows[0].metadata["breakdown"][1]["tier"] == "tier1b"


def test_a_hold_retried_under_a_new_price_version_at_the_same_amount_is_the_same_hold(probe):
    # The pricing is recorded, not fingerprinted: a client retrying its hold after a version switch gets it back.
    from billing_core.errors import IdempotencyConflict
    from billing_core.ledger.commands import PlaceHold

    probe.run(PurchaseCredits("acme", 100_000, "buy-1"))
    first = probe.run(PlaceHold("acme", 3_500, "hold:h1", pricing={"price_version": "2026-12-01"}))
    again = probe.run(PlaceHold("acme", 3_500, "hold:h1", pricing={"price_version": "2027-01-01"}))
    assert (again.replayed, again.hold.id) == (True, first.hold.id)
    meta = probe.scalar("SELECT metadata FROM ledger_entries WHERE idempotency_key = 'hold:h1'")
    assert meta == {"price_version": "2026-12-01"}  # the first pricing stands
    with pytest.raises(IdempotencyConflict):  # another amount is another request
        probe.run(PlaceHold("acme", 3_600, "hold:h1", pricing={"price_version": "2027-01-01"}))
    assert probe.wallet("acme").held_mc == 3_500


# ------------------------------------------------------------------------------------------ HTTP refusals
def error(response) -> dict[str, Any]:
    return response.get_json()["error"]


def test_unknown_model_answers_422_with_the_known_models(api, probe):
    key = api.key("usage:write", "holds:write")
    before = probe.snapshot()
    estimate = api.post("/v1/estimate", key=key, json={"items": [{**GPT4O, "model": "gpt-9"}]})
    assert estimate.status_code == 422
    assert error(estimate)["code"] == "unknown_model"
    assert error(estimate)["known_models"] == BASE.models("openai")
    provider = api.post("/v1/estimate", key=key, json={"items": [{**GPT4O, "provider": "openia"}]})
    assert error(provider)["known_models"] == [] and error(provider)["known_providers"] == BASE.providers
    hold = api.post(
        "/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h", "items": [{**GPT4O, "model": "gpt-9"}]}
    )
    assert (hold.status_code, error(hold)["code"]) == (422, "unknown_model")
    assert "gpt-4o" in error(hold)["known_models"]
    usage = api.post(
        "/v1/usage",
        key=key,
        json={"events": [{"idempotency_key": "u1", "account": "acme", "items": [{**GPT4O, "model": "gpt-9"}]}]},
    )
    assert usage.status_code == 422
    [problem] = error(usage)["problems"]
    assert (problem["code"], problem["field"]) == ("unknown_model", "items[0].model")
    assert problem["known_models"] == BASE.models("openai")
    assert probe.snapshot() == before  # nothing charged, nothing stored


def test_own_key_mode_on_a_tier_that_requires_system_credits_answers_403(api, probe):
    probe.run(PurchaseCredits("acme", 100_000, "buy-1"))
    key = api.key("usage:write", "holds:write")
    before = probe.snapshot()
    items = [GPT4O, {"type": "tier", "tier": "tier1b"}]
    hold = api.post(
        "/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h", "items": items, "mode": "own"}
    )
    assert hold.status_code == 403
    assert error(hold)["code"] == "key_mode_not_allowed"
    assert (error(hold)["field"], error(hold)["tier"]) == ("items[1].tier", "tier1b")
    report = {"idempotency_key": "r1", "account": "acme", "items": items, "mode": "own"}
    one = api.post("/v1/usage", key=key, json=report)
    assert one.status_code == 403
    assert error(one)["code"] == "key_mode_not_allowed" and error(one)["field"] == "items[1].tier"
    # in a batch it is one of the batch's problems
    ok = {"idempotency_key": "r2", "account": "acme", "items": [GPT4O]}
    batch = api.post("/v1/usage", key=key, json={"events": [ok, report]})
    assert batch.status_code == 422 and error(batch)["code"] == "invalid_usage"
    assert [(p["index"], p["code"]) for p in error(batch)["problems"]] == [(1, "key_mode_not_allowed")]
    estimate = api.post("/v1/estimate", key=key, json={"items": items, "mode": "own"})
    assert (estimate.status_code, error(estimate)["code"]) == (403, "key_mode_not_allowed")
    assert probe.snapshot() == before


def test_own_key_mode_charges_base_fees_only(api, probe, session_factory):
    probe.run(PurchaseCredits("acme", 100_000, "buy-1"))
    key = api.key("usage:write", "holds:write")
    items = [GPT4O, {"type": "tier", "tier": "tier2"}, {"type": "agent", "code": "visualize_data"}]
    hold = api.post(
        "/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h", "items": items, "mode": "own"}
    )
    assert hold.status_code == 201 and hold.json["credits"] == "30.000"  # visualize_data only; tokens on their key
    report = {"idempotency_key": "own-1", "account": "acme", "items": items, "mode": "own"}
    assert api.post("/v1/usage", key=key, json=report).status_code == 202
    apply_partition(session_factory, partition_of("acme"))
    metadata = entry_of(probe, "own-1").metadata
    assert metadata["mode"] == "own" and [line["credits"] for line in metadata["breakdown"]] == [
        "0.000",
        "0.000",
        "30.000",
    ]
    assert probe.available("acme") == 100_000 - 30_000 - 30_000  # the hold and the report


# ------------------------------------------------------------------------------------------ agent costs
def test_agent_costs_lists_the_22_agents(api):
    response = api.get("/v1/agent-costs", key=api.key("usage:write"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["version"] == BASE.version
    assert len(body["data"]) == 22
    first = body["data"][0]
    assert first == {
        "code": "profile_my_data",
        "name": "Profile my data",
        "credits": "20.000",
        "description": BASE.agent_spec("profile_my_data").description,
    }
    assert {d["credits"] for d in body["data"]} >= {"20.000", "150.000"}
    assert api.get("/v1/agent-costs").status_code == 401


def test_the_estimate_shows_the_breakdown_version_and_mode(api):
    body = api.post("/v1/estimate", key=api.key(), json={"items": [GPT4O], "mode": "system"}).get_json()
    assert (body["version"], body["mode"], body["credits"]) == (BASE.version, "system", "3.500")
    assert body["lines"][0]["breakdown"]["input_per_1m"] == "2500"


# ------------------------------------------------------------------------------------------ estimate = charge
_models = st.sampled_from([(p, m) for p, m, _ in BASE.priced_models()])
_small = st.integers(0, 200_000)


OWN_FEES = [c for c in BASE.fee_codes if not ((tier := BASE.fee_tier(c)) and tier.requires_system_credits)]


@st.composite
def usage_items(draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(["llm_tokens", "tokens", "agent", "fee", "tier"]))
    if kind == "llm_tokens":
        provider, model = draw(_models)
        return {
            "type": kind,
            "provider": provider,
            "model": model,
            "input_tokens": draw(_small),
            "output_tokens": draw(_small),
            "cached_input_tokens": draw(_small),
        }
    if kind == "tokens":
        return {"type": kind, "tokens": draw(_small)}
    if kind == "tier":
        return {"type": kind, "tier": "tier2", "quantity": draw(st.integers(1, 5))}
    # Like the tiers above, only fees that own keys may pay: the property compares prices, not refusals.
    codes = BASE.agent_codes if kind == "agent" else OWN_FEES
    return {"type": kind, "code": draw(st.sampled_from(codes)), "quantity": draw(st.integers(1, 3))}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(usage_items(), min_size=1, max_size=6), mode=st.sampled_from(["system", "own"]))
def test_the_estimate_equals_what_the_ledger_debits(api, probe, session_factory, items, mode):
    # the same items, estimated then reported: the debit is the estimate, line by line
    if probe.wallet("prop") is None:
        probe.run(PurchaseCredits("prop", 10**12, "buy-prop"))
        # The examples report millions of tokens within the hour: this property is about prices, not limits.
        unlimited = {"hourly_tokens": None, "daily_tokens": None, "monthly_tokens": None}
        assert (
            api.put("/v1/accounts/prop", key=api.key("accounts:write"), json={"limits": unlimited}).status_code == 200
        )
    key = api.key("usage:write")
    estimate = api.post("/v1/estimate", key=key, json={"items": items, "mode": mode})
    assert estimate.status_code == 200, estimate.get_json()
    idempotency_key = f"prop-{probe.scalar('SELECT count(*) FROM usage_inbox')}"
    before = probe.available("prop")
    report = {"idempotency_key": idempotency_key, "account": "prop", "items": items, "mode": mode}
    assert api.post("/v1/usage", key=key, json=report).status_code == 202
    apply_partition(session_factory, partition_of("prop"))
    debited = before - probe.available("prop")
    body = estimate.get_json()
    assert f"{debited // 1000}.{debited % 1000:03d}" == body["credits"]
    status = usage_status(session_factory, idempotency_key)
    assert status is not None and status.status == "applied"
    if debited:
        metadata = entry_of(probe, idempotency_key).metadata
        assert [line["credits"] for line in metadata["breakdown"]] == [line["credits"] for line in body["lines"]]
        assert metadata["mode"] == mode


# ------------------------------------------------------------------------------------------ the CLI
@pytest.fixture
def billing(database_url: str, session_factory):
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("STRIPE_API_KEY", None)
    env.pop("BILLING_PRICING_FILE", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_cli.main", "pricing", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_cli_load_show_and_diff(billing, probe, tmp_path):
    future = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(catalog("cli-v2")))
    # load
    loaded = billing("load", str(path), "--effective-at", future.isoformat(), "--note", "gpt-4o up")
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded price version cli-v2" in loaded.stdout
    again = billing("load", str(path), "--effective-at", future.isoformat())
    assert again.returncode == 0 and "already loaded" in again.stdout
    assert probe.scalar("SELECT count(*) FROM price_versions") == 1
    # refusals: a past time, other content under the same id, an invalid file
    past = billing("load", str(path.with_name("v3.json")), "--effective-at", "2020-01-01T00:00:00Z")
    assert past.returncode == 1
    (tmp_path / "v3.json").write_text(json.dumps(catalog("cli-v3")))
    past = billing("load", str(tmp_path / "v3.json"), "--effective-at", "2020-01-01T00:00:00Z")
    assert past.returncode == 1 and "in the past" in past.stderr
    path.write_text(json.dumps(catalog("cli-v2", "7.00")))
    conflict = billing("load", str(path), "--effective-at", future.isoformat())
    assert conflict.returncode == 1 and "idempotency_conflict" in conflict.stderr
    bad = catalog("cli-bad")
    bad["llm_tokens"]["openai"]["gpt-4o"]["input_usd_per_1m"] = "-1"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    invalid = billing("load", str(tmp_path / "bad.json"), "--effective-at", future.isoformat())
    assert invalid.returncode == 1 and "llm_tokens.openai.gpt-4o.input_usd_per_1m" in invalid.stderr
    assert probe.scalar("SELECT count(*) FROM price_versions") == 1
    # show: now, and at the future time
    now = billing("show")
    assert now.returncode == 0, now.stderr
    assert f"price version {BASE.version} (file)" in now.stdout and "next: cli-v2" in now.stdout
    assert "$2.50 -> 2500" in now.stdout and "profile_my_data" in now.stdout
    later = json.loads(billing("show", "--at", (future + timedelta(seconds=1)).isoformat(), "--json").stdout)
    assert (later["version"], later["source"], later["note"]) == ("cli-v2", "database", "gpt-4o up")
    gpt4o = next(m for m in later["models"] if (m["provider"], m["model"]) == ("openai", "gpt-4o"))
    assert (gpt4o["input_usd_per_1m"], gpt4o["input_per_1m"]) == ("5.00", "5000")
    # diff: the version in effect against the next scheduled one
    diff = billing("diff")
    assert diff.returncode == 0, diff.stderr
    assert "~ llm_tokens.openai.gpt-4o.input_usd_per_1m: 2.50 -> 5.00" in diff.stdout
    assert "0 added, 0 removed, 1 changed" in diff.stdout
    named = billing("diff", "cli-v2", str(BASE.version))
    assert "5.00 -> 2.50" in named.stdout
    assert billing("diff", "nope").returncode == 1


def test_the_broker_path_keeps_a_key_mode_refusal_as_a_rejected_report(session_factory, probe):
    # billing.record_usage catches InvalidUsage: the key-mode refusal of one report is one, and is kept
    from billing_core.intake.usage_inbox import store_refused
    from billing_core.intake.usage_reports import InvalidUsage, UsageKeyModeNotAllowed, accept_reports

    report = {
        "idempotency_key": "own-t1",
        "account": "acme",
        "items": [{"type": "tier", "tier": "tier1a"}],
        "mode": "own",
    }
    with pytest.raises(UsageKeyModeNotAllowed) as err:
        accept_reports(report, BASE)
    assert isinstance(err.value, InvalidUsage)
    assert store_refused(session_factory, report, err.value.details["problems"], source="celery") == ["own-t1"]
    status = usage_status(session_factory, "own-t1")
    assert status is not None and status.status == "rejected" and "requires system credits" in (status.reason or "")
