"""Price catalog versions: which ``PriceTable`` prices work done at a given time.

The seam every caller uses: ``PriceBook.current(now)`` (the version in effect at ``now``, default the wall
clock). The versions are the catalog file's own table (``price_table.json`` or ``BILLING_PRICING_FILE``),
effective from its ``effective_at`` or from the beginning of time, and the versions loaded ahead of time into
the ``price_versions`` table (``billing pricing load FILE --effective-at ...``). The one in effect at ``now``
is the one with the latest effective time not after ``now``: a version loaded into a running system takes
effect at its time without a deploy or a restart.

``current`` is on the hot path of usage intake: it bisects an in-memory list (no database call) and only
every ``refresh_seconds`` asks the database whether the versions changed (``count(*)`` and ``max(loaded_at)``
of a table of a few rows); only then are the rows read and the new ones validated.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import PriceVersion
from billing_core.errors import IdempotencyConflict, InvalidCommand
from billing_core.pricing.catalog import PriceTable

log = logging.getLogger(__name__)

BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_REFRESH_SECONDS = 5.0

_versions: Table = PriceVersion.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
pv = _versions.c
# Built once (the hot-path rule): the cheap "did anything change" probe, the full read, and the insert.
_STAMP = select(func.count(), func.max(pv.loaded_at))
_ROWS = select(pv.version, pv.effective_at, pv.catalog, pv.sha256, pv.loaded_at, pv.note).order_by(
    pv.effective_at, pv.loaded_at
)
_ONE = select(pv.version, pv.effective_at, pv.sha256).where(pv.version == bindparam("v"))
_INSERT = (
    insert(_versions)
    .values(
        version=bindparam("v"),
        effective_at=bindparam("at"),
        catalog=bindparam("catalog"),
        sha256=bindparam("sha"),
        note=bindparam("note"),
    )
    .on_conflict_do_nothing(index_elements=[pv.version])
    .returning(pv.version)
)


def utcnow() -> datetime:
    # datetime.now(UTC): aware, and freezegun patches it in tests.
    return datetime.now(UTC)


@dataclass(frozen=True)
class ScheduledVersion:
    """One version on the schedule: its table, when it takes effect, and where it came from."""

    version: str | None
    effective_at: datetime
    table: PriceTable
    source: str  # "file" or "database"
    loaded_at: datetime | None = None
    note: str | None = None


class PriceBook:
    """The catalog versions one process prices with.

    ``PriceBook(table)`` holds the file's table alone (tests, tools without a database); with
    ``session_factory`` it adds the database's versions and refreshes them at most every ``refresh_seconds``
    (``refresh_seconds=0``: on every call, for tests). Thread-safe: the schedule is an immutable tuple swapped
    whole; one thread refreshes while the others keep pricing with the previous schedule.
    """

    def __init__(
        self,
        base: PriceTable,
        *,
        session_factory: sessionmaker[Session] | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base
        self._session_factory = session_factory
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._next_check = float("-inf")
        self._stamp: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self._built: dict[tuple[str, str, datetime], PriceTable] = {}
        self._set_schedule([ScheduledVersion(base.version, base.effective_at or BEGINNING, base, "file")])

    @property
    def base(self) -> PriceTable:
        """The table of the shipped (or ``BILLING_PRICING_FILE``) catalog file."""
        return self._base

    def current(self, now: datetime | None = None) -> PriceTable:
        """The table in effect at ``now`` (UTC; the wall clock when None): the latest effective time not after
        ``now``; before every version's time, the earliest version."""
        if self._session_factory is not None and self._clock() >= self._next_check:
            self._refresh_quietly()
        times, schedule = self._times, self._schedule
        index = bisect.bisect_right(times, now or utcnow()) - 1
        return schedule[max(index, 0)].table

    def schedule(self) -> list[ScheduledVersion]:
        """Every version, in the order they take effect (refreshed from the database first, if any)."""
        if self._session_factory is not None:
            self.refresh()
        return list(self._schedule)

    def in_effect(self, now: datetime | None = None) -> ScheduledVersion:
        """The scheduled version in effect at ``now`` (as ``current``, with its effective time and source)."""
        if self._session_factory is not None:
            self.refresh()
        index = bisect.bisect_right(self._times, now or utcnow()) - 1
        return self._schedule[max(index, 0)]

    def find(self, version: str) -> ScheduledVersion | None:
        """The scheduled version with this id, or None."""
        return next((v for v in self.schedule() if v.version == version), None)

    def refresh(self) -> bool:
        """Read the database's versions now if they changed since the last look; True when they did."""
        if self._session_factory is None:
            return False
        with self._lock:
            return self._refresh_locked(self._session_factory)

    # -- internals -----------------------------------------------------------------------------------------
    def _refresh_quietly(self) -> None:
        # On the hot path: one thread looks, the others price with what they have; a database that cannot
        # be reached keeps the schedule we have (the request itself will answer 503 if it needs the store).
        if not self._lock.acquire(blocking=False):
            return
        try:
            assert self._session_factory is not None
            self._refresh_locked(self._session_factory)
        except Exception as exc:  # any failure to refresh must not fail pricing
            log.warning("price versions not refreshed: %s: %s", type(exc).__name__, exc)
            self._next_check = self._clock() + self._refresh_seconds
        finally:
            self._lock.release()

    def _refresh_locked(self, session_factory: sessionmaker[Session]) -> bool:
        self._next_check = self._clock() + self._refresh_seconds
        with session_factory() as session:
            stamp = tuple(session.execute(_STAMP).one())
            if stamp == self._stamp:
                return False
            rows = session.execute(_ROWS).all()
        scheduled: list[ScheduledVersion] = []
        for row in rows:
            key = (row.version, row.sha256, row.effective_at)
            table = self._built.get(key)
            if table is None:
                try:
                    table = PriceTable({**row.catalog, "version": row.version, "effective_at": row.effective_at})
                except ValueError as exc:
                    # Validated when loaded; a row that no longer validates (a newer code's format) is skipped
                    # loudly rather than stopping every price.
                    log.error("price version %s skipped: %s", row.version, exc)
                    continue
                self._built[key] = table
            scheduled.append(
                ScheduledVersion(row.version, row.effective_at, table, "database", row.loaded_at, row.note)
            )
        ids = {v.version for v in scheduled}
        base = self._base
        if base.version not in ids:
            scheduled.append(ScheduledVersion(base.version, base.effective_at or BEGINNING, base, "file"))
        self._set_schedule(scheduled)
        self._stamp = stamp
        return True

    def _set_schedule(self, versions: list[ScheduledVersion]) -> None:
        ordered = tuple(sorted(versions, key=lambda v: v.effective_at))  # stable: loading order breaks ties
        # Two attributes read without the lock: a reader may see the new times with the old schedule for an
        # instant, so both are set from one tuple and the index is clamped; a stale pairing prices with a
        # neighbouring version for one call at the switch, never crashes.
        self._schedule, self._times = ordered, [v.effective_at for v in ordered]


# -- loading a version (billing pricing load) ---------------------------------------------------------------
@dataclass(frozen=True)
class LoadResult:
    version: str
    effective_at: datetime
    created: bool  # False: the same version and content were loaded before (a no-op)


def load_version(
    session_factory: sessionmaker[Session],
    table: PriceTable,
    *,
    effective_at: datetime,
    note: str | None = None,
    force: bool = False,
    base: PriceTable | None = None,
    now: datetime | None = None,
) -> LoadResult:
    """Schedule ``table`` as a catalog version taking effect at ``effective_at``.

    Refuses (``InvalidCommand``) a table without a version id, a naive or past effective time (unless
    ``force``: a past time re-prices nothing already charged, but it would explain new charges with a time
    that never was), and the id of the file's own version (``base``) with other content; the same version
    with the same content and time is a no-op; the same id with other content or another time is an
    ``IdempotencyConflict``: a version id names one content forever, so old charges stay explained.
    """
    if table.version is None:
        raise InvalidCommand('the catalog has no version id; add a "version" to the file', field="version")
    if effective_at.tzinfo is None:
        raise InvalidCommand("the effective time must carry a time zone (e.g. +00:00)", field="effective_at")
    effective_at = effective_at.astimezone(UTC)
    now = now or utcnow()
    if effective_at < now and not force:
        raise InvalidCommand(
            f"effective time {effective_at.isoformat()} is in the past (now {now.isoformat()}); use --force to "
            "load it anyway",
            field="effective_at",
        )
    if base is not None and base.version == table.version and base.sha256 != table.sha256:
        raise IdempotencyConflict(
            f"version {table.version!r} is the catalog file's own version, with other content; choose a new id",
            version=table.version,
        )
    params = {
        "v": table.version,
        "at": effective_at,
        "catalog": dict(table.catalog),
        "sha": table.sha256,
        "note": note,
    }
    with session_factory() as session, session.begin():
        created = session.execute(_INSERT, params).scalar() is not None
        if created:
            return LoadResult(table.version, effective_at, True)
        existing = session.execute(_ONE, {"v": table.version}).one()
    if existing.sha256 != table.sha256:
        raise IdempotencyConflict(
            f"version {table.version!r} was loaded before with other content; choose a new version id",
            version=table.version,
        )
    if existing.effective_at != effective_at:
        raise IdempotencyConflict(
            f"version {table.version!r} is already scheduled at {existing.effective_at.isoformat()}; load it "
            "under a new version id to schedule it at another time",
            version=table.version,
            effective_at=existing.effective_at.isoformat(),
        )
    return LoadResult(table.version, effective_at, False)


# -- comparing versions (billing pricing diff) ---------------------------------------------------------------
def price_points(table: PriceTable) -> dict[str, str]:
    """Every price of a table as ``path -> value`` (strings), the unit ``diff_tables`` compares."""
    spec = table.spec
    points = {
        "credit.usd_per_credit": str(spec.credit.usd_per_credit),
        "credit.markup": str(spec.credit.markup),
        "token_bundle.tokens_per_credit": str(spec.token_bundle.tokens_per_credit),
    }
    for provider, models in spec.llm_tokens.items():
        for model, entry in models.items():
            at = f"llm_tokens.{provider}.{model}"
            for name, value in entry.model_dump(exclude_none=True).items():
                points[f"{at}.{name}"] = str(value)
    for code, tier in spec.tiers.items():
        points[f"tiers.{code}.fee"] = str(tier.fee)
        points[f"tiers.{code}.requires_system_credits"] = str(tier.requires_system_credits).lower()
    for code, fee in spec.fees.items():
        points[f"fees.{code}"] = str(fee)
    for code, agent in spec.agents.items():
        points[f"agents.{code}.credits"] = str(agent.credits)
    return points


@dataclass(frozen=True)
class PriceChange:
    path: str
    old: str | None  # None: added
    new: str | None  # None: removed

    @property
    def kind(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"


def diff_tables(old: PriceTable, new: PriceTable) -> list[PriceChange]:
    """What changed from ``old`` to ``new``, by path: added, removed and changed prices (numbers compared as
    decimals, so ``2.5`` and ``2.50`` are the same price)."""
    before, after = price_points(old), price_points(new)
    changes = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is not None and b is not None and _same(a, b):
            continue
        changes.append(PriceChange(path, a, b))
    return changes


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False
