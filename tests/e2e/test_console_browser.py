"""The operators' console in a real headless Chromium (Debian's, driven by Playwright's Python package): sign
in with an admin key, find an account, adjust it, replay a dead letter, see the revenue chart; a wrong key and
a form without its CSRF token are refused. Screenshots land in tests/artifacts/console/."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from billing_cli.dev_stack import web_worker_class
from billing_cli.throwaway import free_port
from billing_core.accounts.api_keys import create_api_key, revoke_api_key
from tests.e2e.conftest import BIN, ROOT, Stack, _wait_http, wait_until

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("BILLING_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
STARTER_MC = 10_000_000


@pytest.fixture(scope="module")
def console_url(stack: Stack) -> str:
    """A receiver of its own with the console open: a session secret, and the cookie allowed over plain http
    (as ``billing dev`` serves it). Two workers: a cookie signed by one must be honoured by the other."""
    port = free_port()
    proc = stack.spawn(
        "web-console",
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            web_worker_class(),
            "--workers",
            "2",
            "webhook_receiver:create_app()",
        ],
        extra_env={"BILLING_CONSOLE_SECRET": "console-e2e-secret", "BILLING_CONSOLE_COOKIE_SECURE": "0"},
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/healthz", proc, stack, "web-console")
    return url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/bootstrap installs Debian's chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def shot(page: object, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def buy_starter(stack: Stack, account: str) -> None:
    response = stack.api(
        "POST",
        "/v1/checkout",
        json={
            "account": account,
            "package": "starter",
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/cancel",
        },
    )
    assert response.status_code == 201, response.text
    stack.emulator(f"/_emulator/checkout/sessions/{response.json()['id']}/pay")


def test_an_operator_signs_in_adjusts_an_account_replays_a_dead_letter_and_sees_revenue(
    stack: Stack, console_url: str, browser: object, run_id: str
) -> None:
    # given an account that bought credits and used some, and a Stripe event that died
    account = f"console_{run_id}"
    buy_starter(stack, account)
    wait_until(lambda: stack.available_mc(account) == STARTER_MC, what="the purchase credited")
    items = [
        {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}
    ]
    usage = stack.api(
        "POST", "/v1/usage", json={"idempotency_key": f"console-{run_id}", "account": account, "items": items}
    )
    assert usage.status_code == 202, usage.text
    wait_until(lambda: stack.available_mc(account) == STARTER_MC - 6_000, what="the usage applied")
    dead_id = f"evt_dead_{run_id}"
    event = {"id": dead_id, "object": "event", "type": "console.test", "data": {"object": {}}}
    with stack.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO stripe_events (id, type, payload, status, attempts, last_error) "
            "VALUES (%(id)s, 'console.test', %(payload)s, 'dead', 8, 'RuntimeError: the handler kept failing')",
            {"id": dead_id, "payload": json.dumps(event)},
        )
    _, admin_key = create_api_key(stack.session_factory, f"console-{run_id}", ["admin"])
    _, reader_key = create_api_key(stack.session_factory, f"reader-{run_id}", ["accounts:read"])

    context = browser.new_context(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        # when someone signs in with a key that is not an admin key, they are refused
        page.goto(f"{console_url}/admin/")
        assert page.url.endswith("/admin/sign-in")
        page.fill("input[name=api_key]", reader_key)
        page.click("button[type=submit]")
        assert page.locator(".flash.error").inner_text() == "That is not a live admin API key."
        shot(page, "01-refused-sign-in")

        # when the operator signs in with an admin key, the health page opens, the cookie kept as promised
        page.fill("input[name=api_key]", admin_key)
        page.click("button[type=submit]")
        page.wait_for_url(f"{console_url}/admin/")
        assert page.locator("h1").inner_text() == "System health"
        assert int(page.locator("[data-metric=dead-letters]").inner_text()) >= 1
        cookie = next(c for c in context.cookies() if c["name"] == "billing_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
        assert admin_key not in json.dumps(context.cookies())
        shot(page, "02-health")

        # then the revenue chart is drawn from the day's purchase
        page.click("nav >> text=Revenue & usage")
        revenue = page.locator("canvas#revenue[data-drawn=true]")
        assert float(revenue.get_attribute("data-total") or 0) >= 10_000
        assert float(page.locator("canvas#usage[data-drawn=true]").get_attribute("data-total") or 0) >= 6
        assert page.locator("canvas#revenue").bounding_box()["height"] > 100  # type: ignore[index]
        shot(page, "03-charts")

        # when they search the account and open it
        page.click("nav >> text=Accounts")
        page.fill("input[name=q]", account)
        page.press("input[name=q]", "Enter")
        page.click(f"a:text-is('{account}')")
        assert page.locator("#available").inner_text() == "9994.000"

        # and adjust it by 250 credits
        page.fill("#adjust input[name=credits]", "250")
        page.fill("#adjust input[name=reason]", f"goodwill for ticket {run_id}")
        page.click("#adjust button[type=submit]")

        # then the page shows the new balance, the ledger has the entry, and the audit log has the action
        page.wait_for_selector(".flash.ok")
        assert page.locator("#available").inner_text() == "10244.000"
        assert stack.available_mc(account) == STARTER_MC - 6_000 + 250_000
        # (a positive adjustment is a visible grant of source "adjustment": billing_core/admin/adjustments.py)
        assert page.locator("#history tbody tr").first.locator("td").nth(2).inner_text() == "grant"
        reasons = stack.rows(
            "SELECT e.metadata->>'reason' FROM ledger_entries e JOIN postings p ON p.entry_id = e.id "
            "JOIN wallets w ON p.account_id = w.available_account_id "
            "WHERE w.account = :a AND e.idempotency_key LIKE 'admin-adjust:%%'",
            a=account,
        )
        assert [r[0] for r in reasons] == [f"goodwill for ticket {run_id}"]
        shot(page, "04-account-adjusted")

        # when they replay the dead letter
        page.click("nav >> text=Dead letters")
        row = page.locator(f"tr[data-letter='{dead_id}']")
        row.locator("button").click()
        page.wait_for_selector(".flash.ok")

        # then its row has left the dead state and is gone from the list
        assert stack.scalar("SELECT status FROM stripe_events WHERE id = :i", i=dead_id) != "dead"
        assert page.locator(f"tr[data-letter='{dead_id}']").count() == 0
        shot(page, "05-dead-letter-replayed")

        # when they change a setting, it is stored (as billing config set would)
        page.click("nav >> text=Settings")
        page.fill("input[aria-label=sales_alert_threshold_percent]", "75")
        page.locator("form:has(input[aria-label=sales_alert_threshold_percent]) button").click()
        page.wait_for_selector(".flash.ok")
        stored = "SELECT value FROM billing_config WHERE key = 'sales_alert_threshold_percent'"
        assert stack.scalar(stored) == 75

        # and the audit log shows every action under the operator's key
        page.click("nav >> text=Audit log")
        log = page.locator("table#audit").inner_text()
        assert account in log and dead_id in log and "setting:sales_alert_threshold_percent" in log
        shot(page, "06-audit")

        # when a form is posted without its CSRF token (a forged cross-site request), it is refused
        forged = page.request.post(
            f"{console_url}/admin/accounts/{account}/adjust",
            form={"credits": "1000", "reason": "forged", "idempotency_key": f"forged-{run_id}"},
        )
        assert forged.status == 400 and "CSRF" in forged.text()
        assert stack.available_mc(account) == STARTER_MC - 6_000 + 250_000

        # and once the key is revoked, its session ends on the next request
        key_id = stack.scalar("SELECT id FROM api_keys WHERE name = :n", n=f"console-{run_id}")
        assert revoke_api_key(stack.session_factory, key_id)
        page.goto(f"{console_url}/admin/")
        assert page.url.endswith("/admin/sign-in")
        assert not [e for e in errors if not re.search(r"status of 40[01]", e)], errors
    finally:
        context.close()

    # the JSON API is not affected by the console's CSRF check
    answer = requests.get(f"{console_url}/v1/accounts/{account}", headers={"Authorization": f"Bearer {stack.api_key}"})
    assert answer.status_code == 200


def test_the_readme_screenshot_is_kept() -> None:
    """docs/console.png is the README's picture of the console; the browser test's screenshots refresh it."""
    picture = ROOT / "docs" / "console.png"
    fresh = ARTIFACTS / "04-account-adjusted.png"
    if fresh.exists() and os.environ.get("BILLING_REFRESH_SCREENSHOT"):
        shutil.copyfile(fresh, picture)
    assert picture.exists() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
