"""The events pass: every 15 minutes, Stripe's events since the stored checkpoint (minus an overlap) read
through ``GET /v1/events``; any the inbox lacks is stored (``source = 'reconciliation'``) and handled by the
normal path (``stripe_events.process_event``), oldest first.

The walk is Stripe's own order, newest first, page after page (``created[gte]`` fixed for the run,
``starting_after`` the last id of the previous page); each page's inserts and the run's place in the walk
(``reconciliation_runs.checkpoint``) commit together, so a run killed half way resumes where it stopped and
stores nothing twice (the insert is ``ON CONFLICT DO NOTHING`` on the event id anyway). The stored checkpoint
(``reconciliation_checkpoints``) moves only when the whole window is stored. One run at a time (an advisory
lock). No lock is held on inbox or wallet rows while Stripe is asked anything (DESIGN rule 10).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from sqlalchemy import ARRAY, Table, Text, any_, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db.tables import ReconciliationCheckpoint, ReconciliationRun, StripeEvent
from billing_core.intake.stripe_events import MalformedEvent, check_event, process_event
from billing_core.reconcile.pacing import Paced, Pacer, pacer
from billing_core.stripe.event_handlers import StripeReader
from billing_core.stripe.purchases import PROCESSED

log = logging.getLogger(__name__)

KIND = "events"
SOURCE = "reconciliation"
PAGE_SIZE = 100
DEFAULT_OVERLAP = timedelta(minutes=10)
# Without a checkpoint (the first run) or ``--since``: as far back as Stripe keeps events.
FIRST_LOOKBACK = timedelta(days=30)
# pg_advisory_lock key of the events pass ("rec-evts").
_LOCK_KEY = 0x7265632D65767473

_EVENTS: Table = StripeEvent.__table__  # type: ignore[assignment]
_RUNS: Table = ReconciliationRun.__table__  # type: ignore[assignment]
_CHECKPOINTS: Table = ReconciliationCheckpoint.__table__  # type: ignore[assignment]


class EventLister(Protocol):
    def list_events_page(
        self,
        *,
        created_gte: int | None = None,
        created_lt: int | None = None,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]: ...


class EventsGateway(EventLister, StripeReader, Protocol):
    """What the pass needs of ``StripeGateway``: the event list, and what handlers read."""


class AnotherRunInProgress(Exception):
    """An events pass is running elsewhere; this one did nothing."""


@dataclass
class RunReport:
    id: int
    kind: str
    status: str
    window_start: datetime | None
    window_end: datetime | None
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    error: str | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def run_report(row: Any, *, resumed: bool = False) -> RunReport:
    return RunReport(
        id=row.id,
        kind=row.kind,
        status=row.status,
        window_start=row.window_start,
        window_end=row.window_end,
        started_at=row.started_at,
        finished_at=row.finished_at,
        counts=dict(row.counts or {}),
        resumed=resumed,
        error=row.error,
    )


def _ts(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _unix(value: datetime) -> int:
    return int(value.timestamp())


def _event_row(event: dict[str, Any]) -> dict[str, Any]:
    created = event.get("created")
    version = event.get("api_version")
    return {
        "id": event["id"],
        "type": event["type"],
        "api_version": version if isinstance(version, str) else None,
        "livemode": event.get("livemode") is True,
        "created": _ts(created) if isinstance(created, int) and not isinstance(created, bool) else None,
        "payload": event,
        "source": SOURCE,
    }


# A page's ids against the inbox in one query; only the events it lacks are inserted. In the steady state (the
# webhooks delivered everything) a page costs this one indexed read, not a 100-row insert that conflicts.
_KNOWN_IDS = select(_EVENTS.c.id).where(_EVENTS.c.id == any_(bindparam("ids", type_=ARRAY(Text()))))
# Parameters as a list: one statement, compiled once (SQLAlchemy's insertmanyvalues sends it as one INSERT).
_INSERT_MISSING = pg_insert(_EVENTS).on_conflict_do_nothing(index_elements=[_EVENTS.c.id]).returning(_EVENTS.c.id)


def _store_page(session: Session, events: list[dict[str, Any]]) -> list[str]:
    """Insert the events the inbox lacks; their ids."""
    if not events:
        return []
    known = set(session.execute(_KNOWN_IDS, {"ids": [e["id"] for e in events]}).scalars())
    rows = [_event_row(e) for e in events if e["id"] not in known]
    if not rows:
        return []
    # ON CONFLICT still: a webhook may store one of them between the read and this insert.
    return [str(r) for r in session.execute(_INSERT_MISSING, rows).scalars()]


def _open_run(session: Session, since: datetime | None, overlap: timedelta, now: datetime) -> tuple[Any, bool]:
    """The run to carry on: the last one, when it did not finish (and no ``since`` was asked), else a new one."""
    last = session.execute(
        select(_RUNS).where(_RUNS.c.kind == KIND).order_by(_RUNS.c.id.desc()).limit(1).with_for_update()
    ).first()
    if since is None and last is not None and last.status != "done" and last.checkpoint is not None:
        session.execute(update(_RUNS).where(_RUNS.c.id == last.id).values(status="running", error=None))
        return session.execute(select(_RUNS).where(_RUNS.c.id == last.id)).one(), True
    if since is None:
        checkpoint = session.execute(
            select(_CHECKPOINTS.c.created_at).where(_CHECKPOINTS.c.kind == KIND)
        ).scalar_one_or_none()
        since = (checkpoint - overlap) if checkpoint is not None else now - FIRST_LOOKBACK
    if last is not None and last.status == "running":
        # Its process died (we hold the lock): close it, it is superseded.
        session.execute(
            update(_RUNS)
            .where(_RUNS.c.id == last.id)
            .values(status="failed", error="superseded", finished_at=func.now())
        )
    row = session.execute(
        pg_insert(_RUNS).values(kind=KIND, window_start=since, checkpoint={}, counts={}).returning(*_RUNS.c)
    ).one()
    return row, False


def reconcile_events(
    session_factory: sessionmaker[Session],
    gateway: EventsGateway,
    *,
    since: datetime | None = None,
    overlap: timedelta = DEFAULT_OVERLAP,
    requests_per_second: float = 80.0,
    page_size: int = PAGE_SIZE,
    pace: Pacer | None = None,
    process: Callable[[str], str] | None = None,
    after_page: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> RunReport:
    """One events pass (or the rest of an unfinished one); its recorded run.

    ``process``: how a stored event is handled (default ``process_event`` with the gateway reading Stripe);
    ``after_page(pages)``: called after each page is committed (tests stop a run there); ``pace``: the request
    pacing (default a ``requests_per_second`` token bucket that honours 429's ``Retry-After``).
    """
    engine = session_factory.kw["bind"]
    pace = pace or pacer(requests_per_second)
    reader: StripeReader = Paced(gateway, pace)  # the gateway's methods, paced
    process = process or (lambda event_id: process_event(session_factory, reader, event_id))
    with engine.connect() as lock_conn:
        if not lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar():
            raise AnotherRunInProgress("another events reconciliation is running")
        try:
            return _run(session_factory, gateway, since, overlap, page_size, pace, process, after_page, now)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            lock_conn.commit()


def _run(
    session_factory: sessionmaker[Session],
    gateway: EventLister,
    since: datetime | None,
    overlap: timedelta,
    page_size: int,
    pace: Pacer,
    process: Callable[[str], str],
    after_page: Callable[[int], None] | None,
    now: datetime | None,
) -> RunReport:
    with session_factory.begin() as session:
        run, resumed = _open_run(session, since, overlap, now or datetime.now(UTC))
    run_id, window_start = run.id, run.window_start
    place: dict[str, Any] = dict(run.checkpoint or {})
    counts: Counter[str] = Counter(run.counts or {})
    requests_before, limited_before = pace.requests, pace.rate_limited
    try:
        if not place.get("stored"):
            _walk(session_factory, gateway, run_id, window_start, place, counts, page_size, pace, after_page)
        _apply_missing(session_factory, run_id, place, counts, process)
    except Exception as exc:
        counts["requests"] += pace.requests - requests_before
        counts["rate_limited"] += pace.rate_limited - limited_before
        with session_factory.begin() as session:
            session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(status="failed", error=f"{type(exc).__name__}: {exc}", counts=dict(counts))
            )
        raise
    counts["requests"] += pace.requests - requests_before
    counts["rate_limited"] += pace.rate_limited - limited_before
    window_end = _ts(place["max_created"]) if place.get("max_created") is not None else None
    with session_factory.begin() as session:
        if window_end is not None:
            _advance_checkpoint(session, window_end, place.get("max_id"))
        row = session.execute(
            update(_RUNS)
            .where(_RUNS.c.id == run_id)
            .values(
                status="done",
                finished_at=func.now(),
                window_end=window_end or func.now(),
                counts=dict(counts),
                checkpoint=place,
            )
            .returning(*_RUNS.c)
        ).one()
    return run_report(row, resumed=resumed)


def _walk(
    session_factory: sessionmaker[Session],
    gateway: EventLister,
    run_id: int,
    window_start: datetime | None,
    place: dict[str, Any],
    counts: Counter[str],
    page_size: int,
    pace: Pacer,
    after_page: Callable[[int], None] | None,
) -> None:
    """Store the window's events the inbox lacks, page by page, each page committed with the run's place.

    The next page is asked for while this one is stored: its cursor is this page's last id, whatever the inbox
    holds, so Stripe's answer time and ours overlap instead of adding up (at the rate limit, a page stored in
    turn after its answer costs the walk a third of its pace). One page ahead at most, through the same pacer,
    which is only ever used by that one thread meanwhile."""
    created_gte = _unix(window_start) if window_start is not None else None

    def fetch(cursor: str | None) -> dict[str, Any]:
        return pace.call(
            partial(gateway.list_events_page, created_gte=created_gte, starting_after=cursor, limit=page_size)
        )

    pages = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile-events") as ahead_of_us:
        ahead = ahead_of_us.submit(fetch, place.get("starting_after"))
        try:
            while True:
                page = ahead.result()
                done = not page["has_more"] or not page["data"]
                if not done:
                    ahead = ahead_of_us.submit(fetch, page["data"][-1]["id"])
                _store(session_factory, run_id, page, place, counts, done)
                pages += 1
                if done:
                    return
                if after_page is not None:
                    after_page(pages)
        finally:
            ahead.cancel()  # stopped early (an error, a test's kill): the page asked ahead is not stored


def _store(
    session_factory: sessionmaker[Session],
    run_id: int,
    page: dict[str, Any],
    place: dict[str, Any],
    counts: Counter[str],
    done: bool,
) -> None:
    """One page: the events the inbox lacks stored, and the run's place moved past the page, in one commit."""
    events: list[dict[str, Any]] = []
    for event in page["data"]:
        try:
            events.append(check_event(event))
        except MalformedEvent:
            counts["malformed"] += 1
    counts["read"] += len(page["data"])
    counts["pages"] += 1
    for event in events:
        created = event.get("created")
        if isinstance(created, int) and created > (place.get("max_created") or 0):
            place["max_created"], place["max_id"] = created, event["id"]
    with session_factory.begin() as session:
        # Not waiting for this commit's WAL flush: a crash may lose the last pages' commits, inserts and place
        # together, and the resumed run reads those pages again (what they store is in Stripe, and inserts are
        # idempotent). The stored checkpoint, which decides what later runs skip, commits durably.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        inserted = _store_page(session, events)
        counts["missing"] += len(inserted)
        if page["data"]:
            place["starting_after"] = page["data"][-1]["id"]
        place["stored"] = done
        session.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(checkpoint=dict(place), counts=dict(counts)))
    if inserted:
        log.warning("reconciliation stored %d events the webhooks missed", len(inserted))


# At most this many stored events are handled by one run; the rest are pending in the inbox, where the
# worker's sweep drains them anyway (and the next run handles more).
APPLY_LIMIT = 10_000


def _apply_missing(
    session_factory: sessionmaker[Session],
    run_id: int,
    place: dict[str, Any],
    counts: Counter[str],
    process: Callable[[str], str],
) -> None:
    """Handle the events reconciliation stored that are still pending, oldest first (a refund after its
    purchase), by the normal path. Read from the inbox, not remembered: a resumed run finds those of its first
    attempt the same way, and one a worker handled meanwhile is not pending any more."""
    with session_factory() as session:
        ordered = list(
            session.execute(
                select(_EVENTS.c.id)
                .where(_EVENTS.c.source == SOURCE, _EVENTS.c.status == "pending")
                .order_by(_EVENTS.c.created.asc().nulls_first(), _EVENTS.c.id)
                .limit(APPLY_LIMIT)
            ).scalars()
        )
    for event_id in ordered:
        status = process(event_id)
        counts[f"status_{status}"] += 1
        if status == PROCESSED:
            counts["applied"] += 1
    with session_factory.begin() as session:
        session.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(checkpoint=dict(place), counts=dict(counts)))


def _advance_checkpoint(session: Session, created_at: datetime, last_event_id: str | None) -> None:
    statement = pg_insert(_CHECKPOINTS).values(
        kind=KIND, created_at=created_at, last_event_id=last_event_id, updated_at=func.now()
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[_CHECKPOINTS.c.kind],
            set_={"created_at": created_at, "last_event_id": last_event_id, "updated_at": func.now()},
            where=_CHECKPOINTS.c.created_at <= created_at,
        )
    )


def recent_runs(session_factory: sessionmaker[Session], *, kind: str | None = None, limit: int = 10) -> list[RunReport]:
    query = select(_RUNS).order_by(_RUNS.c.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(_RUNS.c.kind == kind)
    with session_factory() as session:
        return [run_report(row) for row in session.execute(query)]
