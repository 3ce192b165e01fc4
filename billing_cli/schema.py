"""``billing db``: the schema, by Alembic's migrations (the only way it changes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from billing_cli.environment import settings_or_exit

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would eat a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head). Builds an empty database from nothing."""
    from alembic import command

    command.upgrade(alembic_config(settings_or_exit().database_url), revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (``base`` empties the schema)."""
    from alembic import command

    command.downgrade(alembic_config(settings_or_exit().database_url), revision)
    click.echo(f"database at {revision}")


@db.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    from alembic import command

    command.current(alembic_config(settings_or_exit().database_url))
