"""Stripe's side of the catalog: the emulator's Products and Prices as the gateway uses them, ``billing stripe
sync-products`` (creates, is idempotent, replaces a Price whose amount changed, dry runs), and checkout
selling the stored Price (asserted on the emulator's own line item)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from billing_core.pricing.catalog import PriceTable
from billing_core.pricing.packages import find_package, sellable_packages
from billing_core.pricing.plans import PlanPrice, plan_prices
from billing_core.stripe.catalog_sync import plan_price_for, price_for, sync_packages, sync_plans
from billing_core.stripe.checkout import open_checkout
from billing_core.stripe.gateway import StripeGateway, StripeNotFound, StripeRejected
from stripe_emulator import run_in_thread

pytestmark = pytest.mark.integration

API_KEY = "sk_test_products"
REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE = PriceTable.default()


@pytest.fixture
def emulator_url() -> Iterator[str]:
    base, stop = run_in_thread()
    try:
        yield base
    finally:
        stop()


@pytest.fixture
def gateway(emulator_url: str) -> StripeGateway:
    return StripeGateway(API_KEY, api_base=emulator_url)


def catalog_rows(probe) -> list[tuple]:
    return [
        tuple(r)
        for r in probe.rows(
            "SELECT ref, stripe_product_id, stripe_price_id, unit_amount, currency, fingerprint, synced_at "
            "FROM stripe_catalog WHERE kind = 'package' ORDER BY ref"
        )
    ]


def plan_rows(probe) -> list[tuple]:
    return [
        tuple(r)
        for r in probe.rows(
            "SELECT ref, stripe_product_id, stripe_price_id, unit_amount, currency, fingerprint, synced_at "
            "FROM stripe_catalog WHERE kind = 'plan' ORDER BY ref"
        )
    ]


def line_item_price(gateway: StripeGateway, session_id: str) -> dict:
    (item,) = gateway.list_checkout_line_items(session_id)
    return item["price"]


# -- the emulator's Products and Prices -----------------------------------------------------------------------
def test_products_take_our_id_and_prices_move_their_lookup_key(gateway: StripeGateway):
    product = gateway.create_product(product_id="billing_package_x", name="X", metadata={"billing_package": "x"})
    assert (product["id"], product["object"], product["active"], product["name"]) == (
        "billing_package_x",
        "product",
        True,
        "X",
    )
    with pytest.raises(StripeRejected) as again:
        gateway.create_product(product_id="billing_package_x", name="X")
    assert again.value.code == "resource_already_exists"

    first = gateway.create_price(product="billing_package_x", unit_amount=1000, currency="usd", lookup_key="k")
    assert (first["object"], first["type"], first["unit_amount"], first["lookup_key"]) == (
        "price",
        "one_time",
        1000,
        "k",
    )
    # a lookup key belongs to one Price: taking it needs transfer_lookup_key
    with pytest.raises(StripeRejected):
        gateway.create_price(product="billing_package_x", unit_amount=1200, currency="usd", lookup_key="k")
    second = gateway.create_price(
        product="billing_package_x", unit_amount=1200, currency="usd", lookup_key="k", transfer_lookup_key=True
    )
    assert gateway.retrieve_price(first["id"])["lookup_key"] is None
    assert [p["id"] for p in gateway.list_prices(lookup_keys=["k"])] == [second["id"]]
    assert {p["id"] for p in gateway.list_prices(product="billing_package_x")} == {first["id"], second["id"]}

    # a Price's amount never changes; deactivating it does
    with pytest.raises(StripeRejected):
        gateway.update_price(first["id"], unit_amount=5)
    gateway.update_price(first["id"], active=False)
    assert [p["id"] for p in gateway.list_prices(product="billing_package_x", active=True)] == [second["id"]]
    assert [p["id"] for p in gateway.list_prices(product="billing_package_x", active=False)] == [first["id"]]
    with pytest.raises(StripeNotFound):
        gateway.retrieve_product("billing_package_nope")


def test_checkout_on_a_stored_price_takes_its_amount_and_refuses_an_inactive_one(gateway: StripeGateway):
    gateway.create_product(product_id="billing_package_y", name="Y")
    price = gateway.create_price(product="billing_package_y", unit_amount=3000, currency="brl")
    session = gateway.create_checkout_session(
        account="acme",
        package_id="y",
        package_name="Y",
        credits="100",
        unit_amount=1,  # ignored: the Price decides
        currency="usd",
        success_url="https://app.example/ok",
        cancel_url="https://app.example/no",
        price=price["id"],
        payment_method_types=["card", "pix"],
    )
    assert (session["amount_total"], session["currency"], session["payment_method_types"]) == (
        3000,
        "brl",
        ["card", "pix"],
    )
    assert line_item_price(gateway, session["id"])["id"] == price["id"]

    gateway.update_price(price["id"], active=False)
    with pytest.raises(StripeRejected) as inactive:
        gateway.create_checkout_session(
            account="acme",
            package_id="y",
            package_name="Y",
            credits="100",
            unit_amount=1,
            currency="brl",
            success_url="https://app.example/ok",
            cancel_url="https://app.example/no",
            price=price["id"],
        )
    assert inactive.value.param == "line_items[0][price]"


def test_pix_is_refused_for_a_currency_other_than_brl(gateway: StripeGateway):
    with pytest.raises(StripeRejected) as refused:
        gateway.create_checkout_session(
            account="acme",
            package_id="starter",
            package_name="Starter",
            credits="10000",
            unit_amount=1000,
            currency="usd",
            success_url="https://app.example/ok",
            cancel_url="https://app.example/no",
            payment_method_types=["card", "pix"],
        )
    assert refused.value.param == "payment_method_types"


def test_a_pix_payment_completes_unpaid_then_settles_with_stripes_order_of_events(gateway, emulator_url):
    session = gateway.create_checkout_session(
        account="acme",
        package_id="starter_brl",
        package_name="Starter",
        credits="100",
        unit_amount=3000,
        currency="brl",
        success_url="https://app.example/ok",
        cancel_url="https://app.example/no",
        payment_method_types=["card", "pix"],
    )
    paid = requests.post(f"{emulator_url}/_emulator/checkout/sessions/{session['id']}/pay", json={"async": True})
    assert (paid.json()["status"], paid.json()["payment_status"]) == ("complete", "unpaid")
    payment_intent = gateway.retrieve_payment_intent(gateway.retrieve_checkout_session(session["id"])["payment_intent"])
    assert (payment_intent["status"], payment_intent["payment_method_types"]) == ("processing", ["pix"])
    charge = gateway.retrieve_charge(payment_intent["latest_charge"])
    assert (charge["status"], charge["payment_method_details"]["type"]) == ("pending", "pix")
    settled = requests.post(f"{emulator_url}/_emulator/checkout/sessions/{session['id']}/async_succeed", json={})
    assert settled.json()["payment_status"] == "paid"

    events = requests.get(
        f"{emulator_url}/v1/events", params={"limit": 100}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ).json()["data"]
    types = [e["type"] for e in reversed(events) if not e["type"].startswith("customer.")]
    assert types == [
        "payment_intent.processing",
        "charge.pending",
        "checkout.session.completed",
        "payment_intent.succeeded",
        "charge.succeeded",
        "checkout.session.async_payment_succeeded",
    ]


# -- sync-products ------------------------------------------------------------------------------------------
def test_sync_creates_a_product_and_price_per_package_and_stores_their_ids(session_factory, probe, gateway):
    packages = sellable_packages(TABLE)
    results = sync_packages(session_factory, gateway, packages)
    assert [(r.package, r.action) for r in results] == [(p.id, "created") for p in packages]

    rows = {r[0]: r for r in catalog_rows(probe)}
    assert set(rows) == {p.id for p in packages}
    for package in packages:
        _, product_id, price_id, unit_amount, currency, _, _ = rows[package.id]
        assert product_id == f"billing_package_{package.id}"
        price = gateway.retrieve_price(price_id)
        assert (price["unit_amount"], price["currency"], price["product"], price["active"]) == (
            package.unit_amount,
            package.currency,
            product_id,
            True,
        )
        assert (unit_amount, currency) == (package.unit_amount, package.currency)
        assert price["lookup_key"] == f"billing_package_{package.id}"
        product = gateway.retrieve_product(product_id)
        assert product["name"] == package.name and product["default_price"] == price_id
        assert product["metadata"]["billing_package"] == package.id


def test_sync_twice_changes_nothing(session_factory, probe, gateway, emulator_url):
    packages = sellable_packages(TABLE)
    sync_packages(session_factory, gateway, packages)
    rows = catalog_rows(probe)
    events_before = _event_count(emulator_url)

    again = sync_packages(session_factory, gateway, packages)

    assert {r.action for r in again} == {"unchanged"}
    assert catalog_rows(probe) == rows  # not even synced_at moved
    assert _event_count(emulator_url) == events_before  # nothing created or updated in Stripe


def test_a_changed_amount_gets_a_new_price_and_the_old_one_is_deactivated(session_factory, probe, gateway):
    starter = find_package(TABLE, "starter")
    sync_packages(session_factory, gateway, [starter])
    (old_row,) = catalog_rows(probe)
    old_price = old_row[2]

    dearer = replace(starter, unit_amount=1200)
    (result,) = sync_packages(session_factory, gateway, [dearer])

    assert result.action == "replaced"
    (row,) = catalog_rows(probe)
    new_price = row[2]
    assert new_price != old_price and row[3] == 1200
    assert gateway.retrieve_price(old_price)["active"] is False
    assert gateway.retrieve_price(old_price)["lookup_key"] is None
    fresh = gateway.retrieve_price(new_price)
    assert (fresh["active"], fresh["unit_amount"], fresh["lookup_key"]) == (True, 1200, "billing_package_starter")
    assert gateway.retrieve_product("billing_package_starter")["default_price"] == new_price
    # and the stored Price sells the package only while the amounts agree
    with session_factory() as session:
        assert price_for(session, dearer) == new_price
        assert price_for(session, starter) is None


def test_a_dry_run_changes_nothing(session_factory, probe, gateway, emulator_url):
    results = sync_packages(session_factory, gateway, sellable_packages(TABLE), dry_run=True)
    assert {r.action for r in results} == {"created"}
    assert "would be created" in results[0].line(dry_run=True)
    assert catalog_rows(probe) == []
    assert _event_count(emulator_url) == 0


def test_a_pinned_price_is_left_alone_and_wins_at_checkout(session_factory, gateway):
    pinned = replace(find_package(TABLE, "pro"), stripe_price="price_pinned123")
    (result,) = sync_packages(session_factory, gateway, [pinned])
    assert (result.action, result.price) == ("pinned", "price_pinned123")
    with session_factory() as session:
        assert price_for(session, pinned) == "price_pinned123"


def test_the_command_syncs_then_reports_nothing_to_do(database_url, session_factory, probe, emulator_url):
    env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": emulator_url}

    def billing(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_cli.main", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = billing("stripe", "sync-products", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "starter: would be created billing_package_starter" in dry.stdout
    assert catalog_rows(probe) == []

    first = billing("stripe", "sync-products")
    assert first.returncode == 0, first.stderr
    plans = plan_prices(TABLE.spec.plans)
    assert first.stdout.count(": created ") == len(TABLE.packages) + len(plans)
    assert "plan pro:month: created billing_plan_pro price_" in first.stdout
    assert len(catalog_rows(probe)) == len(TABLE.packages)
    assert len(plan_rows(probe)) == len(plans)

    second = billing("stripe", "sync-products")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count(": unchanged ") == len(TABLE.packages) + len(plans)
    assert f"{len(TABLE.packages)} package(s), {len(plans)} plan price(s), 0 changed" in second.stderr


# -- checkout on the stored Price ------------------------------------------------------------------------------
def _checkout(session_factory, gateway, package_id: str):
    return open_checkout(
        session_factory,
        gateway,
        account="acme",
        package=find_package(TABLE, package_id),
        success_url="https://app.example/ok",
        cancel_url="https://app.example/no",
    )


def test_checkout_sells_the_stored_price_after_a_sync(session_factory, probe, gateway):
    sync_packages(session_factory, gateway, sellable_packages(TABLE))
    stored = dict(probe.rows("SELECT ref, stripe_price_id FROM stripe_catalog"))

    session = _checkout(session_factory, gateway, "professional_brl")

    price = line_item_price(gateway, session.id)
    assert price["id"] == stored["professional_brl"]
    full = gateway.retrieve_checkout_session(session.id)
    assert (full["amount_total"], full["currency"], full["payment_method_types"]) == (20000, "brl", ["card", "pix"])
    # the credits the paid session will credit: the package's and its bonus
    assert full["metadata"] == {
        "account": "acme",
        "package": "professional_brl",
        "credits": "525.000",
        "bonus_credits": "25.000",
    }


def test_checkout_before_any_sync_sells_the_amount_inline(session_factory, gateway):
    session = _checkout(session_factory, gateway, "starter")
    price = line_item_price(gateway, session.id)
    # an inline price_data Price: made for this session and archived at once, stored nowhere
    assert (price["unit_amount"], price["currency"], price["active"]) == (1000, "usd", False)


def test_a_stored_price_stripe_no_longer_knows_falls_back_to_inline(session_factory, gateway):
    with session_factory() as s, s.begin():
        s.execute(
            text(
                "INSERT INTO stripe_catalog (kind, ref, stripe_product_id, stripe_price_id, unit_amount, currency, "
                "fingerprint) VALUES ('package', 'starter', 'billing_package_starter', 'price_gone', 1000, 'usd', 'x')"
            )
        )
    session = _checkout(session_factory, gateway, "starter")
    price = line_item_price(gateway, session.id)
    assert price["id"] != "price_gone" and price["unit_amount"] == 1000


def _event_count(emulator_url: str) -> int:
    response = requests.get(
        f"{emulator_url}/v1/events", params={"limit": 100}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )
    response.raise_for_status()
    return len(response.json()["data"])


# -- sync-products: plans ---------------------------------------------------------------------------------------
PLANS = plan_prices(TABLE.spec.plans)


def _plan(plan: str, interval: str) -> PlanPrice:
    return next(p for p in PLANS if (p.plan, p.interval) == (plan, interval))


def test_sync_creates_a_product_per_plan_and_a_recurring_price_per_interval_with_the_allowance(
    session_factory, probe, gateway
):
    results = sync_plans(session_factory, gateway, PLANS)

    assert [(r.package, r.action) for r in results] == [
        ("pro:month", "created"),
        ("pro:year", "created"),
        ("business:month", "created"),
        ("business:year", "created"),
    ]
    rows = {r[0]: r for r in plan_rows(probe)}
    assert set(rows) == {"pro:month", "pro:year", "business:month", "business:year"}
    # seed 002: Pro $29/month, $290/year; Business $149/month, $1,490/year
    amounts = {ref: (r[3], r[4]) for ref, r in rows.items()}
    assert amounts == {
        "pro:month": (2900, "usd"),
        "pro:year": (29000, "usd"),
        "business:month": (14900, "usd"),
        "business:year": (149000, "usd"),
    }
    pro_month = gateway.retrieve_price(rows["pro:month"][2])
    assert (pro_month["type"], pro_month["recurring"]["interval"], pro_month["recurring"]["interval_count"]) == (
        "recurring",
        "month",
        1,
    )
    assert (pro_month["product"], pro_month["lookup_key"], pro_month["active"]) == (
        "billing_plan_pro",
        "billing_plan_pro_month",
        True,
    )
    assert pro_month["metadata"] == {
        "billing_plan": "pro",
        "interval": "month",
        "allowance_mc": "30000000",
        "trial_allowance_mc": "5000000",
        "rollover_cap_mc": "30000000",
    }
    business_year = gateway.retrieve_price(rows["business:year"][2])
    assert business_year["recurring"]["interval"] == "year" and business_year["unit_amount"] == 149000
    # the allowance is per month of the plan, a yearly one too
    assert business_year["metadata"] == {
        "billing_plan": "business",
        "interval": "year",
        "allowance_mc": "160000000",
        "trial_allowance_mc": "20000000",
        "rollover_cap_mc": "160000000",
    }
    product = gateway.retrieve_product("billing_plan_pro")
    assert (product["name"], product["metadata"], product["default_price"]) == (
        "Pro",
        {"billing_plan": "pro"},
        rows["pro:month"][2],
    )
    with session_factory() as session:
        assert plan_price_for(session, _plan("pro", "year")) == rows["pro:year"][2]


def test_sync_plans_twice_changes_nothing(session_factory, probe, gateway, emulator_url):
    sync_plans(session_factory, gateway, PLANS)
    rows = plan_rows(probe)
    events_before = _event_count(emulator_url)

    again = sync_plans(session_factory, gateway, PLANS)

    assert {r.action for r in again} == {"unchanged"}
    assert plan_rows(probe) == rows
    assert _event_count(emulator_url) == events_before


def test_a_changed_plan_amount_gets_a_new_recurring_price_and_the_old_one_is_deactivated(
    session_factory, probe, gateway
):
    pro_month = _plan("pro", "month")
    sync_plans(session_factory, gateway, [pro_month])
    ((_, _, old_price, *_),) = plan_rows(probe)

    dearer = replace(pro_month, unit_amount=3900)
    (result,) = sync_plans(session_factory, gateway, [dearer])

    assert result.action == "replaced"
    ((ref, _, new_price, amount, *_),) = plan_rows(probe)
    assert (ref, amount) == ("pro:month", 3900) and new_price != old_price
    old = gateway.retrieve_price(old_price)
    assert (old["active"], old["lookup_key"]) == (False, None)
    fresh = gateway.retrieve_price(new_price)
    assert (fresh["active"], fresh["unit_amount"], fresh["lookup_key"], fresh["recurring"]["interval"]) == (
        True,
        3900,
        "billing_plan_pro_month",
        "month",
    )
    assert fresh["metadata"]["billing_plan"] == "pro"
    with session_factory() as session:
        assert plan_price_for(session, dearer) == new_price
        assert plan_price_for(session, pro_month) is None  # the old amount is not sold any more


def test_a_changed_allowance_updates_the_price_metadata_in_place(session_factory, probe, gateway, emulator_url):
    pro_month = _plan("pro", "month")
    sync_plans(session_factory, gateway, [pro_month])
    ((_, _, price_id, _, _, old_fingerprint, _),) = plan_rows(probe)

    richer = replace(pro_month, allowance_mc=40_000_000, rollover_cap_mc=0)
    (result,) = sync_plans(session_factory, gateway, [richer])

    assert (result.action, result.price, result.notes) == ("updated", price_id, ("price metadata",))
    shown = gateway.retrieve_price(price_id)
    assert (shown["active"], shown["metadata"]["allowance_mc"], shown["metadata"]["rollover_cap_mc"]) == (
        True,
        "40000000",
        "0",
    )
    ((_, _, same_price, _, _, fingerprint, _),) = plan_rows(probe)
    assert same_price == price_id and fingerprint != old_fingerprint
    events = _event_count(emulator_url)
    assert {r.action for r in sync_plans(session_factory, gateway, [richer])} == {"unchanged"}
    assert _event_count(emulator_url) == events


def test_a_pinned_plan_price_is_left_alone(session_factory, probe, gateway, emulator_url):
    pinned = replace(_plan("business", "month"), stripe_price="price_pinnedplan1")
    (result,) = sync_plans(session_factory, gateway, [pinned])
    assert (result.package, result.action, result.price) == ("business:month", "pinned", "price_pinnedplan1")
    assert plan_rows(probe) == [] and _event_count(emulator_url) == 0
    with session_factory() as session:
        assert plan_price_for(session, pinned) == "price_pinnedplan1"


def test_a_plan_dry_run_changes_nothing(session_factory, probe, gateway, emulator_url):
    results = sync_plans(session_factory, gateway, PLANS, dry_run=True)
    assert {r.action for r in results} == {"created"}
    assert plan_rows(probe) == [] and _event_count(emulator_url) == 0
