"""Auto-recharge settings and attempts.

Revision ID: 0009_auto_recharge
Revises: 0008_subscriptions
Create Date: 2026-12-07

``auto_recharge``: one row per wallet that configured it (enabled, threshold, package) and its state in the
once-per-crossing machine (``armed`` → ``pending`` → ``armed`` | ``charged`` | ``failed``; docs/auto-recharge.md).
``auto_recharge_attempts``: one row per off-session charge we decided to make, with the PaymentIntent it made
and how it ended. At most one attempt per wallet is pending at any time (a partial unique index), whatever the
code above it does.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_auto_recharge"
down_revision: str | None = "0008_subscriptions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "auto_recharge",
        sa.Column("wallet_id", sa.BigInteger(), sa.ForeignKey("wallets.id"), primary_key=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("threshold_mc", sa.BigInteger(), nullable=False),
        sa.Column("package", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="armed"),
        # The account's usage partition (usage_reports.partition_of): a drain of one partition looks only at
        # the armed settings of that partition.
        sa.Column("partition", sa.SmallInteger(), nullable=False),
        sa.Column("last_attempt_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("state IN ('armed', 'pending', 'charged', 'failed')", name="auto_recharge_state"),
        sa.CheckConstraint("threshold_mc >= 0", name="auto_recharge_threshold"),
    )
    # What the detection reads: only the rows that could trigger now.
    op.create_index(
        "ix_auto_recharge_armed",
        "auto_recharge",
        ["partition"],
        postgresql_where=sa.text("enabled AND state = 'armed'"),
    )
    op.create_index(
        "ix_auto_recharge_charged", "auto_recharge", ["wallet_id"], postgresql_where=sa.text("state = 'charged'")
    )
    op.create_table(
        "auto_recharge_attempts",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("wallet_id", sa.BigInteger(), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("package", sa.Text(), nullable=False),
        sa.Column("credits_mc", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("threshold_mc", sa.BigInteger(), nullable=False),
        sa.Column("available_mc", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("payment_intent_id", sa.String(255), nullable=True, unique=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'requires_action')", name="auto_recharge_attempts_status"
        ),
        sa.CheckConstraint("credits_mc >= 0 AND amount >= 0", name="auto_recharge_attempts_amounts"),
    )
    op.create_index("ix_auto_recharge_attempts_wallet", "auto_recharge_attempts", ["wallet_id", "id"])
    # The database's own guarantee of once per crossing: never two attempts of one wallet in flight.
    op.create_index(
        "uq_auto_recharge_attempts_one_pending",
        "auto_recharge_attempts",
        ["wallet_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_auto_recharge_attempts_pending",
        "auto_recharge_attempts",
        ["updated_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("auto_recharge_attempts")
    op.drop_table("auto_recharge")
