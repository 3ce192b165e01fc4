"""The database settings (``db.config``, what ``billing config get|set`` uses) as the admin API reads and
writes them: every write audited in its own transaction, the value before and after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billing_core.admin.audit import record_audit
from billing_core.clock import utcnow
from billing_core.db.config import KNOWN_KEYS, BillingConfig, set_setting, setting_source, validate_setting

SETTING_ACTION = "setting.update"


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    default: Any
    description: str | None
    updated_at: datetime | None
    updated_by: str | None


def _setting(session: Session, key: str) -> Setting:
    value, updated_at, updated_by = setting_source(session, key)
    info = BillingConfig.model_fields[key]
    return Setting(key, value, info.default, info.description, updated_at, updated_by)


def list_settings(session: Session) -> list[Setting]:
    return [_setting(session, key) for key in KNOWN_KEYS]


def update_setting(
    session_factory: sessionmaker[Session], key: str, value: Any, *, actor: str, now: datetime | None = None
) -> Setting:
    """Validate (``UnknownSetting`` / ``InvalidSetting``, nothing written), store, audit; the setting after."""
    validate_setting(key, value)
    now = now or utcnow()
    with session_factory() as session, session.begin():
        before = _setting(session, key)
        set_setting(session, key, value, now=now, actor=actor)
        after = _setting(session, key)
        record_audit(
            session,
            actor=actor,
            action=SETTING_ACTION,
            target=f"setting:{key}",
            before={"value": before.value, "stored": before.updated_at is not None},
            after={"value": after.value, "stored": True},
            now=now,
        )
    return after
