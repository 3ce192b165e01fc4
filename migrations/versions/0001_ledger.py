"""Ledger core: accounts, wallets, grants, entries, postings, holds.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_ledger"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
SYSTEM_ACCOUNTS = ("stripe_clearing", "promotional", "usage_revenue", "refunds", "expiry", "adjustments")


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("code", sa.String(160), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("balance_mc", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "kind IN ('available', 'held', 'stripe_clearing', 'promotional', 'usage_revenue', "
            "'refunds', 'expiry', 'adjustments')",
            name="ledger_accounts_kind",
        ),
    )
    op.create_table(
        "wallets",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "available_account_id", sa.BigInteger, sa.ForeignKey("ledger_accounts.id"), nullable=False, unique=True
        ),
        sa.Column("held_account_id", sa.BigInteger, sa.ForeignKey("ledger_accounts.id"), nullable=False, unique=True),
        sa.Column("negative_since", TZ),
        sa.Column("email", sa.String(320)),
        sa.Column("name", sa.String(200)),
        sa.Column("low_balance_threshold_mc", sa.BigInteger),
        sa.Column("stripe_customer_id", sa.String(255), unique=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("external_ref", sa.String(255)),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("occurred_at", TZ, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "kind IN ('purchase', 'grant', 'usage', 'hold', 'capture', 'release', 'hold_expiry', "
            "'grant_expiry', 'clawback', 'adjustment', 'transfer')",
            name="ledger_entries_kind",
        ),
    )
    op.create_index(
        "ix_ledger_entries_external_ref",
        "ledger_entries",
        ["external_ref"],
        postgresql_where=sa.text("external_ref IS NOT NULL"),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("amount_mc", sa.BigInteger, nullable=False),
        sa.Column("remaining_mc", sa.BigInteger, nullable=False),
        sa.Column("expires_at", TZ),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("entry_id", sa.BigInteger, sa.ForeignKey("ledger_entries.id"), nullable=False),
        sa.Column("external_ref", sa.String(255)),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "source IN ('purchase', 'promotional', 'plan', 'adjustment', 'transfer', 'debt')", name="grants_source"
        ),
        sa.CheckConstraint(
            "(source = 'debt' AND remaining_mc <= 0) OR (source <> 'debt' AND remaining_mc >= 0)",
            name="grants_remaining_sign",
        ),
    )
    op.create_index("ix_grants_wallet_open", "grants", ["wallet_id"], postgresql_where=sa.text("remaining_mc <> 0"))
    op.create_index("ix_grants_expiring", "grants", ["expires_at"], postgresql_where=sa.text("remaining_mc > 0"))
    op.create_index(
        "ix_grants_external_ref", "grants", ["external_ref"], postgresql_where=sa.text("external_ref IS NOT NULL")
    )
    op.create_index(
        "uq_grants_one_debt_per_wallet",
        "grants",
        ["wallet_id"],
        unique=True,
        postgresql_where=sa.text("source = 'debt'"),
    )
    op.create_table(
        "postings",
        sa.Column("entry_id", sa.BigInteger, sa.ForeignKey("ledger_entries.id"), primary_key=True),
        sa.Column("line", sa.SmallInteger, primary_key=True),
        sa.Column("account_id", sa.BigInteger, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("grant_id", sa.BigInteger, sa.ForeignKey("grants.id")),
        sa.Column("amount_mc", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount_mc <> 0", name="postings_nonzero"),
    )
    op.create_index("ix_postings_account_entry", "postings", ["account_id", "entry_id"])
    op.create_table(
        "holds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("amount_mc", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("placed_entry_id", sa.BigInteger, sa.ForeignKey("ledger_entries.id"), nullable=False, unique=True),
        sa.Column("settled_entry_id", sa.BigInteger, sa.ForeignKey("ledger_entries.id")),
        sa.Column("captured_mc", sa.BigInteger),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("settled_at", TZ),
        sa.CheckConstraint("status IN ('pending', 'captured', 'released', 'expired')", name="holds_status"),
        sa.CheckConstraint("amount_mc > 0", name="holds_amount_positive"),
    )
    op.create_index("ix_holds_pending_expiry", "holds", ["expires_at"], postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_holds_wallet", "holds", ["wallet_id"])

    # Entries and postings are immutable: a correction is a new entry, never an edit. The trigger makes
    # that a property of the database, not a habit of the code (TRUNCATE, used by tests, is unaffected).
    op.execute(
        """
        CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledger rows are immutable: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    for table in ("ledger_entries", "postings"):
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
        )

    accounts = sa.table("ledger_accounts", sa.column("code", sa.String), sa.column("kind", sa.String))
    op.bulk_insert(accounts, [{"code": f"system:{kind}", "kind": kind} for kind in SYSTEM_ACCOUNTS])


def downgrade() -> None:
    for table in ("holds", "postings", "grants", "ledger_entries", "wallets", "ledger_accounts"):
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
