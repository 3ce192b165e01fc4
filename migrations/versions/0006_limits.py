"""Token limits and plan quotas: each wallet's plan and per-account limit overrides; durable usage records.

Revision ID: 0006_limits
Revises: 0005_catalog_sync_and_config
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_limits"
down_revision: str | None = "0005_catalog_sync_and_config"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # NULL: the catalog's default plan. A plan name is checked against the catalog when it is set, not here:
    # plans live in the price file, and a plan dropped from it later falls back to the default.
    op.add_column("wallets", sa.Column("plan", sa.Text(), nullable=True))
    # {"hourly_tokens": 1000, "monthly_tokens": null}: a key present overrides the plan (null = unlimited),
    # a key absent leaves the plan's limit.
    op.add_column(
        "wallets",
        sa.Column("limit_overrides", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    # Token counters live in Redis; beat copies them here every hour (absolute values, never lower than what
    # is stored), so that a lost Redis loses at most an hour of the limits' memory, never the ledger's.
    op.create_table(
        "usage_records",
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_start", TZ, nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("account", "metric", "period", "period_start", name="usage_records_pkey"),
        sa.CheckConstraint("period IN ('hour', 'day', 'month')", name="usage_records_period"),
        sa.CheckConstraint("quantity >= 0", name="usage_records_quantity"),
    )


def downgrade() -> None:
    op.drop_table("usage_records")
    op.drop_column("wallets", "limit_overrides")
    op.drop_column("wallets", "plan")
