"""Auto-recharge end to end: usage over HTTP applied by the real worker crosses the threshold, the worker charges
the saved card in the emulator off-session, and the signed ``payment_intent.succeeded`` webhook through the real
receiver finds the package already credited (one entry)."""

from __future__ import annotations

import requests

from billing_core.ledger.commands import GrantCredits
from billing_core.ledger.handlers import execute
from billing_core.stripe.gateway import StripeGateway
from tests.e2e.conftest import Stack, wait_until

STARTER_MC = 10_000_000


def saved_card_customer(stack: Stack, account: str) -> str:
    """A customer of ``account`` with a saved default card (a paid subscription Checkout saves one)."""
    gateway = StripeGateway("sk_test_e2e", api_base=stack.emulator_url)
    customer = gateway.create_customer(account=account, email=f"{account}@example.com")
    price = requests.post(
        f"{stack.emulator_url}/v1/prices",
        data={"currency": "usd", "unit_amount": 500, "recurring[interval]": "month", "product_data[name]": "Plan"},
        headers={"Authorization": "Bearer sk_test_e2e"},
        timeout=10,
    ).json()
    session = gateway.create_subscription_checkout_session(
        customer=customer["id"],
        price=price["id"],
        success_url="https://app.example/ok",
        cancel_url="https://app.example/cancel",
    )
    stack.emulator(f"/_emulator/checkout/sessions/{session['id']}/pay")
    return str(customer["id"])


def test_usage_crossing_the_threshold_is_recharged_once_by_the_worker(stack: Stack, run_id: str) -> None:
    # given 100 credits, a saved card, and auto-recharge below 97 credits with the starter package
    account = f"ar_{run_id}"
    execute(stack.session_factory, GrantCredits(account, 100_000, f"fund:{account}"))
    customer = saved_card_customer(stack, account)
    assert stack.api("PUT", f"/v1/accounts/{account}", json={"stripe_customer_id": customer}).status_code == 200
    put = stack.api(
        "PUT", f"/v1/accounts/{account}/auto-recharge", json={"enabled": True, "threshold": "97", "package": "starter"}
    )
    assert put.status_code == 200, put.text

    # when two usage reports of 6 credits each are applied by the worker
    for i in range(2):
        body = {
            "idempotency_key": f"ar_use_{run_id}_{i}",
            "account": account,
            "items": [
                {
                    "type": "llm_tokens",
                    "provider": "openai",
                    "model": "gpt-4o",
                    "input_tokens": 1200,
                    "output_tokens": 300,
                }
            ],
        }
        assert stack.api("POST", "/v1/usage", json=body).status_code == 202

    # then the worker charged the card once and the package is credited once (the webhook was a replay)
    def recharged() -> dict[str, object] | None:
        answer = stack.api("GET", f"/v1/accounts/{account}/auto-recharge").json()
        last = answer.get("last_attempt")
        return answer if last and last["status"] == "succeeded" else None

    answer = wait_until(recharged, timeout=60, what="the auto-recharge to succeed")
    payment_intent = answer["last_attempt"]["payment_intent"]  # type: ignore[index]
    wait_until(
        lambda: (
            stack.scalar(
                "SELECT status FROM stripe_events WHERE type = 'payment_intent.succeeded' "
                "AND payload->'data'->'object'->>'id' = :pi",
                pi=payment_intent,
            )
            == "processed"
        ),
        what="the payment_intent.succeeded webhook handled",
    )
    wait_until(lambda: stack.available_mc(account) == 88_000 + STARTER_MC, what="usage and recharge in the balance")
    assert stack.scalar("SELECT count(*) FROM ledger_entries WHERE external_ref = :pi", pi=payment_intent) == 1
    assert (
        stack.scalar(
            "SELECT count(*) FROM auto_recharge_attempts a JOIN wallets w ON w.id = a.wallet_id WHERE w.account = :a",
            a=account,
        )
        == 1
    )
    assert answer["state"] == "armed"
