"""The usage inbox: reports are stored here before they are acknowledged, then applied by workers.

Intake writes rows (``INSERT ... ON CONFLICT DO NOTHING``: the idempotency key is unique, so a report sent
twice, over HTTP and over Celery, lands once). Workers claim one partition's oldest open rows, apply them
through ``batch_debit`` in the same transaction that marks them, and so a crash anywhere repeats the claim
but never its effect. Claiming, marking, backoff, dead letters and the row-by-row fallback are the shared
inbox mechanism (``inbox.py``); this module holds what is particular to usage.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Row, Table, Text, any_, bindparam, cast, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.db.tables import Hold, UsageInboxRow, Wallet
from billing_core.errors import BillingError, IdempotencyConflict
from billing_core.intake.inbox import BatchResult, Inbox, apply_batch, array_of, array_param
from billing_core.intake.usage_reports import AcceptedReport
from billing_core.ledger.batch_debit import APPLIED, DUPLICATE, debit_usage_batch
from billing_core.ledger.book import Book, bulk_execute
from billing_core.ledger.commands import CaptureHold, DebitUsage
from billing_core.ledger.handlers import capture_hold

LEDGER_KEY_PREFIX = "usage:"
MAX_ATTEMPTS = 8
# Rows claimed and applied per transaction. Measured with bench.ingest (4 pairs of runs): 1,000 applies about
# 7% more reports per second than 500 (the statements of a batch cost the same whatever its size), 250 about
# 15% fewer; a batch of 1,000 is one transaction of ~0.1 s.
BATCH_SIZE = 1000
# pg_try_advisory_xact_lock(namespace, partition): one worker per partition at a time.
ADVISORY_NAMESPACE = 0x0B11
APPLIED_STATUS, REJECTED_STATUS, FAILED_STATUS = "applied", "rejected", "failed"

_TABLE: Table = UsageInboxRow.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
usage = _TABLE.c

USAGE_INBOX = Inbox(
    _TABLE,
    key_column=usage.idempotency_key,
    retry_statuses=(FAILED_STATUS,),
    error_column=usage.reason,
    done_at_column=usage.applied_at,
    max_attempts=MAX_ATTEMPTS,
    done_columns=(usage.entry_id, usage.reason_code, usage.reason),
    failure_code=(usage.reason_code, "processing_error"),
)
# The statements of this module that do not vary, built once (see inbox.py).
_EARLIER = select(usage.idempotency_key, usage.fingerprint, usage.status).where(
    usage.idempotency_key == any_(array_param("k", usage.idempotency_key))
)
_STORE_REFUSED = (
    insert(_TABLE)
    .values(
        idempotency_key=bindparam("k"),
        fingerprint=bindparam("fp"),
        account=bindparam("acc"),
        partition=0,
        amount_mc=0,
        report=cast(bindparam("rep", type_=Text), JSONB),  # JSON text already (dumped with default=str)
        source=bindparam("src"),
        status=REJECTED_STATUS,
        reason_code=bindparam("code"),
        reason=bindparam("why"),
        applied_at=func.now(),
    )
    .on_conflict_do_nothing(index_elements=[usage.idempotency_key])
    .returning(usage.idempotency_key)
)
_holds: Table = Hold.__table__  # type: ignore[assignment]
_wallets: Table = Wallet.__table__  # type: ignore[assignment]
_HOLD_OWNER = (
    select(_wallets.c.account)
    .join_from(_holds, _wallets, _wallets.c.id == _holds.c.wallet_id)
    .where(_holds.c.id == bindparam("h"))
)
# Two int4 keys: (ADVISORY_NAMESPACE, partition), not the one-bigint form, another lock space.
_PARTITION_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("ns", type_=Integer), bindparam("p", type_=Integer)))
_CLAIM_COLUMNS = (
    usage.id,
    usage.idempotency_key,
    usage.account,
    usage.amount_mc,
    usage.hold_id,
    usage.occurred_at,
    usage.report,
)
_STATUS = select(
    usage.idempotency_key,
    usage.status,
    usage.amount_mc,
    usage.entry_id,
    usage.reason_code,
    usage.reason,
    usage.attempts,
    usage.received_at,
    usage.applied_at,
).where(usage.idempotency_key == bindparam("k"))
_DUE_PARTITIONS = USAGE_INBOX.due_query(usage.partition, order_by=(usage.partition,), distinct=True)


def public_status(status: str) -> str:
    """What a client is told: ``pending`` until applied or rejected (failing and dead rows are still
    pending to it: an operator may yet replay them)."""
    return status if status in (APPLIED_STATUS, REJECTED_STATUS) else "pending"


@dataclass
class StoreResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    # The public status (pending | applied | rejected) of each duplicate's stored report.
    duplicate_statuses: dict[str, str] = field(default_factory=dict)
    partitions: set[int] = field(default_factory=set)


# Called inside the store's transaction with the reports it inserted (token limits: pricing/limits.py); raising
# refuses the request (nothing stored); the callable it returns undoes its effect if the commit then fails.
AdmitHook = Callable[[Session, list[AcceptedReport]], Callable[[], None] | None]


def store_usage(
    session_factory: sessionmaker[Session],
    reports: list[AcceptedReport],
    *,
    source: str = "http",
    admit: AdmitHook | None = None,
) -> StoreResult:
    """Store accepted reports in one transaction. Keys seen before with the same body are duplicates; a key
    seen before with another body raises ``IdempotencyConflict`` and nothing of the request is stored.
    ``admit`` sees the newly inserted reports before the commit (see ``AdmitHook``)."""
    return unit_of_work.retry_transient(lambda: _store_once(session_factory, reports, source, admit))


def _store_once(
    session_factory: sessionmaker[Session], reports: list[AcceptedReport], source: str, admit: AdmitHook | None = None
) -> StoreResult:
    undo: list[Callable[[], None]] = []
    try:
        return _store_admitted(session_factory, reports, source, admit, undo)
    except BaseException:
        # Admitted, then the commit failed: give the admission back (a retry admits again).
        for give_back in undo:
            give_back()
        raise


def _store_admitted(
    session_factory: sessionmaker[Session],
    reports: list[AcceptedReport],
    source: str,
    admit: AdmitHook | None,
    undo: list[Callable[[], None]],
) -> StoreResult:
    result = StoreResult()
    if not reports:
        return result
    # A key repeated within the request is stored once: one statement cannot insert (or, for a refused row,
    # update) the same key twice. Repeated with another body, it is a conflict like any reused key.
    first: dict[str, AcceptedReport] = {}
    for r in reports:
        first.setdefault(r.idempotency_key, r)
    repeated = sorted({r.idempotency_key for r in reports if first[r.idempotency_key].fingerprint != r.fingerprint})
    if repeated:
        raise IdempotencyConflict(
            "idempotency key already used with a different report; nothing was stored",
            idempotency_keys=repeated[:50],
        )
    unique = list(first.values())
    with session_factory() as session, session.begin():
        rows = bulk_execute(
            session,
            """
            INSERT INTO usage_inbox (idempotency_key, fingerprint, account, partition, amount_mc, hold_id,
                                     occurred_at, report, source)
            SELECT k, fp, acc, part, amt, hold, occ, CAST(rep AS jsonb), %(src)s
            FROM unnest(CAST(%(keys)b AS text[]), CAST(%(fps)b AS text[]), CAST(%(accs)b AS text[]),
                        CAST(%(parts)b AS smallint[]), CAST(%(amts)b AS bigint[]), CAST(%(holds)b AS text[]),
                        CAST(%(occs)b AS timestamptz[]), CAST(%(reps)b AS text[]))
                 WITH ORDINALITY AS t(k, fp, acc, part, amt, hold, occ, rep, n)
            ORDER BY n
            ON CONFLICT (idempotency_key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, account = EXCLUDED.account,
                    partition = EXCLUDED.partition, amount_mc = EXCLUDED.amount_mc, hold_id = EXCLUDED.hold_id,
                    occurred_at = EXCLUDED.occurred_at, report = EXCLUDED.report, source = EXCLUDED.source,
                    status = 'pending', attempts = 0, reason_code = NULL, reason = NULL, entry_id = NULL,
                    received_at = now(), next_attempt_at = now(), applied_at = NULL
                -- a report refused as invalid (see store_refused) does not hold its key: the corrected one
                -- takes its place, as a request that failed validation saves nothing at Stripe
                -- (nor does one refused by a token limit: sent again later, it is admitted or refused again)
                WHERE usage_inbox.reason_code IN ('invalid_usage', 'rate_limited', 'quota_exceeded',
                                                  'limits_unavailable')
            RETURNING idempotency_key
            """,
            {
                "src": source,
                "keys": [r.idempotency_key for r in unique],
                "fps": [r.fingerprint for r in unique],
                "accs": [r.account for r in unique],
                "parts": [r.partition for r in unique],
                "amts": [r.amount_mc for r in unique],
                "holds": [r.hold_id for r in unique],
                "occs": [r.occurred_at for r in unique],
                "reps": [r.report_json for r in unique],
            },
        )
        inserted = {row[0] for row in rows}
        others = [r for r in unique if r.idempotency_key not in inserted]
        # Reports stored by this request are pending; earlier ones are read with their fingerprints (the
        # statement a duplicate costs anyway), so a duplicate's answer tells where its report really is.
        statuses = dict.fromkeys(inserted, "pending")
        if others:
            earlier = {
                row.idempotency_key: row
                for row in session.execute(_EARLIER, {"k": sorted({r.idempotency_key for r in others})}).all()
            }
            conflicts = sorted(
                {
                    r.idempotency_key
                    for r in others
                    if r.idempotency_key not in earlier or earlier[r.idempotency_key].fingerprint != r.fingerprint
                }
            )
            if conflicts:
                raise IdempotencyConflict(
                    "idempotency key already used with a different report; nothing was stored",
                    idempotency_keys=conflicts[:50],
                )
            statuses.update({key: public_status(row.status) for key, row in earlier.items()})
        if admit is not None:
            # Before the commit, and only the reports this request inserted: a refusal rolls everything back,
            # and a duplicate (or a concurrent copy, which waits on the new rows' keys) is never counted twice.
            give_back = admit(session, [r for r in unique if r.idempotency_key in inserted])
            if give_back is not None:
                undo.append(give_back)
        seen: set[str] = set()
        for r in reports:
            if r.idempotency_key in inserted and r.idempotency_key not in seen:
                result.accepted.append(r.idempotency_key)
                result.partitions.add(r.partition)
            else:
                result.duplicates.append(r.idempotency_key)
                result.duplicate_statuses[r.idempotency_key] = statuses[r.idempotency_key]
            seen.add(r.idempotency_key)
    return result


INVALID_USAGE = "invalid_usage"


def store_refused(
    session_factory: sessionmaker[Session],
    payload: object,
    problems: list[dict[str, Any]],
    *,
    source: str,
    code: str = INVALID_USAGE,
) -> list[str]:
    """Keep the reports of a refused request that nobody was told about (the Celery path has no caller to
    answer) as ``rejected`` rows, so that ``GET /v1/usage/<key>`` and the operator can see why; returns their
    keys. A report without a usable idempotency key cannot be looked up and is only logged by the caller. The
    row does not hold its key: a corrected report with the same key replaces it (``store_usage``)."""
    items = payload.get("events") if isinstance(payload, dict) and "events" in payload else [payload]
    if not isinstance(items, list):
        return []
    rows: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        key = item.get("idempotency_key") if isinstance(item, dict) else None
        if not isinstance(key, str) or not 0 < len(key) <= 255 or "\x00" in key:
            continue
        own = [p for p in problems if p.get("index") in (index, -1)]
        reason = "; ".join(f"{p['field'] or 'report'}: {p['message']}" for p in own) or (
            "another report of the same batch is invalid; the batch was refused whole"
        )
        account = item.get("account")
        report = json.dumps(_without_nul(item), default=str, ensure_ascii=False)
        rows.append(
            {
                "k": key,
                "fp": hashlib.sha256(report.encode()).hexdigest(),
                "acc": account[:128] if isinstance(account, str) else "",
                "rep": report,
                "src": source,
                "code": code,
                "why": reason[:2000],
            }
        )
    if not rows:
        return []
    stored: list[str] = []
    with session_factory() as session, session.begin():
        for row in rows:  # rare and few: one statement each
            stored += session.execute(_STORE_REFUSED, row).scalars()
    return stored


def _without_nul(value: Any) -> Any:
    # jsonb cannot hold a NUL character; the report is kept to be read, not replayed
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


# -- applying -------------------------------------------------------------------------------------------
Verdict = tuple[int, str, int | None, str | None, str | None]  # (id, status, entry id, reason code, reason)


def _entry_metadata(report: dict[str, Any]) -> dict[str, Any]:
    # What the transaction history shows: what was used, the app's own metadata, and how it was priced at
    # intake (price_version, mode, breakdown: usage_reports.accept_reports); a report stored before prices
    # were recorded has no pricing.
    return {"items": report["items"], "metadata": report.get("metadata") or {}, **(report.get("pricing") or {})}


def _apply_rows(book: Book, rows: list[Row[Any]]) -> list[Verdict]:
    """Apply claimed rows; one verdict per row: (id, status, entry id, reason code, reason)."""
    verdicts: list[Verdict] = []
    plain = [r for r in rows if r.hold_id is None and r.amount_mc > 0]
    verdicts += [(r.id, "applied", None, None, None) for r in rows if r.hold_id is None and r.amount_mc == 0]
    if plain:
        commands = [
            DebitUsage(
                account=r.account,
                amount_mc=r.amount_mc,
                idempotency_key=LEDGER_KEY_PREFIX + r.idempotency_key,
                occurred_at=r.occurred_at,
                metadata=_entry_metadata(r.report),
            )
            for r in plain
        ]
        for row, outcome in zip(plain, debit_usage_batch(book, commands), strict=True):
            if outcome.status in (APPLIED, DUPLICATE):
                verdicts.append((row.id, "applied", outcome.entry_id, None, None))
            else:
                assert outcome.error is not None
                verdicts.append((row.id, "rejected", None, outcome.error.code, outcome.error.message))
    for row in (r for r in rows if r.hold_id is not None):
        verdicts.append(_capture_for_report(book, row))
    return verdicts


def _capture_for_report(book: Book, row: Row[Any]) -> Verdict:
    """A report naming a hold settles that hold at the reported amount (a fresh ``Book``: the batch's has
    flushed, and a refusal here must not leave drafts behind for the next row)."""
    owner = book.session.execute(_HOLD_OWNER, {"h": row.hold_id}).scalar()
    if owner is not None and owner != row.account:
        return (row.id, "rejected", None, "hold_account_mismatch", f"hold {row.hold_id} belongs to another account")
    cmd = CaptureHold(
        hold_id=row.hold_id,
        amount_mc=row.amount_mc,
        idempotency_key=LEDGER_KEY_PREFIX + row.idempotency_key,
        metadata=_entry_metadata(row.report),
    )
    try:
        receipt = capture_hold(Book(book.session, book.now), cmd)
    except BillingError as exc:
        return (row.id, "rejected", None, exc.code, exc.message)
    return (row.id, "applied", receipt.entry_id, None, None)


def _apply_and_record(uow: unit_of_work.UnitOfWork, rows: list[Row[Any]]) -> BatchResult:
    verdicts = _apply_rows(uow.book, rows)
    USAGE_INBOX.mark_done(
        uow.session,
        [v[0] for v in verdicts],
        [v[1] for v in verdicts],
        {
            "entry_id": [v[2] for v in verdicts],
            "reason_code": [v[3] for v in verdicts],
            "reason": [v[4] for v in verdicts],
        },
    )
    return BatchResult(claimed=len(rows), outcomes=Counter(v[1] for v in verdicts))


def _combined(results: list[BatchResult]) -> BatchResult:
    total = BatchResult(more=True)  # the batch fell back row by row: look again for more
    for result in results:
        total.add(result)
    return total


def apply_partition(
    session_factory: sessionmaker[Session], partition: int, *, batch_size: int = BATCH_SIZE, now: datetime | None = None
) -> BatchResult:
    """Claim and apply up to ``batch_size`` open rows of one partition in one transaction; a batch that
    raises is retried row by row, so that a single bad row is marked ``failed`` alone."""

    def batch(uow: unit_of_work.UnitOfWork, claimed: list[int]) -> BatchResult:
        locked = uow.session.execute(_PARTITION_LOCK, {"ns": ADVISORY_NAMESPACE, "p": partition}).scalar()
        if not locked:
            return BatchResult(busy=True)
        rows = USAGE_INBOX.claim(uow.session, _CLAIM_COLUMNS, where=usage.partition == partition, limit=batch_size)
        claimed.extend(r.id for r in rows)
        result = _apply_and_record(uow, rows)
        result.more = len(rows) == batch_size
        return result

    return apply_batch(session_factory, batch, lambda row_id: apply_rows(session_factory, [row_id], now=now), _combined)


def apply_rows(session_factory: sessionmaker[Session], ids: list[int], *, now: datetime | None = None) -> BatchResult:
    """Apply the given open rows (due or not) in one transaction; on an error, mark them failed (or dead)."""

    def work(uow: unit_of_work.UnitOfWork) -> BatchResult:
        where = usage.id == any_(literal(ids, array_of(usage.id)))
        rows = USAGE_INBOX.claim(uow.session, _CLAIM_COLUMNS, where=where, due_only=False)
        return _apply_and_record(uow, rows)

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Exception as exc:
        if unit_of_work.database_unreachable(session_factory):
            raise
        USAGE_INBOX.mark_failed(session_factory, ids, FAILED_STATUS, f"{type(exc).__name__}: {exc}")
        return BatchResult(claimed=len(ids), outcomes=Counter({FAILED_STATUS: len(ids)}))


# -- reading --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UsageStatus:
    idempotency_key: str
    status: str  # public: pending | applied | rejected
    amount_mc: int
    entry_id: int | None
    reason_code: str | None  # why it was rejected; while failing, the last processing error
    reason: str | None
    received_at: datetime
    applied_at: datetime | None  # when it was applied or rejected; None while pending
    processing: str  # the row itself: pending | failed | dead | applied | rejected
    attempts: int


def usage_status(session_factory: sessionmaker[Session], key: str) -> UsageStatus | None:
    """Where a report stands, or None for a key never stored."""
    with session_factory() as session:
        row = session.execute(_STATUS, {"k": key}).first()
    if row is None:
        return None
    public = public_status(row.status)
    return UsageStatus(
        idempotency_key=row.idempotency_key,
        status=public,
        amount_mc=row.amount_mc,
        entry_id=row.entry_id,
        reason_code=row.reason_code,
        reason=row.reason,
        received_at=row.received_at,
        applied_at=row.applied_at if public != "pending" else None,
        processing=row.status,
        attempts=row.attempts,
    )


def due_partitions(
    session_factory: sessionmaker[Session], *, stale_after: timedelta = timedelta(seconds=30)
) -> list[int]:
    """Partitions with rows a message should have applied by now (the broker lost or delayed it), or failed
    rows whose retry time has come."""
    rows = USAGE_INBOX.due(session_factory, _DUE_PARTITIONS, stale_after_seconds=stale_after.total_seconds())
    return [row.partition for row in rows]


def reopen(session_factory: sessionmaker[Session], key: str) -> int | None:
    """Make a dead (or failed) row due again now, with a fresh attempt count; returns its id."""
    row_id = USAGE_INBOX.reopen(session_factory, key)
    return None if row_id is None else int(row_id)
