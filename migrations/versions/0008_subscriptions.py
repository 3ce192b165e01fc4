"""Subscriptions, invoices and plan allowances: the subscriptions and invoices Stripe shows, mirrored per wallet;
the ``rollover`` entry kind (unused allowance carried into the next period).

Revision ID: 0008_subscriptions
Revises: 0007_disputes_and_refunds
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_subscriptions"
down_revision: str | None = "0007_disputes_and_refunds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
KINDS = (
    "'purchase', 'grant', 'usage', 'hold', 'capture', 'release', 'hold_expiry', 'grant_expiry', 'clawback', "
    "'adjustment', 'transfer', 'dispute_hold', 'dispute_release'"
)


def _entry_kinds(kinds: str) -> None:
    # As 0007: added NOT VALID, then validated, so neither step blocks ledger writes for a scan.
    op.drop_constraint("ledger_entries_kind", "ledger_entries", type_="check")
    op.execute(f"ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind CHECK (kind IN ({kinds})) NOT VALID")
    op.execute("ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_kind")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("wallet_id", sa.BigInteger(), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("stripe_customer_id", sa.String(255)),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("stripe_price_id", sa.String(255)),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("current_period_start", TZ),
        sa.Column("current_period_end", TZ),
        sa.Column("trial_end", TZ),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("canceled_at", TZ),
        sa.Column("latest_invoice", sa.String(255)),
        sa.Column("allowance_mc", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("rollover_cap_mc", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_allowance_at", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("interval IN ('month', 'year')", name="subscriptions_interval"),
    )
    op.create_index("ix_subscriptions_wallet", "subscriptions", ["wallet_id"])
    op.create_index(
        "ix_subscriptions_allowance_due",
        "subscriptions",
        ["next_allowance_at"],
        postgresql_where=sa.text("next_allowance_at IS NOT NULL"),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("wallet_id", sa.BigInteger(), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("subscription_id", sa.String(255)),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("billing_reason", sa.Text()),
        sa.Column("number", sa.Text()),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("hosted_invoice_url", sa.Text()),
        sa.Column("period_start", TZ),
        sa.Column("period_end", TZ),
        sa.Column("attempt_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_payment_attempt", TZ),
        sa.Column("last_payment_error", sa.Text()),
        sa.Column("stripe_created", TZ, nullable=False),
        sa.Column("paid_at", TZ),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_invoices_wallet_created", "invoices", ["wallet_id", "stripe_created", "id"])
    _entry_kinds(KINDS + ", 'rollover'")


def downgrade() -> None:
    _entry_kinds(KINDS)
    op.drop_table("invoices")
    op.drop_table("subscriptions")
