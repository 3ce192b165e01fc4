"""A year of a monthly plan, driven by the emulator's test clock and freezegun: every event Stripe sends is
handled as the worker handles it (stored, Stripe read back, applied) at the moment Stripe sent it, and what
the account can spend after every step matches the table below, worked out by hand.

The plan Prices carry the terms ``billing stripe sync-products`` writes in their metadata: Pro $29 a month with
1,000 credits and a rollover cap of 500; Business $99 with 3,000 credits and a cap of 1,500. The emulator runs
in its own process, so that freezegun moves only the pipeline's clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import requests
from freezegun import freeze_time
from sqlalchemy import text

from billing_cli.throwaway import free_port
from billing_core.db.config import set_setting
from billing_core.db.engine import raw_read
from billing_core.intake.stripe_events import check_event, process_event
from billing_core.ledger.balances import spendable_mc
from billing_core.ledger.checks import check_ledger
from billing_core.ledger.commands import DebitUsage, ExpireGrants
from billing_core.ledger.handlers import execute
from billing_core.stripe import subscriptions
from billing_core.stripe.gateway import StripeGateway
from billing_core.units import parse_credits
from tests.integration.conftest import event_inbox_for

pytestmark = pytest.mark.integration

API_KEY = "sk_test_year"
ACCOUNT = "year_1"
PRO = {"billing_plan": "pro", "interval": "month", "allowance_mc": "1000000", "rollover_cap_mc": "500000"}
BUSINESS = {"billing_plan": "business", "interval": "month", "allowance_mc": "3000000", "rollover_cap_mc": "1500000"}


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                requests.get(f"{url}/_emulator/webhook_endpoints", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                subprocess.run(["sleep", "0.05"], check=True)  # not a sync: waiting for a port to open
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Year:
    """The pipeline's side: deliver what Stripe sent, spend, sweep, read what can be spent."""

    def __init__(self, url: str, session_factory: Any, account: str = ACCOUNT) -> None:
        self.url = url
        self.account = account
        self.gateway = StripeGateway(API_KEY, api_base=url)
        self.session_factory = session_factory
        self.engine = session_factory.kw["bind"]
        self.seen: set[str] = set()
        self.spent = 0
        self.control("reset")  # one emulator per module: each test starts from an empty Stripe

    def price(self, amount: int, metadata: dict[str, str]) -> str:
        response = requests.post(
            f"{self.url}/v1/prices",
            headers={"Authorization": f"Bearer {API_KEY}"},
            data={
                "currency": "usd",
                "unit_amount": amount,
                "recurring[interval]": "month",
                "product_data[name]": metadata["billing_plan"],
                **{f"metadata[{k}]": v for k, v in metadata.items()},
            },
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def control(self, path: str, **body: Any) -> Any:
        response = requests.post(f"{self.url}/_emulator/{path}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def deliver(self) -> list[str]:
        """Every event not handled yet, oldest first, each at the moment Stripe sent it; their types."""
        events = [e for e in reversed(self.events()) if e["id"] not in self.seen]
        for event in events:
            self.seen.add(event["id"])
            with freeze_time(datetime.fromtimestamp(event["created"], UTC)):
                event_inbox_for(self.session_factory).store(check_event(event), json.dumps(event).encode())
                status = process_event(self.session_factory, self.gateway, event["id"])
            assert status in ("processed", "ignored"), (event["type"], status)
        return [e["type"] for e in events]

    def events(self) -> list[dict[str, Any]]:
        """Every event, newest first, as Stripe's JSON (what a webhook carries)."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            response = requests.get(
                f"{self.url}/v1/events", params=params, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
            )
            page = response.json()
            found += page["data"]
            if not page["has_more"]:
                return found
            params["starting_after"] = page["data"][-1]["id"]

    def advance(self, clock: dict[str, Any], moment: datetime) -> list[str]:
        self.control(f"test_clocks/{clock['id']}/advance", frozen_time=int(moment.timestamp()))
        return self.deliver()

    def spend(self, credits: str, moment: datetime) -> None:
        self.spent += 1
        key = f"{self.account}-{self.spent}"
        cmd = DebitUsage(account=self.account, amount_mc=parse_credits(credits), idempotency_key=key)
        execute(self.session_factory, cmd, now=moment)

    def sweep(self, moment: datetime) -> None:
        execute(self.session_factory, ExpireGrants(now=moment))

    def spendable(self, moment: datetime) -> Decimal:
        with raw_read(self.engine) as conn:
            return Decimal(spendable_mc(conn, self.account, moment)) / 1000

    def subscription(self) -> Any:
        with self.session_factory() as session:
            return session.execute(
                text(
                    "SELECT s.plan, s.status, s.cancel_at_period_end, s.next_allowance_at FROM subscriptions s "
                    "JOIN wallets w ON w.id = s.wallet_id WHERE w.account = :a"
                ),
                {"a": self.account},
            ).one()

    def subscribe(self, price: str, start: datetime, trial_days: int | None = None) -> tuple[Any, Any, str]:
        """A customer on a new test clock at ``start``, subscribed through a paid Checkout Session, its events
        handled: (the clock, the customer, the subscription id)."""
        clock = self.gateway.create_test_clock(int(start.timestamp()), name=self.account)
        customer = self.gateway.create_customer(
            account=self.account, email=f"{self.account}@example.com", test_clock=clock["id"]
        )
        meta = {"account": self.account}
        session = self.gateway.create_subscription_checkout_session(
            customer=customer["id"],
            price=price,
            success_url="https://app.example/ok",
            cancel_url="https://app.example/cancel",
            client_reference_id=self.account,
            metadata=meta,
            subscription_metadata=meta,
            trial_period_days=trial_days,
        )
        self.control(f"checkout/sessions/{session['id']}/pay")
        return clock, customer, str(self.gateway.retrieve_checkout_session(session["id"])["subscription"])

    def wallet_plan(self) -> str | None:
        with self.session_factory() as session:
            return session.execute(text("SELECT plan FROM wallets WHERE account = :a"), {"a": self.account}).scalar()


def failed_invoice(session_factory: Any) -> str:
    with session_factory() as session:
        return str(session.execute(text("SELECT id FROM invoices WHERE status = 'open'")).scalar_one())


def test_a_year_of_a_monthly_plan_matches_the_hand_written_table(stripe_url, session_factory):
    year = Year(stripe_url, session_factory)
    pro, business = year.price(2900, PRO), year.price(9900, BUSINESS)
    clock, customer, sub_id = year.subscribe(pro, at(2026, 1, 1))
    year.deliver()

    def step(label: str, moment: datetime, expected: str) -> None:
        year.sweep(moment)  # as beat does
        assert year.spendable(moment) == Decimal(expected), label

    # (what happens, when, what the account can spend afterwards): worked out by hand in the comments
    step("January: Pro's 1,000", at(2026, 1, 1, 1), "1000")
    year.spend("300", at(2026, 1, 15))
    step("spent 300", at(2026, 1, 15, 1), "700")
    year.advance(clock, at(2026, 2, 1))
    step("renewal 1: 500 of 700 roll over (the cap), 200 expire, + 1,000", at(2026, 2, 1, 1), "1500")
    with session_factory() as session:
        moves = session.execute(
            text(
                "SELECT e.kind, sum(p.amount_mc) FROM ledger_entries e JOIN postings p ON p.entry_id = e.id "
                "WHERE e.kind IN ('rollover', 'grant_expiry') AND p.grant_id IS NOT NULL AND p.amount_mc < 0 "
                "GROUP BY e.id, e.kind ORDER BY e.id"
            )
        ).all()
    assert sorted((kind, int(amount)) for kind, amount in moves) == [("grant_expiry", -200_000), ("rollover", -500_000)]
    year.spend("1400", at(2026, 2, 10))  # the rolled-over 500 first (same expiry, older), then 900
    year.advance(clock, at(2026, 3, 1))
    step("renewal 2: 100 roll over, + 1,000", at(2026, 3, 1, 1), "1100")
    year.spend("600", at(2026, 3, 20))
    year.control(f"customers/{customer['id']}/card", outcome="card_declined")
    types = year.advance(clock, at(2026, 4, 1))
    assert "invoice.payment_failed" in types
    assert year.subscription().status == "past_due"
    with session_factory() as session:
        failed = session.execute(
            text(
                "SELECT status, attempt_count, next_payment_attempt, last_payment_error "
                "FROM invoices WHERE status = 'open'"
            )
        ).one()
    assert (failed.attempt_count, failed.last_payment_error) == (1, "card_declined")
    assert failed.next_payment_attempt == at(2026, 4, 4)  # the first retry, three days on
    with session_factory() as session:
        notices = session.execute(
            text(
                "SELECT kind, dedupe_key, payload->>'code' FROM notifications WHERE channel = 'email' "
                "AND kind NOT IN ('low_balance', 'balance_depleted') ORDER BY id"
            )
        ).all()
    assert [tuple(n) for n in notices] == [
        ("renewal_failed", f"renewal_failed:{failed_invoice(session_factory)}:1", "card_declined")
    ]
    step("renewal 3 declined: March's 500 ended with the period, nothing granted", at(2026, 4, 1, 4), "0")
    year.control(f"customers/{customer['id']}/card", outcome="succeed")
    types = year.advance(clock, at(2026, 4, 4, 1))  # Smart Retries: 3 days later
    assert "invoice.paid" in types and year.subscription().status == "active"
    step("renewal 3 paid on retry: + 1,000 (nothing left to roll over)", at(2026, 4, 4, 2), "1000")
    year.spend("250", at(2026, 4, 20))
    year.advance(clock, at(2026, 5, 1))
    step("renewal 4: 500 of 750 roll over, + 1,000", at(2026, 5, 1, 1), "1500")

    year.advance(clock, at(2026, 5, 16))
    item = year.gateway.retrieve_subscription(sub_id)["items"]["data"][0]["id"]
    year.gateway.update_subscription(
        sub_id, items=[{"id": item, "price": business}], proration_behavior="always_invoice"
    )
    year.deliver()
    # 16 of May's 31 days left: (3,000 - 1,000) x 16 / 31 = 1,032.258 (rounded half up at the millicredit)
    step("upgrade to Business mid-May: + the prorated 1,032.258", at(2026, 5, 16, 1), "2532.258")
    assert (year.subscription().plan, year.wallet_plan()) == ("business", "business")
    year.spend("2000", at(2026, 5, 20))
    year.advance(clock, at(2026, 6, 1))
    step("renewal 5 (Business): 532.258 roll over, + 3,000", at(2026, 6, 1, 1), "3532.258")
    year.advance(clock, at(2026, 7, 1))
    step("renewal 6: 1,500 roll over (the cap), + 3,000", at(2026, 7, 1, 1), "4500")
    year.spend("4000", at(2026, 7, 15))
    year.advance(clock, at(2026, 8, 1))
    step("renewal 7: 500 roll over, + 3,000", at(2026, 8, 1, 1), "3500")
    for renewal, month in enumerate(range(9, 13), start=8):
        year.advance(clock, at(2026, month, 1))
        step(f"renewal {renewal}: 1,500 roll over, + 3,000", at(2026, month, 1, 1), "4500")
    year.advance(clock, at(2027, 1, 1))
    step("renewal 12: 1,500 roll over, + 3,000", at(2027, 1, 1, 1), "4500")

    year.gateway.update_subscription(sub_id, cancel_at_period_end=True)
    year.deliver()
    assert year.subscription().cancel_at_period_end
    step("cancelled at period end: January's credits stay until then", at(2027, 1, 20), "4500")
    types = year.advance(clock, at(2027, 2, 1))
    assert "customer.subscription.deleted" in types and "invoice.created" not in types
    step("the period ended: nothing renews, everything expires", at(2027, 2, 1, 4), "0")
    assert year.subscription().status == "canceled" and year.wallet_plan() is None

    with session_factory() as session:
        invoices = session.execute(
            text("SELECT billing_reason, status, count(*) FROM invoices GROUP BY 1, 2 ORDER BY 1, 2")
        ).all()
        assert [tuple(r) for r in invoices] == [
            ("subscription_create", "paid", 1),
            ("subscription_cycle", "paid", 12),
            ("subscription_update", "paid", 1),
        ]
        grants = session.execute(
            text("SELECT count(*) FROM ledger_entries WHERE kind = 'grant' AND idempotency_key LIKE 'invoice:%'")
        ).scalar()
        assert grants == 14  # one per paid invoice, however often its events came
    report = check_ledger(year.engine)
    assert report.ok, [str(f) for f in report.findings]


def test_a_trial_grants_the_trial_allowance_until_the_trial_ends(stripe_url, session_factory):
    year = Year(stripe_url, session_factory, "trial_1")
    pro = year.price(2900, {**PRO, "trial_allowance_mc": "200000"})
    clock, _, _ = year.subscribe(pro, at(2026, 3, 1), trial_days=14)
    year.deliver()
    assert year.subscription().status == "trialing"
    assert year.spendable(at(2026, 3, 1, 1)) == Decimal("200")
    assert year.spendable(at(2026, 3, 15)) == Decimal("0")  # the trial's credits end with the trial
    types = year.advance(clock, at(2026, 3, 15, 1))
    assert "customer.subscription.trial_will_end" in types and "invoice.paid" in types
    with session_factory() as session:
        notices = session.execute(text("SELECT kind FROM notifications WHERE channel = 'email'")).scalars().all()
    assert notices == ["trial_ending"]  # once, though the subscription's other events tell the same trial
    # the trial's 200 roll over (cap 500) into the first paid month with its 1,000
    year.sweep(at(2026, 3, 15, 2))
    assert year.spendable(at(2026, 3, 15, 2)) == Decimal("1200")
    assert year.subscription().status == "active"


def test_a_yearly_plan_grants_a_month_at_a_time_on_beat(stripe_url, session_factory):
    year = Year(stripe_url, session_factory, "yearly_1")
    response = requests.post(
        f"{stripe_url}/v1/prices",
        headers={"Authorization": f"Bearer {API_KEY}"},
        data={
            "currency": "usd",
            "unit_amount": 29000,
            "recurring[interval]": "year",
            "product_data[name]": "pro yearly",
            **{f"metadata[{k}]": v for k, v in {**PRO, "interval": "year"}.items()},
        },
        timeout=10,
    )
    yearly = response.json()["id"]
    year.subscribe(yearly, at(2026, 1, 31))
    year.deliver()
    assert year.spendable(at(2026, 2, 1)) == Decimal("1000")  # one month, not twelve
    assert year.subscription().next_allowance_at == at(2026, 2, 28)  # Jan 31 + 1 month, clamped
    year.spend("800", at(2026, 2, 10))
    assert subscriptions.grant_due_allowances(session_factory, now=at(2026, 2, 27)) == 0  # not begun yet
    assert subscriptions.grant_due_allowances(session_factory, now=at(2026, 2, 28, 0)) == 1
    assert subscriptions.grant_due_allowances(session_factory, now=at(2026, 2, 28, 0)) == 0  # once
    assert year.spendable(at(2026, 2, 28, 1)) == Decimal("1200")  # 200 rolled over + 1,000
    assert year.subscription().next_allowance_at == at(2026, 3, 31)  # anchored on the 31st again


def test_invoice_events_in_any_order_and_twice_grant_once(stripe_url, session_factory):
    year = Year(stripe_url, session_factory, "shuffled_1")
    pro = year.price(2900, PRO)
    year.subscribe(pro, at(2026, 6, 1))
    events = [e for e in year.events() if e["id"] not in year.seen]
    invoice_paid = [e for e in events if e["type"] == "invoice.paid"]
    # invoice.paid first (before the subscription and the customer were ever seen), then everything twice
    for event in invoice_paid + events + events:
        with freeze_time(at(2026, 6, 1, 1)):
            event_inbox_for(session_factory).store(check_event(event), json.dumps(event).encode())
            status = process_event(session_factory, year.gateway, event["id"])
        assert status in ("processed", "ignored"), (event["type"], status)
    assert year.spendable(at(2026, 6, 1, 1)) == Decimal("1000")
    with session_factory() as session:
        assert session.execute(text("SELECT count(*) FROM invoices")).scalar() == 1
        assert session.execute(text("SELECT count(*) FROM ledger_entries WHERE kind = 'grant'")).scalar() == 1


def test_a_downgrade_takes_effect_at_renewal(stripe_url, session_factory):
    year = Year(stripe_url, session_factory, "down_1")
    pro, business = year.price(2900, PRO), year.price(9900, BUSINESS)
    clock, _, sub_id = year.subscribe(business, at(2026, 8, 1))
    year.deliver()
    assert year.spendable(at(2026, 8, 1, 1)) == Decimal("3000")
    year.advance(clock, at(2026, 8, 10))
    item = year.gateway.retrieve_subscription(sub_id)["items"]["data"][0]["id"]
    year.gateway.update_subscription(sub_id, items=[{"id": item, "price": pro}], proration_behavior="none")
    year.deliver()
    # nothing invoiced, nothing taken: the month paid for Business stays Business
    assert year.spendable(at(2026, 8, 10, 1)) == Decimal("3000") and year.wallet_plan() == "business"
    year.spend("2000", at(2026, 8, 20))
    year.advance(clock, at(2026, 9, 1))
    year.sweep(at(2026, 9, 1, 1))
    # the renewal bills Pro: its 1,000, and of Business's 1,000 left Pro's cap of 500 rolls over
    assert year.spendable(at(2026, 9, 1, 1)) == Decimal("1500")
    assert (year.subscription().plan, year.wallet_plan()) == ("pro", "pro")


def test_a_yearly_plan_can_grant_its_twelve_months_up_front(stripe_url, session_factory):
    with session_factory() as session, session.begin():
        set_setting(session, "plan_yearly_grants", "upfront", now=at(2026, 1, 1))
    year = Year(stripe_url, session_factory, "upfront_1")
    response = requests.post(
        f"{stripe_url}/v1/prices",
        headers={"Authorization": f"Bearer {API_KEY}"},
        data={
            "currency": "usd",
            "unit_amount": 29000,
            "recurring[interval]": "year",
            "product_data[name]": "pro yearly",
            **{f"metadata[{k}]": v for k, v in {**PRO, "interval": "year"}.items()},
        },
        timeout=10,
    )
    year.subscribe(response.json()["id"], at(2026, 1, 1))
    year.deliver()
    assert year.spendable(at(2026, 1, 1, 1)) == Decimal("12000")
    assert year.subscription().next_allowance_at is None  # nothing left for the beat
    assert year.spendable(at(2027, 1, 1)) == Decimal("0")  # the year's credits end with the year
