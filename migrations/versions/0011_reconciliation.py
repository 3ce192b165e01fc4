"""Reconciliation against Stripe: runs, checkpoints and discrepancies.

Revision ID: 0011_reconciliation
Revises: 0010_notifications
Create Date: 2026-12-07

``reconciliation_runs``: one row per pass (``events``: Stripe's event list against the inbox; ``objects``: paid
sessions, invoices, refunds and disputes against the ledger), with its window, how far it got (``checkpoint``,
for a run resumed after a crash), its counts and outcome. ``reconciliation_checkpoints``: per kind, the newest
Stripe event time a finished pass reached (the next pass starts there, minus an overlap).
``discrepancies``: what a pass found that it must not heal by itself, once each (``dedupe_key``), until an
operator resolves it with a note. ``stripe_events.source``: how the event reached the inbox.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011_reconciliation"
down_revision: str | None = "0010_notifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("stripe_events", sa.Column("source", sa.String(16), nullable=False, server_default="webhook"))
    op.create_check_constraint(
        "stripe_events_source", "stripe_events", "source IN ('webhook', 'reconciliation', 'replay')"
    )
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("window_start", TZ, nullable=True),
        sa.Column("window_end", TZ, nullable=True),
        sa.Column("checkpoint", JSONB(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="running"),
        sa.Column("counts", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('events', 'objects')", name="reconciliation_runs_kind"),
        sa.CheckConstraint("status IN ('running', 'done', 'failed')", name="reconciliation_runs_status"),
    )
    op.create_index("ix_reconciliation_runs_kind", "reconciliation_runs", ["kind", "id"])
    op.create_table(
        "reconciliation_checkpoints",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("last_event_id", sa.String(255), nullable=True),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "discrepancies",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("stripe_id", sa.String(255), nullable=True),
        sa.Column("account", sa.Text(), nullable=True),
        sa.Column("expected", JSONB(), nullable=True),
        sa.Column("found", JSONB(), nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=False, unique=True),
        sa.Column("run_id", sa.BigInteger(), sa.ForeignKey("reconciliation_runs.id"), nullable=True),
        sa.Column("found_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("resolved_at", TZ, nullable=True),
        sa.Column("resolved_by", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_discrepancies_open", "discrepancies", ["found_at"], postgresql_where=sa.text("resolved_at IS NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_discrepancies_open", table_name="discrepancies")
    op.drop_table("discrepancies")
    op.drop_table("reconciliation_checkpoints")
    op.drop_index("ix_reconciliation_runs_kind", table_name="reconciliation_runs")
    op.drop_table("reconciliation_runs")
    op.drop_constraint("stripe_events_source", "stripe_events", type_="check")
    op.drop_column("stripe_events", "source")
