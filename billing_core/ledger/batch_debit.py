"""The batch form of ``debit_usage``: many reports, one transaction, one outcome per report.

Each report keeps its own idempotency (a replay answers with the first entry, another body under a used key
is a conflict) and its own verdict (refused when its wallet is short at its turn); the batch as a whole
costs a fixed handful of statements: wallets locked once, grants loaded once, then one multi-row write each
for entries, grant balances, postings and account balances, whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from billing_core.db import unit_of_work
from billing_core.errors import BillingError, IdempotencyConflict, InsufficientCredits, UnknownAccount
from billing_core.ledger.book import Book, EntryDraft, fingerprint
from billing_core.ledger.commands import DebitUsage

APPLIED, DUPLICATE, REJECTED = "applied", "duplicate", "rejected"


@dataclass
class UsageOutcome:
    """What happened to one report: ``applied`` now, ``duplicate`` of an entry applied before (or earlier
    in this batch), or ``rejected`` with a typed error (short of credits, unknown account, conflict)."""

    idempotency_key: str
    status: str
    entry_id: int | None = None
    amount_mc: int = 0
    error: BillingError | None = None


def debit_usage_batch(book: Book, reports: list[DebitUsage]) -> list[UsageOutcome]:
    fps = [fingerprint(r.kind, r.body()) for r in reports]
    existing = book.find_entries(sorted({r.idempotency_key for r in reports}))
    outcomes: list[UsageOutcome | None] = [None] * len(reports)
    first_in_batch: dict[str, int] = {}
    fresh: list[int] = []
    for i, report in enumerate(reports):
        key = report.idempotency_key
        earlier = existing.get(key)
        if earlier is not None:
            outcomes[i] = _duplicate_or_conflict(report, fps[i], earlier.fingerprint, earlier.id)
        elif key in first_in_batch:
            outcomes[i] = _duplicate_or_conflict(report, fps[i], fps[first_in_batch[key]], None)
        else:
            first_in_batch[key] = i
            fresh.append(i)

    wallets = book.lock_wallets([reports[i].account for i in fresh], missing_ok=True)
    book.load_lots(list(wallets.values()))
    revenue = book.system_account("usage_revenue") if fresh else 0
    drafts: dict[int, EntryDraft] = {}
    for i in fresh:
        report = reports[i]
        wallet = wallets.get(report.account)
        if wallet is None:
            error: BillingError = UnknownAccount.named(report.account)
            outcomes[i] = UsageOutcome(report.idempotency_key, REJECTED, error=error)
            continue
        available = book.spendable(wallet)
        if available < report.amount_mc:
            error = InsufficientCredits.short(report.account, report.amount_mc, available)
            outcomes[i] = UsageOutcome(report.idempotency_key, REJECTED, error=error)
            continue
        entry = book.entry(
            "usage",
            report.idempotency_key,
            fps[i],
            external_ref=report.external_ref,
            metadata=report.metadata,
            occurred_at=report.occurred_at,
        )
        book.draw(entry, wallet, report.amount_mc)
        book.post(entry, revenue, report.amount_mc)
        drafts[i] = entry
    book.flush()

    for i, entry in drafts.items():
        outcomes[i] = UsageOutcome(reports[i].idempotency_key, APPLIED, entry.id, reports[i].amount_mc)
    for i, outcome in enumerate(outcomes):
        # A duplicate inside the batch points at the entry its first occurrence just wrote.
        assert outcome is not None
        if outcome.status == DUPLICATE and outcome.entry_id is None:
            first = outcomes[first_in_batch[outcome.idempotency_key]]
            assert first is not None
            if first.status != APPLIED:
                outcomes[i] = UsageOutcome(outcome.idempotency_key, REJECTED, error=first.error)
            else:
                outcome.entry_id = first.entry_id
    return outcomes  # type: ignore[return-value]


def _duplicate_or_conflict(report: DebitUsage, fp: str, earlier_fp: str, entry_id: int | None) -> UsageOutcome:
    if fp != earlier_fp:
        error = IdempotencyConflict(
            "idempotency key already used with a different request", idempotency_key=report.idempotency_key
        )
        return UsageOutcome(report.idempotency_key, REJECTED, error=error)
    return UsageOutcome(report.idempotency_key, DUPLICATE, entry_id, report.amount_mc)


def apply_usage_batch(session_factory: sessionmaker[Session], reports: list[DebitUsage]) -> list[UsageOutcome]:
    """Apply a batch in one transaction (retried whole on a transient conflict)."""
    return unit_of_work.run(session_factory, lambda uow: debit_usage_batch(uow.book, reports))
