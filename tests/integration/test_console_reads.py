"""What the console reads besides the admin API's queries: the pipeline's health, and a session's key by id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.accounts.api_keys import create_api_key, live_api_key, revoke_api_key
from billing_core.intake.health import pipeline_health

pytestmark = pytest.mark.integration


def test_health_counts_open_and_dead_rows_and_the_oldest_wait(session_factory: sessionmaker[Session]) -> None:
    # given two open Stripe events (the older received 90 s ago), one dead, and a pending notification
    now = datetime.now(UTC)
    with session_factory.begin() as session:
        session.execute(
            text(
                "INSERT INTO stripe_events (id, type, payload, status, received_at) VALUES "
                "('evt_a', 't', '{}', 'pending', :old), ('evt_b', 't', '{}', 'failed', :now), "
                "('evt_c', 't', '{}', 'dead', :now)"
            ),
            {"old": now - timedelta(seconds=90), "now": now},
        )
        session.execute(
            text("INSERT INTO notifications (kind, dedupe_key, channel, created_at) VALUES ('k', 'd', 'email', :t)"),
            {"t": now - timedelta(seconds=30)},
        )

    # when the console reads the health
    with session_factory() as session:
        health = pipeline_health(session, now)

    # then the backlogs, their lags and the dead letters are as stored; nothing reconciled yet
    assert health.stripe_events.open == 2 and health.stripe_events.lag_seconds == pytest.approx(90, abs=1)
    assert health.usage.open == 0 and health.usage.lag_seconds is None
    assert health.dead_letters == 1
    assert health.outbox.open == 1 and health.outbox.lag_seconds == pytest.approx(30, abs=1)
    assert health.reconciliation == ()


def test_a_revoked_key_is_no_longer_live_by_id(session_factory: sessionmaker[Session]) -> None:
    # given an admin key
    view, _ = create_api_key(session_factory, "ops", ["admin"])
    with session_factory() as session:
        assert live_api_key(session, view.id) == view
        assert live_api_key(session, 0) is None and live_api_key(session, 2**63) is None

    # when it is revoked, then the session's lookup by id finds nothing
    assert revoke_api_key(session_factory, view.id)
    with session_factory() as session:
        assert live_api_key(session, view.id) is None
