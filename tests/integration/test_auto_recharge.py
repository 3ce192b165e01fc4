"""Auto-recharge on real PostgreSQL against the Stripe emulator over HTTP (``billing_core.stripe.auto_recharge``):
a crossing charges the saved card once, even under 32 concurrent debits; the PaymentIntent's events credit
once; failures stop it until the settings are saved again."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from sqlalchemy import text

from billing_core.accounts.profile import update_account
from billing_core.ledger.commands import DebitUsage, PurchaseCredits
from billing_core.pricing.packages import find_package
from billing_core.stripe import auto_recharge
from billing_core.stripe.auto_recharge import ARMED, CHARGED, FAILED, PENDING
from tests.integration import paying_stack as _paying
from tests.integration.paying_stack import API_KEY, PayingStack
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

paying_stack, shop = _paying.paying_stack, _paying.shop

STARTER_MC = 10_000_000  # the starter package: 10,000 credits for 1,000 cents
CREDIT = 1_000


@pytest.fixture
def stack(shop: tuple[PayingStack, Any]) -> PayingStack:
    return shop[0]


def table(stack: PayingStack) -> Any:
    return stack.app.extensions["billing"].prices.current()


def customer_with_card(stack: PayingStack, session_factory: Any, account: str, *, card: bool = True) -> str:
    """A Stripe customer linked to ``account``; with ``card``, a saved default card (the emulator saves one when
    a subscription Checkout is paid: the way a card is on file for off-session charges)."""
    customer = stack.gateway.create_customer(account=account, email=f"{account}@example.com")
    if card:
        price = requests.post(
            f"{stack.emulator_url}/v1/prices",
            data={"currency": "usd", "unit_amount": 500, "recurring[interval]": "month", "product_data[name]": "Plan"},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        ).json()
        session = stack.gateway.create_subscription_checkout_session(
            customer=customer["id"],
            price=price["id"],
            success_url="https://app.example/ok",
            cancel_url="https://app.example/cancel",
        )
        stack.control(f"checkout/sessions/{session['id']}/pay")
    update_account(session_factory, account, stripe_customer_id=customer["id"])
    return str(customer["id"])


def recharge_intents(stack: PayingStack, customer: str | None = None) -> list[dict[str, Any]]:
    """The emulator's auto-recharge PaymentIntents (of ``customer``), newest first."""
    params: dict[str, Any] = {"limit": 100}
    if customer:
        params["customer"] = customer
    response = requests.get(
        f"{stack.emulator_url}/v1/payment_intents",
        params=params,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    return [pi for pi in response.json()["data"] if (pi.get("metadata") or {}).get("kind") == "auto_recharge"]


def configure(
    stack: PayingStack, session_factory: Any, account: str, threshold_credits: int, package: str = "starter"
) -> None:
    auto_recharge.save_settings(
        session_factory,
        account,
        enabled=True,
        threshold_mc=threshold_credits * CREDIT,
        package=find_package(table(stack), package),
    )


def armed_below(stack: PayingStack, session_factory: Any, probe: Any, account: str) -> int:
    """A wallet of 10 credits with auto-recharge below 50 (so already a candidate): its id."""
    probe.run(PurchaseCredits(account, 10 * CREDIT, f"seed:{account}"))
    configure(stack, session_factory, account, 50)
    with session_factory() as session:
        [wallet_id] = auto_recharge.candidates(session, accounts=[account])
    return int(wallet_id)


def state(session_factory: Any, account: str) -> auto_recharge.AutoRechargeView:
    with session_factory() as session:
        view = auto_recharge.read_settings(session, account)
    assert view is not None
    return view


def check_and_charge(stack: PayingStack, session_factory: Any, account: str) -> list[str]:
    """What the worker does after a usage batch: detect, trigger, then charge each attempt started."""
    started = auto_recharge.check(session_factory, table(stack), accounts=[account])
    return [auto_recharge.charge(session_factory, stack.gateway, attempt) for attempt in started]


def attempts(probe: Any, account: str) -> list[Any]:
    return probe.rows(
        "SELECT a.id, a.status, a.payment_intent_id, a.failure_code, a.amount, a.credits_mc "
        "FROM auto_recharge_attempts a JOIN wallets w ON w.id = a.wallet_id WHERE w.account = :a ORDER BY a.id",
        a=account,
    )


def test_a_crossing_charges_the_package_once_and_the_webhook_twice_credits_once(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    # given a wallet of 100 credits, auto-recharge below 50 with the starter package, and a saved card
    probe.run(PurchaseCredits("ar_cross", 100 * CREDIT, "seed:ar_cross"))
    customer = customer_with_card(stack, session_factory, "ar_cross")
    configure(stack, session_factory, "ar_cross", 50)
    # when a debit above the threshold is checked: nothing
    probe.run(DebitUsage("ar_cross", 40 * CREDIT, "use:ar_cross:1"))
    assert check_and_charge(stack, session_factory, "ar_cross") == []
    # when a debit crosses it
    probe.run(DebitUsage("ar_cross", 20 * CREDIT, "use:ar_cross:2"))
    assert check_and_charge(stack, session_factory, "ar_cross") == ["succeeded"]

    # then one off-session PaymentIntent of the package's amount, credited at once, and armed again
    [intent] = recharge_intents(stack, customer)
    assert (intent["amount"], intent["currency"], intent["status"]) == (1000, "usd", "succeeded")
    assert intent["metadata"]["account"] == "ar_cross" and intent["metadata"]["package"] == "starter"
    assert probe.available("ar_cross") == 40 * CREDIT + STARTER_MC
    view = state(session_factory, "ar_cross")
    assert view.state == ARMED and view.last_attempt is not None
    assert (view.last_attempt.status, view.last_attempt.payment_intent_id) == ("succeeded", intent["id"])

    # when Stripe delivers payment_intent.succeeded twice (and checking again finds nothing to do)
    [event] = stack.events("payment_intent.succeeded", intent["id"])
    assert stack.deliver(session_factory, event) == "processed"
    assert stack.deliver(session_factory, {**event, "id": event["id"] + "_again"}) == "processed"
    assert check_and_charge(stack, session_factory, "ar_cross") == []

    # then the package was credited exactly once
    assert probe.available("ar_cross") == 40 * CREDIT + STARTER_MC
    keys = probe.rows(
        "SELECT idempotency_key FROM ledger_entries WHERE kind = 'purchase' AND external_ref = :pi", pi=intent["id"]
    )
    assert [k for (k,) in keys] == [f"auto_recharge:{intent['id']}"]
    assert len(recharge_intents(stack, customer)) == 1
    probe.assert_consistent()


def test_auto_recharge_racing_32_concurrent_debits_charges_exactly_once(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    # given 100 credits, auto-recharge below 50, a saved card
    probe.run(PurchaseCredits("ar_race", 100 * CREDIT, "seed:ar_race"))
    customer = customer_with_card(stack, session_factory, "ar_race")
    configure(stack, session_factory, "ar_race", 50)
    start = threading.Barrier(32)

    def spend(i: int) -> list[str]:
        start.wait()
        probe.run(DebitUsage("ar_race", 2 * CREDIT, f"use:ar_race:{i}"))  # its own transaction
        return check_and_charge(stack, session_factory, "ar_race")

    # when 32 threads each debit 2 credits (64 in all: the balance crosses 50 on the 26th) and then, as the
    # worker does after a batch, detect, trigger and charge
    with ThreadPoolExecutor(32) as pool:
        outcomes = [o for result in pool.map(spend, range(32)) for o in result]

    # then exactly one attempt and one PaymentIntent, credited once
    assert outcomes == ["succeeded"]
    assert len(attempts(probe, "ar_race")) == 1
    assert len(recharge_intents(stack, customer)) == 1
    assert probe.available("ar_race") == 36 * CREDIT + STARTER_MC
    assert state(session_factory, "ar_race").state == ARMED
    probe.assert_consistent()


def test_a_trigger_whose_lock_waited_out_a_whole_recharge_reads_the_credited_balance(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    # given a wallet below its threshold, armed, whose settings row another transaction holds locked
    wallet_id = armed_below(stack, session_factory, probe, "ar_late")
    holder = session_factory()
    try:
        holder.execute(text("SELECT 1 FROM auto_recharge WHERE wallet_id = :w FOR UPDATE"), {"w": wallet_id})
        # when a trigger starts (its first look sees the balance below the threshold) and waits for that lock,
        late: dict[str, int | None] = {}
        waiting = threading.Thread(
            target=lambda: late.setdefault("attempt", auto_recharge.trigger(session_factory, wallet_id, table(stack)))
        )
        waiting.start()
        wait_until_blocked(probe, "auto_recharge")
        # and meanwhile a whole recharge happens: the wallet is credited and its row, armed again, is released
        probe.run(PurchaseCredits("ar_late", STARTER_MC, "recharged:ar_late"))
        holder.execute(text("UPDATE auto_recharge SET updated_at = now() WHERE wallet_id = :w"), {"w": wallet_id})
        holder.commit()
    finally:
        holder.close()
    waiting.join(30)
    # then the late trigger sees the credited balance, not the one of its first look: no second charge
    assert late == {"attempt": None}
    assert attempts(probe, "ar_late") == []
    assert state(session_factory, "ar_late").state == ARMED


def wait_until_blocked(probe: Any, table_name: str) -> None:
    """Until a backend whose statement names ``table_name`` waits on a lock (PostgreSQL tells no one)."""
    wait_until(
        lambda: probe.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :q",
            q=f"%{table_name}%",
        ),
        timeout=30,
        what=f"a statement on {table_name} to wait on a lock",
    )


def test_32_concurrent_triggers_of_one_crossed_wallet_start_one_attempt(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    # given a wallet already below its threshold
    wallet_id = armed_below(stack, session_factory, probe, "ar_trig")
    start = threading.Barrier(32)

    def fire(_: int) -> int | None:
        start.wait()
        return auto_recharge.trigger(session_factory, wallet_id, table(stack))

    # when 32 triggers race
    with ThreadPoolExecutor(32) as pool:
        started = [a for a in pool.map(fire, range(32)) if a is not None]

    # then one won; the wallet is pending
    assert len(started) == 1
    assert len(attempts(probe, "ar_trig")) == 1
    assert state(session_factory, "ar_trig").state == PENDING


def test_a_declined_card_fails_and_stops_until_the_settings_are_saved(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    # given a saved card that the bank declines
    probe.run(PurchaseCredits("ar_decl", 100 * CREDIT, "seed:ar_decl"))
    customer = customer_with_card(stack, session_factory, "ar_decl")
    stack.control(f"customers/{customer}/card", outcome="card_declined")
    configure(stack, session_factory, "ar_decl", 50)
    probe.run(DebitUsage("ar_decl", 60 * CREDIT, "use:ar_decl:1"))

    # when the crossing is charged
    assert check_and_charge(stack, session_factory, "ar_decl") == ["failed"]

    # then the attempt failed with the card's code, nothing was credited, and auto-recharge stopped
    [attempt] = attempts(probe, "ar_decl")
    assert (attempt.status, attempt.failure_code) == ("failed", "card_declined")
    assert state(session_factory, "ar_decl").state == FAILED
    assert probe.available("ar_decl") == 40 * CREDIT
    # the payment_failed webhook changes nothing
    [event] = stack.events("payment_intent.payment_failed", attempt.payment_intent_id)
    assert stack.deliver(session_factory, event) == "processed"
    # the customer is told once (email and webhook rows), though the gateway's answer and the webhook both say it
    assert probe.rows(
        "SELECT kind, channel, payload->>'code' AS code FROM notifications "
        "WHERE kind NOT IN ('low_balance', 'balance_depleted') ORDER BY id"
    ) == [
        ("auto_recharge_failed", "email", "card_declined"),
        ("auto_recharge_failed", "webhook", "card_declined"),
    ]
    # further debits, the sweep: no new attempt
    probe.run(DebitUsage("ar_decl", 10 * CREDIT, "use:ar_decl:2"))
    assert check_and_charge(stack, session_factory, "ar_decl") == []
    assert auto_recharge.sweep(session_factory, table(stack)).triggered == []
    assert len(recharge_intents(stack, customer)) == 1

    # when the customer fixes the card and saves the settings again
    stack.control(f"customers/{customer}/card", outcome="succeed")
    configure(stack, session_factory, "ar_decl", 50)
    assert state(session_factory, "ar_decl").state == ARMED

    # then the next check charges again, and this time credits
    assert check_and_charge(stack, session_factory, "ar_decl") == ["succeeded"]
    assert probe.available("ar_decl") == 30 * CREDIT + STARTER_MC
    assert len(recharge_intents(stack, customer)) == 2
    probe.assert_consistent()


def test_authentication_required_is_recorded_as_requires_action(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    probe.run(PurchaseCredits("ar_3ds", 100 * CREDIT, "seed:ar_3ds"))
    customer = customer_with_card(stack, session_factory, "ar_3ds")
    stack.control(f"customers/{customer}/card", outcome="authentication_required")
    configure(stack, session_factory, "ar_3ds", 50)
    probe.run(DebitUsage("ar_3ds", 60 * CREDIT, "use:ar_3ds:1"))

    assert check_and_charge(stack, session_factory, "ar_3ds") == ["requires_action"]

    [attempt] = attempts(probe, "ar_3ds")
    assert (attempt.status, attempt.failure_code) == ("requires_action", "authentication_required")
    assert state(session_factory, "ar_3ds").state == FAILED
    assert probe.available("ar_3ds") == 40 * CREDIT
    probe.run(DebitUsage("ar_3ds", 1 * CREDIT, "use:ar_3ds:2"))
    assert check_and_charge(stack, session_factory, "ar_3ds") == []


@pytest.mark.parametrize("linked", [False, True], ids=["no-customer", "customer-without-card"])
def test_without_a_saved_card_the_attempt_fails_without_charging(
    stack: PayingStack, session_factory: Any, probe: Any, linked: bool
) -> None:
    probe.run(PurchaseCredits("ar_nocard", 100 * CREDIT, "seed:ar_nocard"))
    if linked:
        customer_with_card(stack, session_factory, "ar_nocard", card=False)
    configure(stack, session_factory, "ar_nocard", 50)
    probe.run(DebitUsage("ar_nocard", 60 * CREDIT, "use:ar_nocard"))

    assert check_and_charge(stack, session_factory, "ar_nocard") == ["failed"]

    [attempt] = attempts(probe, "ar_nocard")
    assert (attempt.status, attempt.failure_code, attempt.payment_intent_id) == ("failed", "no_payment_method", None)
    assert probe.rows(
        "SELECT kind, payload->>'status' AS status FROM notifications WHERE channel = 'email' "
        "AND kind NOT IN ('low_balance', 'balance_depleted')"
    ) == [("auto_recharge_failed", "failed")]
    assert state(session_factory, "ar_nocard").state == FAILED
    assert recharge_intents(stack) == []


def test_still_below_after_the_charge_waits_charged_then_rearms_once_back_above(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    # given a threshold above what one package brings back: 20,000 credits, recharge below 40,000
    probe.run(PurchaseCredits("ar_rearm", 20_000 * CREDIT, "seed:ar_rearm"))
    customer = customer_with_card(stack, session_factory, "ar_rearm")
    configure(stack, session_factory, "ar_rearm", 40_000)

    # when it is charged once: 30,000 credits, still below
    assert check_and_charge(stack, session_factory, "ar_rearm") == ["succeeded"]
    assert probe.available("ar_rearm") == 30_000 * CREDIT
    # then it waits (charged): the same crossing is not charged again, by a check or by the sweep
    assert state(session_factory, "ar_rearm").state == CHARGED
    assert check_and_charge(stack, session_factory, "ar_rearm") == []
    assert auto_recharge.sweep(session_factory, table(stack)) == auto_recharge.SweepResult(0, [], [])

    # when credits bring it back above the threshold, the sweep re-arms it
    probe.run(PurchaseCredits("ar_rearm", 15_000 * CREDIT, "more:ar_rearm"))
    assert auto_recharge.sweep(session_factory, table(stack)).rearmed == 1
    assert state(session_factory, "ar_rearm").state == ARMED
    # and the next crossing charges again
    probe.run(DebitUsage("ar_rearm", 10_000 * CREDIT, "use:ar_rearm"))
    assert check_and_charge(stack, session_factory, "ar_rearm") == ["succeeded"]
    assert len(recharge_intents(stack, customer)) == 2


def test_a_refund_of_an_auto_recharge_payment_takes_its_share_back(
    stack: PayingStack, session_factory: Any, probe: Any
) -> None:
    probe.run(PurchaseCredits("ar_refund", 100 * CREDIT, "seed:ar_refund"))
    customer_with_card(stack, session_factory, "ar_refund")
    configure(stack, session_factory, "ar_refund", 200)
    assert check_and_charge(stack, session_factory, "ar_refund") == ["succeeded"]
    [attempt] = attempts(probe, "ar_refund")

    # when half the payment is refunded in Stripe and its event handled
    stack.gateway.create_refund(payment_intent=attempt.payment_intent_id, amount=500)
    intent = stack.gateway.retrieve_payment_intent(attempt.payment_intent_id)
    [event] = stack.events("charge.refunded", intent["latest_charge"])
    assert stack.deliver(session_factory, event) == "processed"

    # then half the package's credits are taken back
    assert probe.available("ar_refund") == 100 * CREDIT + STARTER_MC // 2
    probe.assert_consistent()


def test_a_charge_whose_answer_was_lost_runs_again_onto_the_same_payment_intent(
    stack: PayingStack, session_factory: Any, probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an attempt whose charge reached Stripe but whose worker died before recording the answer
    probe.run(PurchaseCredits("ar_retry", 10 * CREDIT, "seed:ar_retry"))
    customer = customer_with_card(stack, session_factory, "ar_retry")
    configure(stack, session_factory, "ar_retry", 50)
    [attempt_id] = auto_recharge.check(session_factory, table(stack), accounts=["ar_retry"])
    recorded = auto_recharge.record

    def crash(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("worker lost")

    monkeypatch.setattr(auto_recharge, "record", crash)
    with pytest.raises(RuntimeError):
        auto_recharge.charge(session_factory, stack.gateway, attempt_id)
    monkeypatch.setattr(auto_recharge, "record", recorded)
    [first] = recharge_intents(stack, customer)
    assert state(session_factory, "ar_retry").state == PENDING

    # when the charge runs again (the task retried, or the sweep found the attempt stale), twice
    assert auto_recharge.charge(session_factory, stack.gateway, attempt_id) == "succeeded"
    assert auto_recharge.charge(session_factory, stack.gateway, attempt_id) == "succeeded"

    # then Stripe answered with the first PaymentIntent (same idempotency key): one payment, credited once
    assert [pi["id"] for pi in recharge_intents(stack, customer)] == [first["id"]]
    assert probe.available("ar_retry") == 10 * CREDIT + STARTER_MC
    assert state(session_factory, "ar_retry").state == ARMED


def test_the_sweep_lists_a_stale_pending_attempt(stack: PayingStack, session_factory: Any, probe: Any) -> None:
    from datetime import timedelta

    from billing_core.db.unit_of_work import utcnow

    probe.run(PurchaseCredits("ar_stale", 10 * CREDIT, "seed:ar_stale"))
    configure(stack, session_factory, "ar_stale", 50)
    [attempt_id] = auto_recharge.check(session_factory, table(stack), accounts=["ar_stale"])
    # a minute later it is still in flight; three minutes later it is stale and charged again
    assert auto_recharge.sweep(session_factory, table(stack), now=utcnow() + timedelta(minutes=1)).stale == []
    assert auto_recharge.sweep(session_factory, table(stack), now=utcnow() + timedelta(minutes=3)).stale == [attempt_id]


def test_the_api_sets_reads_and_refuses_an_unknown_package(shop: tuple[PayingStack, Any], probe: Any) -> None:
    stack, api = shop
    key = api.key("accounts:read", "accounts:write")

    unknown = api.put(
        "/v1/accounts/ar_api/auto-recharge", key=key, json={"enabled": True, "threshold": "50", "package": "nope"}
    )
    assert unknown.status_code == 422 and unknown.get_json()["error"]["code"] == "unknown_package"
    assert api.get("/v1/accounts/ar_api/auto-recharge", key=key).status_code == 404

    saved = api.put(
        "/v1/accounts/ar_api/auto-recharge", key=key, json={"enabled": True, "threshold": "50.5", "package": "starter"}
    )
    assert saved.status_code == 200, saved.get_json()
    body = saved.get_json()
    assert (body["enabled"], body["threshold"], body["package"], body["state"]) == (True, "50.500", "starter", "armed")
    assert body["last_attempt"] is None
    # the read scope cannot write
    reader = api.key("accounts:read")
    refused = api.put(
        "/v1/accounts/ar_api/auto-recharge", key=reader, json={"enabled": False, "threshold": "1", "package": "starter"}
    )
    assert refused.status_code == 403

    # after a crossing without a card, the answer shows the failed attempt
    assert check_and_charge(stack, api.session_factory, "ar_api") == ["failed"]
    shown = api.get("/v1/accounts/ar_api/auto-recharge", key=reader).get_json()
    assert shown["state"] == "failed"
    assert (shown["last_attempt"]["status"], shown["last_attempt"]["failure_code"]) == ("failed", "no_payment_method")
    assert shown["last_attempt"]["credits"] == "10000.000" and shown["last_attempt"]["amount"] == 1000
