"""Disputes hold credits back until they close; admin refunds; failed payments recorded.

- ``ledger_entries.kind`` gains ``dispute_hold`` (a chargeback moves the disputed credits from available to held)
  and ``dispute_release`` (won: they go back). A lost dispute is a ``clawback``, as a refund is.
- ``disputes``: each chargeback's state (open, won, lost) with what it held and took.
- ``payment_failures``: payments that failed (a PIX or bank debit that bounced), with nothing credited.
- A partial index on clawbacks by payment intent: what refunds and lost disputes together took back for a
  purchase, so that together they never take more than it bought.

Revision ID: 0007_disputes_and_refunds
Revises: 0006_limits
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_disputes_and_refunds"
down_revision: str | None = "0006_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
KINDS = (
    "'purchase', 'grant', 'usage', 'hold', 'capture', 'release', 'hold_expiry', 'grant_expiry', 'clawback', "
    "'adjustment', 'transfer'"
)
NEW_KINDS = ", 'dispute_hold', 'dispute_release'"


def _entry_kinds(kinds: str) -> None:
    # Added NOT VALID, then validated: the ADD takes its lock for an instant instead of for a scan of the whole
    # ledger, and VALIDATE scans it under a lock that lets writes go on.
    op.drop_constraint("ledger_entries_kind", "ledger_entries", type_="check")
    op.execute(f"ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind CHECK (kind IN ({kinds})) NOT VALID")
    op.execute("ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_kind")


def upgrade() -> None:
    _entry_kinds(KINDS + NEW_KINDS)
    op.create_table(
        "disputes",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("payment_intent", sa.String(255), nullable=False),
        sa.Column("charge", sa.String(255)),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3)),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("disputed_mc", sa.BigInteger, nullable=False),
        sa.Column("held_mc", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("taken_mc", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("hold_entry_id", sa.BigInteger, sa.ForeignKey("ledger_entries.id")),
        sa.Column("settled_entry_id", sa.BigInteger, sa.ForeignKey("ledger_entries.id")),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("closed_at", TZ),
        sa.CheckConstraint("status IN ('open', 'won', 'lost')", name="disputes_status"),
        sa.CheckConstraint(
            "held_mc >= 0 AND held_mc <= disputed_mc AND taken_mc >= 0 AND taken_mc <= disputed_mc",
            name="disputes_amounts",
        ),
    )
    op.create_index("ix_disputes_payment_intent", "disputes", ["payment_intent"])
    op.create_index("ix_disputes_open_wallet", "disputes", ["wallet_id"], postgresql_where=sa.text("status = 'open'"))
    op.create_table(
        "payment_failures",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("object", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128)),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id")),
        sa.Column("payment_intent", sa.String(255)),
        sa.Column("amount", sa.BigInteger),
        sa.Column("currency", sa.String(3)),
        sa.Column("payment_method", sa.String(64)),
        sa.Column("code", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("failed_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_payment_failures_account", "payment_failures", ["account", "failed_at"])
    op.create_index("ix_payment_failures_payment_intent", "payment_failures", ["payment_intent"])
    # Built without blocking the ledger's writes (CONCURRENTLY runs outside a transaction).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_ledger_entries_clawback_payment",
            "ledger_entries",
            [sa.text("(metadata ->> 'payment_intent')")],
            postgresql_where=sa.text("kind = 'clawback'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_ledger_entries_clawback_payment", table_name="ledger_entries", postgresql_concurrently=True)
    op.drop_table("payment_failures")
    op.drop_table("disputes")
    # The old constraint refuses entries of the new kinds: on a ledger that has some, the downgrade stops here.
    _entry_kinds(KINDS)
