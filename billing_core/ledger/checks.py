"""Ledger invariants, proved from the rows themselves (``billing check``).

Each check is one aggregate query that returns the offending rows; an empty result means the invariant
holds. They read a consistent snapshot (REPEATABLE READ, read only) so a busy ledger gives no false alarm.

Unlike the rest of the ledger's queries these stay plain SQL: each is an audit that an operator reads next to
its finding, and joins of derived tables with HAVING read as the invariant in SQL but as construction code in
SQLAlchemy Core. They take no input but the row limit, and the tests of ``billing check`` run them all on a
sound ledger and on corrupted ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

CHECKS: dict[str, tuple[str, str]] = {
    "entry_unbalanced": (
        "every entry's postings sum to zero",
        """
        SELECT e.id, e.idempotency_key, coalesce(sum(p.amount_mc), 0) AS total, count(p.line) AS postings
        FROM ledger_entries e LEFT JOIN postings p ON p.entry_id = e.id
        GROUP BY e.id HAVING coalesce(sum(p.amount_mc), 0) <> 0 OR count(p.line) < 2
        """,
    ),
    "balance_mismatch": (
        "every cached balance equals the sum of its postings",
        """
        SELECT a.id, a.code, a.balance_mc AS cached, coalesce(s.total, 0) AS postings
        FROM ledger_accounts a
        LEFT JOIN (SELECT account_id, sum(amount_mc) AS total FROM postings GROUP BY account_id) s
               ON s.account_id = a.id
        WHERE a.balance_mc <> coalesce(s.total, 0)
        """,
    ),
    "grant_mismatch": (
        "every grant's remaining equals its postings on the wallet's available account",
        """
        SELECT g.id, g.wallet_id, g.remaining_mc AS cached, coalesce(s.total, 0) AS postings
        FROM grants g JOIN wallets w ON w.id = g.wallet_id
        LEFT JOIN (SELECT grant_id, account_id, sum(amount_mc) AS total FROM postings
                   WHERE grant_id IS NOT NULL GROUP BY grant_id, account_id) s
               ON s.grant_id = g.id AND s.account_id = w.available_account_id
        WHERE g.remaining_mc <> coalesce(s.total, 0)
        """,
    ),
    "wallet_posting_without_grant": (
        "every posting on an available account names a grant",
        """
        SELECT p.entry_id, p.line FROM postings p JOIN wallets w ON w.available_account_id = p.account_id
        WHERE p.grant_id IS NULL
        """,
    ),
    "negative_without_flag": (
        "no wallet is negative, or in debt, without a flag",
        """
        SELECT w.account, a.balance_mc, coalesce(d.remaining_mc, 0) AS debt
        FROM wallets w JOIN ledger_accounts a ON a.id = w.available_account_id
        LEFT JOIN grants d ON d.wallet_id = w.id AND d.source = 'debt'
        WHERE (a.balance_mc < 0 OR coalesce(d.remaining_mc, 0) < 0) AND w.negative_since IS NULL
        """,
    ),
    "flag_without_debt": (
        "no wallet is flagged once its debt is settled",
        """
        SELECT w.account FROM wallets w LEFT JOIN grants d ON d.wallet_id = w.id AND d.source = 'debt'
        WHERE w.negative_since IS NOT NULL AND coalesce(d.remaining_mc, 0) = 0
        """,
    ),
    "held_mismatch": (
        "every held balance equals the sum of its wallet's pending holds and open disputes",
        """
        SELECT w.account, a.balance_mc AS held, coalesce(h.total, 0) AS pending, coalesce(d.total, 0) AS disputed
        FROM wallets w JOIN ledger_accounts a ON a.id = w.held_account_id
        LEFT JOIN (SELECT wallet_id, sum(amount_mc) AS total FROM holds WHERE status = 'pending'
                   GROUP BY wallet_id) h ON h.wallet_id = w.id
        LEFT JOIN (SELECT wallet_id, sum(held_mc) AS total FROM disputes WHERE status = 'open'
                   GROUP BY wallet_id) d ON d.wallet_id = w.id
        WHERE a.balance_mc <> coalesce(h.total, 0) + coalesce(d.total, 0)
        """,
    ),
    "ledger_unbalanced": (
        "all balances together sum to zero",
        "SELECT sum(balance_mc) AS total FROM ledger_accounts HAVING sum(balance_mc) <> 0",
    ),
}


@dataclass(frozen=True)
class Finding:
    check: str
    description: str
    row: dict[str, object]

    def __str__(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in self.row.items())
        return f"{self.check}: {self.description} is violated: {detail}"


@dataclass(frozen=True)
class CheckReport:
    findings: tuple[Finding, ...]
    entries: int
    accounts: int

    @property
    def ok(self) -> bool:
        return not self.findings


def _run(conn: Connection, limit: int) -> CheckReport:
    findings: list[Finding] = []
    for name, (description, sql) in CHECKS.items():
        rows = conn.execute(text(f"SELECT * FROM ({sql}) AS bad LIMIT :limit"), {"limit": limit}).mappings().all()
        findings.extend(Finding(name, description, dict(r)) for r in rows)
    entries = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
    accounts = conn.execute(text("SELECT count(*) FROM ledger_accounts")).scalar_one()
    return CheckReport(tuple(findings), entries, accounts)


def check_ledger(engine: Engine, *, limit: int = 50) -> CheckReport:
    """Run every check in one read-only snapshot; at most ``limit`` findings per check."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            return _run(conn, limit)
        finally:
            conn.rollback()
