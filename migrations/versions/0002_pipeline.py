"""The pipeline's tables: API keys, the Stripe event inbox, the usage inbox.

Revision ID: 0002_pipeline
Revises: 0001_ledger
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_pipeline"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        # The first characters of the key, shown in listings so an operator can tell keys apart.
        sa.Column("prefix", sa.String(16), nullable=False),
        # sha256 of the whole key. Keys carry 256 random bits, so a fast hash is enough: there is nothing to
        # brute-force, and a lookup must cost microseconds on every request.
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("last_used_at", TZ),
        sa.Column("revoked_at", TZ),
    )
    op.create_table(
        "stripe_events",
        # Stripe's event id is the key: a duplicate delivery finds the row and does nothing.
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("api_version", sa.String(32)),
        sa.Column("livemode", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created", TZ),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
        sa.Column("received_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("next_attempt_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("processed_at", TZ),
        sa.CheckConstraint(
            "status IN ('pending', 'waiting', 'failed', 'processed', 'ignored', 'dead')", name="stripe_events_status"
        ),
    )
    op.create_index(
        "ix_stripe_events_open",
        "stripe_events",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('pending', 'waiting', 'failed')"),
    )
    op.create_index(
        "ix_stripe_events_dead", "stripe_events", ["received_at"], postgresql_where=sa.text("status = 'dead'")
    )
    op.create_table(
        "usage_inbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        # sha256 of the report as accepted: the same key with another body is a conflict, not a duplicate.
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        # Workers claim one partition at a time (a hash of the account): batches of different partitions never
        # wait on each other's wallet locks, and one account's reports are applied in arrival order.
        sa.Column("partition", sa.SmallInteger, nullable=False),
        sa.Column("amount_mc", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.String(40)),
        sa.Column("occurred_at", TZ),
        sa.Column("report", postgresql.JSONB, nullable=False),
        sa.Column("source", sa.String(8), nullable=False, server_default="http"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("reason_code", sa.String(64)),
        sa.Column("reason", sa.Text),
        sa.Column("entry_id", sa.BigInteger),
        sa.Column("received_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("next_attempt_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("applied_at", TZ),
        sa.CheckConstraint("status IN ('pending', 'failed', 'applied', 'rejected', 'dead')", name="usage_inbox_status"),
        sa.CheckConstraint("amount_mc >= 0", name="usage_inbox_amount"),
    )
    op.create_index(
        "ix_usage_inbox_open",
        "usage_inbox",
        ["partition", "id"],
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )
    op.create_index("ix_usage_inbox_dead", "usage_inbox", ["received_at"], postgresql_where=sa.text("status = 'dead'"))


def downgrade() -> None:
    for table in ("usage_inbox", "stripe_events", "api_keys"):
        op.drop_table(table)
