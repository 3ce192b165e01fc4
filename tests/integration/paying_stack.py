"""A receiver that can sell: the real Flask app on the test database with its gateway on a Stripe emulator
(served from a thread), and helpers that play the buyer and hand the emulator's events to the inbox as the
worker would. Imported as fixtures by the package and sales guard tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from billing_core.intake.stripe_events import check_event, process_event
from billing_core.stripe.gateway import StripeGateway
from stripe_emulator import run_in_thread
from tests.integration.conftest import ApiClient, _require, event_inbox_for

API_KEY = "sk_test_paying"


class PayingStack:
    def __init__(self, app: Any, emulator_url: str) -> None:
        self.app = app
        self.emulator_url = emulator_url
        self.gateway = StripeGateway(API_KEY, api_base=emulator_url)

    def control(self, path: str, **body: Any) -> dict[str, Any]:
        response = requests.post(f"{self.emulator_url}/_emulator/{path}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def events(self, event_type: str, object_id: str) -> list[dict[str, Any]]:
        """The emulator's events of ``event_type`` about ``object_id``, oldest first."""
        response = requests.get(
            f"{self.emulator_url}/v1/events",
            params={"type": event_type, "limit": 100},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        )
        response.raise_for_status()
        return [e for e in reversed(response.json()["data"]) if e["data"]["object"]["id"] == object_id]

    def deliver(self, session_factory: Any, event: dict[str, Any]) -> str:
        """Store ``event`` as the receiver does and process it as the worker does (reading Stripe back)."""
        event_inbox_for(session_factory).store(check_event(event), json.dumps(event).encode())
        return process_event(session_factory, self.gateway, event["id"])

    def sessions_created(self) -> int:
        response = requests.get(
            f"{self.emulator_url}/v1/checkout/sessions",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        )
        response.raise_for_status()
        return len(response.json()["data"])


@pytest.fixture(scope="module")
def paying_stack(database_url: str) -> Iterator[PayingStack]:
    from billing_core.settings import Settings
    from webhook_receiver import create_app

    base, stop = run_in_thread()
    settings = Settings(
        database_url=database_url,
        redis_url=_require("REDIS_URL"),
        stripe_webhook_secret="whsec_test_paying",
        stripe_api_key=API_KEY,
        stripe_api_base=base,
        BILLING_DB_POOL_SIZE=2,
    )
    app = create_app(settings)
    try:
        yield PayingStack(app, base)
    finally:
        app.extensions["billing"].engine.dispose()
        stop()


@pytest.fixture
def shop(paying_stack: PayingStack, session_factory: Any) -> Iterator[tuple[PayingStack, ApiClient]]:
    """The paying stack with an emptied emulator and a fresh sales guard, and an API client on its app."""
    paying_stack.control("reset")
    paying_stack.app.extensions.pop("billing_sales_guard", None)
    yield paying_stack, ApiClient(paying_stack.app.test_client(), session_factory)
