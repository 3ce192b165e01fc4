"""The usage inbox: reports are stored here before they are acknowledged, then applied by workers.

Intake writes rows (``INSERT ... ON CONFLICT DO NOTHING``: the idempotency key is unique, so a report sent
twice, over HTTP and over Celery, lands once). Workers claim one partition's oldest open rows, apply them
through ``usage_batch`` in the same transaction that marks them, and so a crash anywhere repeats the claim
but never its effect. A batch that fails is retried row by row, so one poisoned report cannot hold up the
others; a row that keeps failing ends ``dead`` for an operator to inspect and replay.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import BillingError, IdempotencyConflict
from billing_core.intake.usage_reports import AcceptedReport
from billing_core.ledger.batch_debit import APPLIED, DUPLICATE, debit_usage_batch
from billing_core.ledger.book import Book, bulk_execute
from billing_core.ledger.commands import CaptureHold, DebitUsage
from billing_core.ledger.handlers import capture_hold
from billing_core.units import format_credits

LEDGER_KEY_PREFIX = "usage:"
MAX_ATTEMPTS = 8
# Rows claimed and applied per transaction. Measured with bench.ingest (4 pairs of runs): 1,000 applies about
# 7% more reports per second than 500 (the statements of a batch cost the same whatever its size), 250 about
# 15% fewer; a batch of 1,000 is one transaction of ~0.1 s.
BATCH_SIZE = 1000
# pg_try_advisory_xact_lock(namespace, partition): one worker per partition at a time.
ADVISORY_NAMESPACE = 0x0B11


@dataclass
class StoreResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    partitions: set[int] = field(default_factory=set)


@dataclass
class BatchResult:
    partition: int | None
    claimed: int = 0
    applied: int = 0
    rejected: int = 0
    failed: int = 0
    busy: bool = False  # another worker holds the partition
    more: bool = False  # the claim was full: there may be more rows waiting


def store_usage(
    session_factory: sessionmaker[Session], reports: list[AcceptedReport], *, source: str = "http"
) -> StoreResult:
    """Store accepted reports in one transaction. Keys seen before with the same body are duplicates; a key
    seen before with another body raises ``IdempotencyConflict`` and nothing of the request is stored."""
    return unit_of_work.retry_transient(lambda: _store_once(session_factory, reports, source))


def _store_once(session_factory: sessionmaker[Session], reports: list[AcceptedReport], source: str) -> StoreResult:
    result = StoreResult()
    if not reports:
        return result
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
                WHERE usage_inbox.reason_code = 'invalid_usage'
            RETURNING idempotency_key
            """,
            {
                "src": source,
                "keys": [r.idempotency_key for r in reports],
                "fps": [r.fingerprint for r in reports],
                "accs": [r.account for r in reports],
                "parts": [r.partition for r in reports],
                "amts": [r.amount_mc for r in reports],
                "holds": [r.hold_id for r in reports],
                "occs": [r.occurred_at for r in reports],
                "reps": [r.report_json for r in reports],
            },
        )
        inserted = {row[0] for row in rows}
        others = [r for r in reports if r.idempotency_key not in inserted]
        if others:
            earlier = dict(
                session.execute(
                    text("SELECT idempotency_key, fingerprint FROM usage_inbox WHERE idempotency_key = ANY(:k)"),
                    {"k": sorted({r.idempotency_key for r in others})},
                ).all()
            )
            conflicts = sorted({r.idempotency_key for r in others if earlier.get(r.idempotency_key) != r.fingerprint})
            if conflicts:
                raise IdempotencyConflict(
                    "idempotency key already used with a different report; nothing was stored",
                    idempotency_keys=conflicts[:50],
                )
        seen: set[str] = set()
        for r in reports:
            if r.idempotency_key in inserted and r.idempotency_key not in seen:
                result.accepted.append(r.idempotency_key)
                result.partitions.add(r.partition)
            else:
                result.duplicates.append(r.idempotency_key)
            seen.add(r.idempotency_key)
    return result


INVALID_USAGE = "invalid_usage"


def store_refused(
    session_factory: sessionmaker[Session], payload: object, problems: list[dict[str, Any]], *, source: str
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
                "code": INVALID_USAGE,
                "reason": reason[:2000],
            }
        )
    if not rows:
        return []
    stored: list[str] = []
    with session_factory() as session, session.begin():
        for row in rows:  # rare and few: one statement each
            stored += session.execute(
                text(
                    "INSERT INTO usage_inbox (idempotency_key, fingerprint, account, partition, amount_mc, report, "
                    "source, status, reason_code, reason, applied_at) "
                    "VALUES (:k, :fp, :acc, 0, 0, CAST(:rep AS jsonb), :src, 'rejected', :code, :reason, now()) "
                    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
                ),
                row,
            ).scalars()
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
_CLAIM_COLUMNS = "id, idempotency_key, account, amount_mc, hold_id, occurred_at, report"


def _claim_partition(session: Session, partition: int, limit: int) -> list[Any]:
    return list(
        session.execute(
            text(
                f"SELECT {_CLAIM_COLUMNS} FROM usage_inbox "
                "WHERE partition = :p AND status IN ('pending', 'failed') AND next_attempt_at <= now() "
                "ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"p": partition, "n": limit},
        ).all()
    )


def _claim_ids(session: Session, ids: list[int]) -> list[Any]:
    return list(
        session.execute(
            text(
                f"SELECT {_CLAIM_COLUMNS} FROM usage_inbox "
                "WHERE id = ANY(:ids) AND status IN ('pending', 'failed') ORDER BY id FOR UPDATE SKIP LOCKED"
            ),
            {"ids": ids},
        ).all()
    )


def _entry_metadata(report: dict[str, Any]) -> dict[str, Any]:
    # What the transaction history shows: what was used, and the app's own metadata.
    return {"items": report["items"], "metadata": report.get("metadata") or {}}


def _apply_rows(book: Book, rows: list[Any]) -> list[tuple[int, str, int | None, str | None, str | None]]:
    """Apply claimed rows; one verdict per row: (id, status, entry id, reason code, reason)."""
    verdicts: list[tuple[int, str, int | None, str | None, str | None]] = []
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


def _capture_for_report(book: Book, row: Any) -> tuple[int, str, int | None, str | None, str | None]:
    """A report naming a hold settles that hold at the reported amount (a fresh ``Book``: the batch's has
    flushed, and a refusal here must not leave drafts behind for the next row)."""
    owner = book.session.execute(
        text("SELECT w.account FROM holds h JOIN wallets w ON w.id = h.wallet_id WHERE h.id = :h"), {"h": row.hold_id}
    ).scalar()
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


def _record(session: Session, verdicts: list[tuple[int, str, int | None, str | None, str | None]]) -> None:
    if not verdicts:
        return
    session.execute(
        text(
            """
            UPDATE usage_inbox u SET status = v.status, entry_id = v.entry_id, reason_code = v.code,
                   reason = v.reason, attempts = u.attempts + 1, applied_at = now()
            FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]), CAST(:entries AS bigint[]),
                        CAST(:codes AS text[]), CAST(:reasons AS text[])) AS v(id, status, entry_id, code, reason)
            WHERE u.id = v.id
            """
        ),
        {
            "ids": [v[0] for v in verdicts],
            "statuses": [v[1] for v in verdicts],
            "entries": [v[2] for v in verdicts],
            "codes": [v[3] for v in verdicts],
            "reasons": [v[4] for v in verdicts],
        },
    )


def apply_partition(
    session_factory: sessionmaker[Session], partition: int, *, batch_size: int = BATCH_SIZE, now: datetime | None = None
) -> BatchResult:
    """Claim and apply up to ``batch_size`` open rows of one partition in one transaction.

    A batch that raises is retried row by row (each row in its own transaction) so that a single bad row is
    marked ``failed`` alone; errors that are not about a row (the database is gone) propagate to the caller.
    """
    claimed_ids: list[int] = []

    def work(uow: unit_of_work.UnitOfWork) -> BatchResult:
        result = BatchResult(partition)
        locked = uow.session.execute(
            text("SELECT pg_try_advisory_xact_lock(:ns, :p)"), {"ns": ADVISORY_NAMESPACE, "p": partition}
        ).scalar()
        if not locked:
            result.busy = True
            return result
        rows = _claim_partition(uow.session, partition, batch_size)
        claimed_ids[:] = [r.id for r in rows]
        _tally(result, rows, _apply_and_record(uow, rows))
        result.more = len(rows) == batch_size
        return result

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Exception:
        if not claimed_ids or unit_of_work.database_unreachable(session_factory):
            raise
    result = BatchResult(partition, more=True)
    for row_id in claimed_ids:
        single = apply_rows(session_factory, [row_id], now=now)
        result.claimed += single.claimed
        result.applied += single.applied
        result.rejected += single.rejected
        result.failed += single.failed
    return result


def apply_rows(session_factory: sessionmaker[Session], ids: list[int], *, now: datetime | None = None) -> BatchResult:
    """Apply the given open rows in one transaction; on an error, mark them failed (or dead) with it."""

    def work(uow: unit_of_work.UnitOfWork) -> BatchResult:
        result = BatchResult(None)
        rows = _claim_ids(uow.session, ids)
        _tally(result, rows, _apply_and_record(uow, rows))
        return result

    try:
        return unit_of_work.run(session_factory, work, now=now)
    except Exception as exc:
        if unit_of_work.database_unreachable(session_factory):
            raise
        mark_failed(session_factory, ids, f"{type(exc).__name__}: {exc}")
        return BatchResult(None, claimed=len(ids), failed=len(ids))


def _apply_and_record(
    uow: unit_of_work.UnitOfWork, rows: list[Any]
) -> list[tuple[int, str, int | None, str | None, str | None]]:
    verdicts = _apply_rows(uow.book, rows)
    _record(uow.session, verdicts)
    return verdicts


def _tally(
    result: BatchResult, rows: list[Any], verdicts: list[tuple[int, str, int | None, str | None, str | None]]
) -> None:
    result.claimed = len(rows)
    result.applied = sum(1 for v in verdicts if v[1] == "applied")
    result.rejected = sum(1 for v in verdicts if v[1] == "rejected")


def backoff(attempts: int) -> timedelta:
    """Exponential with a cap: 2 s, 4 s, 8 s ... at most 10 minutes."""
    return timedelta(seconds=min(600, 2**attempts))


def mark_failed(session_factory: sessionmaker[Session], ids: list[int], error: str) -> None:
    with session_factory() as session, session.begin():
        session.execute(
            text(
                """
                UPDATE usage_inbox SET attempts = attempts + 1, reason_code = 'processing_error', reason = :err,
                       status = CASE WHEN attempts + 1 >= :max THEN 'dead' ELSE 'failed' END,
                       next_attempt_at = now() + make_interval(secs => least(600, power(2, attempts + 1)))
                WHERE id = ANY(:ids) AND status IN ('pending', 'failed')
                """
            ),
            {"ids": ids, "err": error[:2000], "max": MAX_ATTEMPTS},
        )


# -- reading --------------------------------------------------------------------------------------------
def usage_status(session_factory: sessionmaker[Session], key: str) -> dict[str, Any] | None:
    """The public status of a report: ``pending`` until applied or rejected (a failing row stays pending to
    the client, with ``attempts``; a dead one says so in ``processing``)."""
    with session_factory() as session:
        row = session.execute(
            text(
                "SELECT idempotency_key, status, amount_mc, entry_id, reason_code, reason, attempts, received_at, "
                "applied_at FROM usage_inbox WHERE idempotency_key = :k"
            ),
            {"k": key},
        ).first()
    if row is None:
        return None
    public = row.status if row.status in ("applied", "rejected") else "pending"
    out: dict[str, Any] = {
        "idempotency_key": row.idempotency_key,
        "status": public,
        "credits": format_credits(row.amount_mc),
        "reason": None,
        "entry_id": row.entry_id,
        "received_at": row.received_at.isoformat(),
        "applied_at": row.applied_at.isoformat() if row.applied_at and public != "pending" else None,
    }
    if row.status == "rejected":
        out["reason"] = {"code": row.reason_code, "message": row.reason}
    if public == "pending":
        out["processing"] = row.status  # pending | failed | dead
        out["attempts"] = row.attempts
    return out


def due_partitions(
    session_factory: sessionmaker[Session], *, stale_after: timedelta = timedelta(seconds=30)
) -> list[int]:
    """Partitions with rows a message should have applied by now (the broker lost or delayed it), or failed
    rows whose retry time has come."""
    with session_factory() as session:
        return list(
            session.execute(
                text(
                    "SELECT DISTINCT partition FROM usage_inbox WHERE status IN ('pending', 'failed') "
                    "AND next_attempt_at <= now() AND (status = 'failed' OR received_at < now() - :stale) "
                    "ORDER BY partition"
                ),
                {"stale": stale_after},
            ).scalars()
        )


def reopen(session_factory: sessionmaker[Session], key: str) -> int | None:
    """Make a dead (or failed) row due again now, with a fresh attempt count; returns its id."""
    with session_factory() as session, session.begin():
        return session.execute(
            text(
                "UPDATE usage_inbox SET status = 'pending', attempts = 0, next_attempt_at = now() "
                "WHERE idempotency_key = :k AND status IN ('dead', 'failed') RETURNING id"
            ),
            {"k": key},
        ).scalar()
