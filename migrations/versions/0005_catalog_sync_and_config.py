"""Stripe product/price ids of the catalog, database settings, admin alerts.

- ``stripe_catalog``: what ``billing stripe sync-products`` created in Stripe for each sellable thing of the
  catalog (kind ``package`` now, ``plan`` next), so checkout sells the stored Price.
- ``billing_config``: settings operators change at run time (``billing config set``), typed and defaulted by
  ``billing_core/db/config.py``.
- ``admin_alerts``: alerts for the operators (the sales guard's trips), deduplicated by a key naming the
  occurrence; ``delivered_at`` is for the notifications outbox.

Revision ID: 0005_catalog_sync_and_config
Revises: 0004_price_versions
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_catalog_sync_and_config"
down_revision: str | None = "0004_price_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stripe_catalog",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("ref", sa.Text, nullable=False),
        sa.Column("stripe_product_id", sa.String(255), nullable=False),
        sa.Column("stripe_price_id", sa.String(255), nullable=False),
        # What the stored Price charges: checkout uses it only while the catalog still asks the same.
        sa.Column("unit_amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        # sha256 of what was synced (name, description, amount, currency, credits): unchanged means no work.
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("synced_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("kind", "ref", name="stripe_catalog_pkey"),
        sa.CheckConstraint("kind IN ('package', 'plan')", name="stripe_catalog_kind"),
    )
    op.create_table(
        "billing_config",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", postgresql.JSONB, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_by", sa.Text),
    )
    op.create_table(
        "admin_alerts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
        sa.Column("payload", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("delivered_at", TZ),
    )
    # The latest alert of a kind (the sales guard's last recorded state) and the outbox's undelivered ones.
    op.create_index("ix_admin_alerts_kind_id", "admin_alerts", ["kind", "id"])
    op.create_index(
        "ix_admin_alerts_undelivered", "admin_alerts", ["id"], postgresql_where=sa.text("delivered_at IS NULL")
    )


def downgrade() -> None:
    op.drop_table("admin_alerts")
    op.drop_table("billing_config")
    op.drop_table("stripe_catalog")
