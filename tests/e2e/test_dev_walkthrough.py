"""The README's walkthrough on ``billing dev`` itself: the command a new developer runs, with its embedded
PostgreSQL and Redis, its emulator, and the Procfile's processes. An account subscribes to Pro, pays in the
emulator, and its trial allowance shows in its balance; another buys a package (the catalog was synced), pays,
reports usage and spends its credits below the low-balance threshold, and the low-balance email shows in
billing dev's output (its mail catcher)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from typing import Any

import requests

from billing_cli.throwaway import free_port
from tests.e2e.conftest import ROOT, wait_until

URLS = {"success_url": "https://example.com/ok", "cancel_url": "https://example.com/cancel"}
# The README's three items: 76 credits (6 + 50 + 20).
ITEMS = [
    {"type": "llm_tokens", "provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300},
    {"type": "fee", "code": "tier1b_experiment"},
    {"type": "agent", "code": "profile_my_data"},
]


def test_the_walkthrough_subscribes_an_account_and_shows_its_allowance() -> None:
    web_port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("STRIPE")}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "billing_cli",
                "dev",
                "--port",
                str(web_port),
                "--emulator-port",
                str(emulator_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            key = wait_until(
                lambda: (m := re.search(r"API key \(admin\) (bk_\S+)", output())) and m.group(1),
                timeout=120,
                what="billing dev to come up",
            )
            base, stripe = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{emulator_port}"
            headers = {"Authorization": f"Bearer {key}"}

            # the console opens with the printed admin key, its cookie usable over billing dev's plain http
            assert f"console         {base}/admin" in output()
            browser = requests.Session()
            form = browser.get(f"{base}/admin/sign-in", timeout=10)
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert form.status_code == 200 and token, form.text
            signed_in = browser.post(
                f"{base}/admin/sign-in", data={"csrf_token": token.group(1), "api_key": key}, timeout=10
            )
            assert signed_in.status_code == 200 and "System health" in signed_in.text, signed_in.text

            def post(path: str, body: dict[str, Any]) -> requests.Response:
                return requests.post(base + path, json=body, headers=headers, timeout=10)

            answer = post("/v1/subscriptions", {"account": "team_7", "plan": "pro", "interval": "month", **URLS})
            assert answer.status_code == 201, answer.text
            assert answer.json()["trial_days"] == 14
            paid = requests.post(f"{stripe}/_emulator/checkout/sessions/{answer.json()['id']}/pay", timeout=10)
            assert paid.status_code == 200, paid.text

            def balance() -> dict[str, Any]:
                body: dict[str, Any] = requests.get(f"{base}/v1/accounts/team_7", headers=headers, timeout=10).json()
                return body

            account = wait_until(lambda: (b := balance()).get("available") == "5000.000" and b, timeout=60)
            assert account["plan"] == "pro" and account["subscription"]["status"] == "trialing"
            assert [(g["source"], g["remaining"]) for g in account["grants"]] == [("plan", "5000.000")]
            invoices = requests.get(f"{base}/v1/accounts/team_7/invoices", headers=headers, timeout=10).json()
            assert [(i["billing_reason"], i["status"], i["total"]) for i in invoices["data"]] == [
                ("subscription_create", "paid", 0)
            ]
            # user_42, as the README's quick start has it: an email, a package bought at its synced Price and
            # paid, usage reported, then spent below the low-balance threshold: billing dev prints the mail
            put = requests.put(
                f"{base}/v1/accounts/user_42", json={"email": "dev@example.com"}, headers=headers, timeout=10
            )
            assert put.status_code == 200, put.text
            checkout = post("/v1/checkout", {"account": "user_42", "package": "starter", **URLS})
            assert checkout.status_code == 201, checkout.text
            paid = requests.post(f"{stripe}/_emulator/checkout/sessions/{checkout.json()['id']}/pay", timeout=10)
            assert paid.status_code == 200, paid.text

            def available(account: str) -> str | None:
                body = requests.get(f"{base}/v1/accounts/{account}", headers=headers, timeout=10).json()
                return body.get("available")  # type: ignore[no-any-return]

            wait_until(lambda: available("user_42") == "10000.000", timeout=60, what="the purchase's credits")
            for report in (
                {"idempotency_key": "req-1", "account": "user_42", "items": ITEMS},
                {"idempotency_key": "req-2", "account": "user_42", "items": [{"type": "credits", "credits": "9000"}]},
            ):
                assert post("/v1/usage", report).status_code == 202
            wait_until(lambda: available("user_42") == "924.000", timeout=60, what="the usage to be charged")
            # the outbox is delivered every 10 seconds by beat, to billing dev's mail catcher
            wait_until(
                lambda: "mail: Subject Your credit balance is low: 924.000 credits left" in output(),
                timeout=60,
                what="the low-balance mail in billing dev's output",
            )
            mail = output()
            assert "mail: From billing@localhost  To dev@example.com" in mail
            assert "mail: | The credit balance of user_42 fell below 1000.000 credits." in mail
            assert "mail: Subject Receipt: 10000.000 credits added to user_42" in mail  # the purchase's, before it
            # nothing failed on the way (what happens while it shuts down is its own business)
            assert "Traceback" not in output(), output()[-4000:]
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
