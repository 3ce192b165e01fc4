"""Price catalog versions: a catalog loaded ahead of time takes effect at its ``effective_at``, without a deploy.

``billing pricing load FILE --effective-at ...`` writes a row; every process's ``PriceBook`` notices a new row
within a few seconds (a cheap ``count(*), max(loaded_at)``) and prices with the version whose effective time
is the latest not after now. Rows are never updated: a version id names one content forever, so a usage
entry's ``price_version`` always explains its charge.

Revision ID: 0004_price_versions
Revises: 0003_event_payload_json
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_price_versions"
down_revision: str | None = "0003_event_payload_json"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "price_versions",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("effective_at", TZ, nullable=False),
        # The catalog file as loaded, without its effective time (the column above is the authority).
        sa.Column("catalog", postgresql.JSONB, nullable=False),
        # sha256 of the catalog's canonical JSON: loading the same version with the same content is a no-op.
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("loaded_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_price_versions_effective_at", "price_versions", ["effective_at"])


def downgrade() -> None:
    op.drop_index("ix_price_versions_effective_at", table_name="price_versions")
    op.drop_table("price_versions")
