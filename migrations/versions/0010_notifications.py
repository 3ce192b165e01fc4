"""The notifications outbox: one row per message and channel, with its dedupe key.

Revision ID: 0010_notifications
Revises: 0009_auto_recharge
Create Date: 2026-12-07

``notifications``: written in the transaction of the change it reports (a purchase, a balance crossing, an
admin alert), one row per channel (``email``, ``webhook``) under ``(dedupe_key, channel)``, so a replayed
cause writes nothing new. The delivery task claims due rows, sends outside any transaction and records the
outcome: ``sent``, ``pending`` again with a later ``next_attempt_at`` (exponential backoff), ``dead`` after too
many attempts, or ``skipped`` when the channel has nowhere to send (no SMTP, no recipient, no webhook URL).
``wallets.low_balance_notified_at``: set when the low-balance notice of the current crossing was written,
cleared when the balance is back at or above the threshold (one notice per crossing).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010_notifications"
down_revision: str | None = "0009_auto_recharge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("account", sa.String(128), nullable=True),
        sa.Column("audience", sa.String(16), nullable=False, server_default="account"),
        sa.Column("payload", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", TZ, nullable=True),
        sa.CheckConstraint("channel IN ('email', 'webhook')", name="notifications_channel"),
        sa.CheckConstraint("audience IN ('account', 'admins')", name="notifications_audience"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'dead', 'skipped')", name="notifications_status"),
        sa.UniqueConstraint("dedupe_key", "channel", name="uq_notifications_dedupe_channel"),
    )
    # What the delivery task reads: only the rows still to send, by when they are due.
    op.create_index(
        "ix_notifications_due",
        "notifications",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_notifications_status_id", "notifications", ["status", "id"])
    op.add_column("wallets", sa.Column("low_balance_notified_at", TZ, nullable=True))
    # What the re-arm reads: only the wallets whose notice was sent.
    op.create_index(
        "ix_wallets_low_balance_notified",
        "wallets",
        ["id"],
        postgresql_where=sa.text("low_balance_notified_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_wallets_low_balance_notified", table_name="wallets")
    op.drop_column("wallets", "low_balance_notified_at")
    op.drop_index("ix_notifications_status_id", table_name="notifications")
    op.drop_index("ix_notifications_due", table_name="notifications")
    op.drop_table("notifications")
