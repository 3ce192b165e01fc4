"""The sales guard: stop selling credits the upstream AI provider could not serve (seed 001).

Every credit a customer holds is a promise of ``tokens_per_credit`` upstream tokens. When the outstanding
credits (what all customers hold, available and held), in tokens, reach ``sales_alert_threshold_percent`` of
``upstream_monthly_tokens``, sales pause: ``POST /v1/checkout`` answers 409 ``sales_paused`` before asking
Stripe for anything. They resume by themselves when spending brings the figure back below the threshold.
Without ``upstream_monthly_tokens`` (the default) there is no guard.

What customers hold is read off the system accounts rather than summed over every wallet: the ledger is
double-entry, every posting has its counterpart, so the customers' accounts hold exactly the negated sum of
the system accounts' balances: six rows by primary key, however many customers there are.

Each crossing is recorded once as an admin alert (``billing_core.notify.alerts``): ``sales_paused`` when the
figure reaches the threshold, ``sales_resumed`` when it falls back; the dedupe key names the crossing by its
time, so a second process noticing the same crossing records nothing, and a later crossing records anew.
The newest of those two alerts is the guard's recorded state; a transaction-scoped advisory lock makes the
read-then-record of a crossing one step across processes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Table, any_, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.config import BillingConfig, ConfigCache, read_config
from billing_core.db.tables import LedgerAccount
from billing_core.db.unit_of_work import utcnow
from billing_core.errors import SalesPaused
from billing_core.ledger.system_accounts import system_account_ids
from billing_core.notify.alerts import latest_alert, record_alert
from billing_core.units import MC_PER_CREDIT

PAUSED, RESUMED = "sales_paused", "sales_resumed"
# Any constant unique to this lock: pg_advisory_xact_lock(bigint) serialises the guard's crossings.
_CROSSING_LOCK = 0x53414C4553  # "SALES"

_ACCOUNTS: Table = LedgerAccount.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
accounts = _ACCOUNTS.c
_SYSTEM_TOTAL = select(func.coalesce(func.sum(accounts.balance_mc), 0)).where(
    accounts.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
)
_LOCK_CROSSINGS = text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_CROSSING_LOCK)


@dataclass(frozen=True)
class SalesState:
    """The guard's figures at ``checked_at``. ``capacity_tokens`` and ``threshold_tokens`` are None when no
    capacity is configured (no guard: never paused)."""

    paused: bool
    outstanding_mc: int
    outstanding_tokens: int
    capacity_tokens: int | None
    threshold_percent: int
    threshold_tokens: int | None
    tokens_per_credit: int
    checked_at: datetime

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checked_at"] = self.checked_at.isoformat()
        return out

    def refusal(self) -> SalesPaused:
        return SalesPaused(
            f"credit sales are paused: outstanding credits stand for {self.outstanding_tokens} tokens, "
            f"{self.threshold_percent}% of the {self.capacity_tokens} monthly tokens is the limit",
            outstanding_tokens=self.outstanding_tokens,
            capacity_tokens=self.capacity_tokens,
            threshold_percent=self.threshold_percent,
        )


def outstanding_mc(session: Session) -> int:
    """Millicredits all customers hold (available and held; debts count negative)."""
    ids = list(system_account_ids(session).values())
    return -int(session.execute(_SYSTEM_TOTAL, {"ids": ids}).scalar_one())


def evaluate(outstanding: int, config: BillingConfig, now: datetime) -> SalesState:
    """The guard's verdict on ``outstanding`` millicredits under ``config`` (pure; integers only)."""
    tokens = outstanding * config.tokens_per_credit // MC_PER_CREDIT
    capacity = config.upstream_monthly_tokens
    percent = config.sales_alert_threshold_percent
    threshold = None if capacity is None else capacity * percent // 100
    return SalesState(
        paused=threshold is not None and tokens >= threshold,
        outstanding_mc=outstanding,
        outstanding_tokens=tokens,
        capacity_tokens=capacity,
        threshold_percent=percent,
        threshold_tokens=threshold,
        tokens_per_credit=config.tokens_per_credit,
        checked_at=now,
    )


def sales_state(session: Session, now: datetime | None = None, config: BillingConfig | None = None) -> SalesState:
    """The guard's state now, read from the database (for the admin API and the CLI; records nothing)."""
    return evaluate(outstanding_mc(session), config or read_config(session), now or utcnow())


def record_crossing(session: Session, state: SalesState) -> bool:
    """Record ``state`` as an admin alert if it differs from the recorded one (in the caller's transaction);
    True when this call recorded the crossing."""
    session.execute(_LOCK_CROSSINGS)
    last = latest_alert(session, [PAUSED, RESUMED])
    recorded_paused = last is not None and last.kind == PAUSED
    if state.paused == recorded_paused:
        return False
    kind = PAUSED if state.paused else RESUMED
    return (
        record_alert(session, kind, f"{kind}:{state.checked_at.isoformat()}", state.as_dict(), now=state.checked_at)
        is not None
    )


class SalesGuard:
    """The guard as one process runs it: the figure is read at most every ``ttl_seconds`` (settings through
    ``config``), and a crossing is recorded when this process sees the state change."""

    def __init__(
        self, session_factory: sessionmaker[Session], config: ConfigCache | None = None, ttl_seconds: float = 5.0
    ) -> None:
        self._session_factory = session_factory
        self._config = config or ConfigCache(session_factory, ttl_seconds)
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._state: SalesState | None = None
        self._read_at = 0.0
        self._recorded_paused: bool | None = None  # what this process knows the alerts say; None: not read yet

    def state(self, now: datetime | None = None) -> SalesState:
        """The guard's state, at most ``ttl_seconds`` old; a crossing is recorded on the way."""
        with self._lock:
            if self._state is not None and time.monotonic() - self._read_at < self._ttl:
                return self._state
        config = self._config.get()
        with self._session_factory() as session, session.begin():
            state = evaluate(outstanding_mc(session), config, now or utcnow())
            # The alerts are read only when this process does not know what they say, or the state moved.
            if self._recorded_paused is None or self._recorded_paused != state.paused:
                record_crossing(session, state)
                recorded = state.paused
            else:
                recorded = self._recorded_paused
        with self._lock:
            self._recorded_paused = recorded
        with self._lock:
            self._state, self._read_at = state, time.monotonic()
        return state

    def check(self, now: datetime | None = None) -> SalesState:
        """The state when sales are open; ``SalesPaused`` (409) when they are paused."""
        state = self.state(now)
        if state.paused:
            raise state.refusal()
        return state

    def invalidate(self) -> None:
        """Read everything again on the next call (after this process changed a setting or a balance)."""
        self._config.invalidate()
        with self._lock:
            self._state = None
