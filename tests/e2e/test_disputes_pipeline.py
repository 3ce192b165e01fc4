"""Refunds and disputes end to end: an operator's refund through ``POST /v1/admin/refunds``, disputes opened and
closed with the emulator's controls, every event delivered by the emulator as a signed webhook to the real
web process and applied by the real worker. And a PIX payment that bounces."""

from __future__ import annotations

from typing import Any

import requests

from tests.e2e.conftest import Stack, wait_until

STARTER_MC = 10_000_000  # 10,000 credits for 1,000 cents


def paid_starter(stack: Stack, account: str, package: str = "starter", **pay: Any) -> dict[str, Any]:
    response = stack.api(
        "POST",
        "/v1/checkout",
        json={
            "account": account,
            "package": package,
            "success_url": "https://a.example",
            "cancel_url": "https://b.example",
        },
    )
    assert response.status_code == 201, response.text
    session_id = response.json()["id"]
    stack.emulator(f"/_emulator/checkout/sessions/{session_id}/pay", **pay)
    return requests.get(
        f"{stack.emulator_url}/v1/checkout/sessions/{session_id}",
        headers={"Authorization": "Bearer sk_test_e2e"},
        timeout=10,
    ).json()


def charge_of(stack: Stack, payment_intent: str) -> str:
    intent = requests.get(
        f"{stack.emulator_url}/v1/payment_intents/{payment_intent}",
        headers={"Authorization": "Bearer sk_test_e2e"},
        timeout=10,
    ).json()
    return intent["latest_charge"]


def balance(stack: Stack, account: str) -> tuple[int | None, int | None]:
    row = stack.rows(
        "SELECT a.balance_mc AS available, h.balance_mc AS held FROM wallets w "
        "JOIN ledger_accounts a ON a.id = w.available_account_id JOIN ledger_accounts h ON h.id = w.held_account_id "
        "WHERE w.account = :a",
        a=account,
    )
    return (row[0].available, row[0].held) if row else (None, None)


def test_admin_refund_then_dispute_lost_takes_the_whole_purchase_once(stack: Stack, run_id: str) -> None:
    account = f"disputed_{run_id}"
    session = paid_starter(stack, account)
    wait_until(lambda: balance(stack, account) == (STARTER_MC, 0), what="the purchase credited")

    # an operator refunds 400 cents' worth
    response = stack.api(
        "POST",
        "/v1/admin/refunds",
        json={
            "account": account,
            "payment": session["id"],
            "amount": 400,
            "reason": "goodwill",
            "idempotency_key": "k1",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["credits"] == "4000.000"
    wait_until(lambda: balance(stack, account) == (6_000_000, 0), what="the refund clawed back")

    # the cardholder disputes the 600 cents left: held back, then lost
    dispute = stack.emulator(f"/_emulator/charges/{charge_of(stack, session['payment_intent'])}/dispute", amount=600)
    wait_until(lambda: balance(stack, account) == (0, 6_000_000), what="the dispute held")
    stack.emulator(f"/_emulator/disputes/{dispute['id']}/close", status="lost")
    wait_until(lambda: balance(stack, account) == (0, 0), what="the dispute lost")
    assert stack.scalar("SELECT status FROM disputes WHERE id = :d", d=dispute["id"]) == "lost"
    assert stack.billing_check().returncode == 0


def test_dispute_won_gives_the_held_credits_back(stack: Stack, run_id: str) -> None:
    account = f"won_{run_id}"
    session = paid_starter(stack, account)
    wait_until(lambda: balance(stack, account) == (STARTER_MC, 0), what="the purchase credited")
    dispute = stack.emulator(f"/_emulator/charges/{charge_of(stack, session['payment_intent'])}/dispute")
    wait_until(lambda: balance(stack, account) == (0, STARTER_MC), what="the whole purchase held")
    stack.emulator(f"/_emulator/disputes/{dispute['id']}/close", status="won")
    wait_until(lambda: balance(stack, account) == (STARTER_MC, 0), what="the held credits back")
    assert stack.billing_check().returncode == 0


def test_a_bounced_pix_payment_credits_nothing_and_is_recorded(stack: Stack, run_id: str) -> None:
    account = f"pix_{run_id}"
    session = paid_starter(stack, account, package="starter_brl", **{"async": True})
    stack.emulator(f"/_emulator/checkout/sessions/{session['id']}/async_fail")
    wait_until(
        lambda: stack.scalar("SELECT account FROM payment_failures WHERE id = :s", s=session["id"]) == account,
        what="the failure recorded",
    )
    assert balance(stack, account)[0] in (None, 0)
