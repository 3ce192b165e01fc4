"""Admin alerts: rows of ``admin_alerts``, one per occurrence, delivered later by the notifications outbox.

An alert is recorded in the caller's transaction, so it exists exactly when the change it reports does;
``dedupe_key`` names the occurrence (``sales_paused:2026-12-02T13:05:00+00:00``), so recording it again (a
retry, a second process noticing the same thing) does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from billing_core.db.tables import AdminAlert
from billing_core.db.unit_of_work import utcnow

_ALERTS: Table = AdminAlert.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
alerts = _ALERTS.c

_RECORD = (
    pg_insert(_ALERTS)
    .values(
        kind=bindparam("kind"),
        dedupe_key=bindparam("dedupe_key"),
        payload=bindparam("payload", type_=JSONB),
        created_at=bindparam("now"),
    )
    .on_conflict_do_nothing(index_elements=[alerts.dedupe_key])
    .returning(alerts.id)
)
_LATEST_OF = (
    select(alerts.id, alerts.kind, alerts.dedupe_key, alerts.payload, alerts.created_at, alerts.delivered_at)
    .where(alerts.kind.in_(bindparam("kinds", expanding=True)))
    .order_by(alerts.id.desc())
    .limit(1)
)


@dataclass(frozen=True)
class Alert:
    id: int
    kind: str
    dedupe_key: str
    payload: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None


def record_alert(
    session: Session, kind: str, dedupe_key: str, payload: dict[str, Any], *, now: datetime | None = None
) -> int | None:
    """Record an alert once: its new id, or None when ``dedupe_key`` was recorded before."""
    row = session.execute(
        _RECORD, {"kind": kind, "dedupe_key": dedupe_key, "payload": payload, "now": now or utcnow()}
    ).first()
    return None if row is None else int(row[0])


def latest_alert(session: Session, kinds: list[str]) -> Alert | None:
    """The newest alert of any of ``kinds``."""
    row = session.execute(_LATEST_OF, {"kinds": kinds}).first()
    return None if row is None else Alert(*row)
