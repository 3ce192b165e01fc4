"""Settings that live in the database (``billing_config``), changed at run time by ``billing config set``.

Only known keys exist: each has a pydantic type, a default and a description (``BillingConfig`` below). A
row holds a value that differs from the default; a key without a row has its default. ``read_config`` gives
all of them, typed; ``set_setting`` validates one value before writing it (an unknown key is
``UnknownSetting``, a bad value ``InvalidSetting``, and neither writes anything).

The web process reads them through ``ConfigCache`` (a few seconds old at most): a checkout does not need a
query for a setting operators change a few times a year.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import BillingConfigRow
from billing_core.errors import InvalidSetting, UnknownSetting, error_message

_CONFIG: Table = BillingConfigRow.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
config = _CONFIG.c

MAX_TOKENS_PER_MONTH = 10**18  # far above any provider's quota; keeps the product with credits in a bigint


class BillingConfig(BaseModel):
    """Every database setting with its type and default (the defaults are what an empty table means)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    upstream_monthly_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_PER_MONTH)] | None = Field(
        None,
        description="the upstream AI provider's monthly token capacity; null: no sales guard",
    )
    sales_alert_threshold_percent: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        80, description="sales pause when outstanding credits, in tokens, reach this share of the capacity"
    )
    tokens_per_credit: Annotated[StrictInt, Field(ge=1, le=10**9)] = Field(
        1000, description="the upstream tokens one credit stands for (potential tokens = credits x this)"
    )
    plan_yearly_grants: Literal["monthly", "upfront"] = Field(
        "monthly",
        description="a yearly plan's allowance: granted month by month (beat), or all twelve months when paid",
    )


KNOWN_KEYS: tuple[str, ...] = tuple(BillingConfig.model_fields)

_READ_ALL = select(config.key, config.value)
_READ_ONE = select(config.value, config.updated_at, config.updated_by).where(config.key == bindparam("key"))
_UPSERT = pg_insert(_CONFIG).values(
    key=bindparam("key"),
    value=bindparam("value", type_=JSONB),
    updated_at=bindparam("now"),
    updated_by=bindparam("actor"),
)
_UPSERT = _UPSERT.on_conflict_do_update(
    index_elements=[config.key],
    set_={
        "value": _UPSERT.excluded.value,
        "updated_at": _UPSERT.excluded.updated_at,
        "updated_by": _UPSERT.excluded.updated_by,
    },
)


def _check_key(key: str) -> str:
    if key not in KNOWN_KEYS:
        raise UnknownSetting(
            f"unknown setting {key!r}; known: {', '.join(KNOWN_KEYS)}", key=key, known=list(KNOWN_KEYS)
        )
    return key


def read_config(session: Session) -> BillingConfig:
    """All settings, typed: the stored values over the defaults. A stored value that no longer validates (a
    key whose type changed) falls back to its default rather than stopping every checkout."""
    stored = {key: value for key, value in session.execute(_READ_ALL) if key in KNOWN_KEYS}
    try:
        return BillingConfig.model_validate(stored)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        return BillingConfig.model_validate({k: v for k, v in stored.items() if k not in bad})


def parse_value(raw: str) -> Any:
    """A value as an operator types it: JSON (``80``, ``null``, ``"text"``), else the bare text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def validate_setting(key: str, value: Any) -> Any:
    """``value`` as ``key`` holds it, or ``UnknownSetting`` / ``InvalidSetting``."""
    _check_key(key)
    try:
        checked = BillingConfig.model_validate({key: value})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidSetting(f"{key}: {error_message(first)}", key=key) from None
    return getattr(checked, key)


def set_setting(session: Session, key: str, value: Any, *, now: datetime, actor: str | None = None) -> Any:
    """Validate and store one setting (in the caller's transaction); returns the value stored."""
    checked = validate_setting(key, value)
    session.execute(_UPSERT, {"key": key, "value": checked, "now": now, "actor": actor})
    return checked


def setting_source(session: Session, key: str) -> tuple[Any, datetime | None, str | None]:
    """``(value, updated_at, updated_by)`` of one key: the stored row, or the default with no time and actor."""
    _check_key(key)
    row = session.execute(_READ_ONE, {"key": key}).first()
    if row is None:
        return BillingConfig.model_fields[key].default, None, None
    return getattr(read_config(session), key), row.updated_at, row.updated_by


class ConfigCache:
    """The settings as one process reads them: from the database at most every ``ttl_seconds``."""

    def __init__(self, session_factory: sessionmaker[Session], ttl_seconds: float = 5.0) -> None:
        self._session_factory = session_factory
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._value: BillingConfig | None = None
        self._read_at = 0.0

    def get(self) -> BillingConfig:
        with self._lock:
            if self._value is not None and time.monotonic() - self._read_at < self._ttl:
                return self._value
        with self._session_factory() as session:
            value = read_config(session)
        with self._lock:
            self._value, self._read_at = value, time.monotonic()
        return value

    def invalidate(self) -> None:
        """Read the database on the next ``get`` (after this process changed a setting)."""
        with self._lock:
            self._value = None
