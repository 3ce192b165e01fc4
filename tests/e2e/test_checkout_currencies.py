"""Packages in two currencies end to end, with real processes: ``billing stripe sync-products`` against the
emulator, checkout through the receiver selling the stored Price, payment in the emulator, signed webhooks into
the web process, applied by the worker: a USD card payment, and a BRL PIX payment whose credits come only when
it settles (once)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import requests

from tests.e2e.conftest import Stack, wait_until

URLS = {"success_url": "https://app.example/ok", "cancel_url": "https://app.example/cancel"}


def stripe_get(stack: Stack, path: str, **params: Any) -> dict[str, Any]:
    response = requests.get(
        f"{stack.emulator_url}{path}", params=params, headers={"Authorization": "Bearer sk_test_e2e"}, timeout=10
    )
    response.raise_for_status()
    return response.json()


def checkout(stack: Stack, account: str, package: str) -> str:
    response = stack.api("POST", "/v1/checkout", json={"account": account, "package": package, **URLS})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def processed(stack: Stack, event_type: str, session_id: str) -> bool:
    """Whether the web process stored and the worker processed the event of ``event_type`` about the session."""
    events = stripe_get(stack, "/v1/events", type=event_type, limit=100)["data"]
    ids = [e["id"] for e in events if e["data"]["object"]["id"] == session_id]
    return bool(ids) and stack.scalar("SELECT status FROM stripe_events WHERE id = :id", id=ids[0]) == "processed"


def test_sync_then_usd_card_and_brl_pix_checkouts_credit_the_exact_packages(stack: Stack, run_id: str) -> None:
    # given the catalog synced to Stripe (the emulator) by the operator's command
    sync = subprocess.run(
        [sys.executable, "-m", "billing_cli.main", "stripe", "sync-products"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stderr
    stored = dict(stack.rows("SELECT ref, stripe_price_id FROM stripe_catalog WHERE kind = 'package'"))
    assert {"pro", "enterprise_brl"} <= set(stored)
    packages = {p["id"]: p for p in stack.api("GET", "/v1/packages").json()["data"]}
    assert packages["enterprise_brl"]["stripe_price"] == stored["enterprise_brl"]

    # when a USD package is bought by card
    usd_buyer = f"usd_{run_id}"
    usd_session = checkout(stack, usd_buyer, "pro")
    (item,) = stripe_get(stack, f"/v1/checkout/sessions/{usd_session}/line_items")["data"]
    assert item["price"]["id"] == stored["pro"]  # the stored Price is what Stripe sells
    stack.emulator(f"/_emulator/checkout/sessions/{usd_session}/pay")

    # then its credits and bonus arrive, once
    wait_until(lambda: stack.available_mc(usd_buyer) == 55_000_000, what="the USD purchase credited")

    # when a BRL package is paid by PIX: the session completes unpaid
    brl_buyer = f"brl_{run_id}"
    brl_session = checkout(stack, brl_buyer, "enterprise_brl")
    shown = stripe_get(stack, f"/v1/checkout/sessions/{brl_session}")
    assert (shown["currency"], shown["amount_total"], shown["payment_method_types"]) == ("brl", 70000, ["card", "pix"])
    stack.emulator(f"/_emulator/checkout/sessions/{brl_session}/pay", **{"async": True})
    wait_until(lambda: processed(stack, "checkout.session.completed", brl_session), what="the completion processed")
    # then nothing is credited yet
    assert not stack.available_mc(brl_buyer)

    # and when the PIX payment settles, 2,000 credits + 200 bonus arrive, once
    stack.emulator(f"/_emulator/checkout/sessions/{brl_session}/async_succeed")
    wait_until(lambda: stack.available_mc(brl_buyer) == 2_200_000, what="the PIX purchase credited")
    wait_until(
        lambda: processed(stack, "checkout.session.async_payment_succeeded", brl_session), what="the success processed"
    )
    stack.emulator("/_emulator/flush", timeout=20)
    assert stack.available_mc(brl_buyer) == 2_200_000
    assert (
        stack.scalar(
            "SELECT count(*) FROM ledger_entries WHERE idempotency_key IN (:a, :b)",
            a=f"checkout:{usd_session}",
            b=f"checkout:{brl_session}",
        )
        == 2
    )
    check = stack.billing_check()
    assert check.returncode == 0, check.stdout
