"""The admin API's audit log, API key expiry (rotation's overlap window), and the stats' ledger index.

Revision ID: 0012_admin_audit
Revises: 0011_reconciliation
Create Date: 2026-12-14

``admin_audit``: one row per mutating admin action, written in the action's own transaction (who, what, on
what, the state before and after, the idempotency key). Append-only; read newest first, by id.

``api_keys.expires_at``: a rotated key keeps working until the end of its overlap window; NULL never expires.

The admin stats read purchases and usage of the last N days by kind and day; without an index each read scans
the whole ledger. Usage entries are nearly all of the ledger and the hottest insert, so they get no btree:
``brin_ledger_entries_occurred`` (a BRIN on occurred_at, the day the stats count an entry on: entries are
appended nearly in time order, the index is a few pages and costs an insert almost nothing) narrows a
window's read to its block ranges. Purchases are few and read on their own (credits sold per day):
``ix_ledger_entries_purchase_occurred``, partial, so the usage path pays one predicate and no index entry (as
``ix_ledger_entries_clawback_payment`` in 0007).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0012_admin_audit"
down_revision: str | None = "0011_reconciliation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Fail fast rather than queue behind a long transaction on api_keys or ledger_entries (and block every
    # request that queues behind this migration).
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("before", JSONB(), nullable=True),
        sa.Column("after", JSONB(), nullable=True),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    # Filters of the audit list, each read newest first by id.
    op.create_index("ix_admin_audit_actor", "admin_audit", ["actor", "id"])
    op.create_index("ix_admin_audit_action", "admin_audit", ["action", "id"])
    op.create_index("ix_admin_audit_target", "admin_audit", ["target", "id"])
    op.add_column("api_keys", sa.Column("expires_at", TZ, nullable=True))
    # The stats' other windows: webhook outcomes by received_at, failed payments by failed_at (both small
    # tables today; a window read must not become a scan as they grow).
    op.create_index("ix_stripe_events_received", "stripe_events", ["received_at"])
    op.create_index("ix_payment_failures_failed_at", "payment_failures", ["failed_at"])
    # Account search (admin/accounts.py): a name prefix under any collation, an email in any case.
    op.create_index("ix_wallets_account_prefix", "wallets", ["account"], postgresql_ops={"account": "text_pattern_ops"})
    op.create_index("ix_wallets_email_lower", "wallets", [sa.text("lower(email)")])
    op.create_index("brin_ledger_entries_occurred", "ledger_entries", ["occurred_at"], postgresql_using="brin")
    op.create_index(
        "ix_ledger_entries_purchase_occurred",
        "ledger_entries",
        ["occurred_at"],
        postgresql_where=sa.text("kind = 'purchase'"),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_purchase_occurred", table_name="ledger_entries")
    op.drop_index("brin_ledger_entries_occurred", table_name="ledger_entries")
    op.drop_index("ix_wallets_email_lower", table_name="wallets")
    op.drop_index("ix_wallets_account_prefix", table_name="wallets")
    op.drop_index("ix_payment_failures_failed_at", table_name="payment_failures")
    op.drop_index("ix_stripe_events_received", table_name="stripe_events")
    op.drop_column("api_keys", "expires_at")
    op.drop_table("admin_audit")
