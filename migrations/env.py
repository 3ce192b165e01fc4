"""Alembic environment. The URL comes from the caller (``billing db upgrade``) or ``DATABASE_URL``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from billing_core.db.tables import Base
from billing_core.settings import sqlalchemy_url

config = context.config
target_metadata = Base.metadata

# Schema changes run on a live database: never queue behind a long transaction holding a lock (every
# query on the table would queue behind us), and never run unbounded. A migration that needs more sets
# its own values with SET LOCAL and says why.
LOCK_TIMEOUT = os.environ.get("BILLING_MIGRATION_LOCK_TIMEOUT", "5s")
STATEMENT_TIMEOUT = os.environ.get("BILLING_MIGRATION_STATEMENT_TIMEOUT", "60s")


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("billing: missing required setting DATABASE_URL: set it in the environment")
    return sqlalchemy_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        connection.exec_driver_sql(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
