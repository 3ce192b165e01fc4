"""Stripe events keep the body as delivered: ``payload`` is ``json`` (the text, checked), not ``jsonb``.

The receiver's insert is its whole database work, and turning 2 - 10 KB of JSON into jsonb was a fifth of
PostgreSQL's cost per delivery (measured: about 35 us of 180). The worker reads each event once, whole, so
jsonb's faster operators buy nothing here; the exact bytes Stripe signed are kept for audit. Rows up to a page
stay inline, uncompressed: compressing a 2 KB event costs more than the space it saves.

Revision ID: 0003_event_payload_json
Revises: 0002_pipeline
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_event_payload_json"
down_revision: str | None = "0002_pipeline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE stripe_events ALTER COLUMN payload TYPE json USING payload::json")
    op.execute("ALTER TABLE stripe_events SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    op.execute("ALTER TABLE stripe_events RESET (toast_tuple_target)")
    op.execute("ALTER TABLE stripe_events ALTER COLUMN payload TYPE jsonb USING payload::jsonb")
