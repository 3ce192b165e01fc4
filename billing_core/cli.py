"""``billing``: the operators' command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from billing_core.errors import BillingError, MissingSetting
from billing_core.settings import load_settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _settings_or_exit():
    try:
        return load_settings()
    except MissingSetting as exc:
        click.echo(f"billing: {exc.message}", err=True)
        sys.exit(2)


def alembic_config(database_url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would eat a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


@click.group()
def main() -> None:
    """Credit billing pipeline: operators' commands."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head). Builds an empty database from nothing."""
    from alembic import command

    settings = _settings_or_exit()
    command.upgrade(alembic_config(settings.database_url), revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (``base`` empties the schema)."""
    from alembic import command

    settings = _settings_or_exit()
    command.downgrade(alembic_config(settings.database_url), revision)
    click.echo(f"database at {revision}")


@db.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    from alembic import command

    settings = _settings_or_exit()
    command.current(alembic_config(settings.database_url))


@main.command()
@click.option("--limit", default=50, show_default=True, help="Findings shown per check.")
def check(limit: int) -> None:
    """Prove the ledger's invariants; exit 0 when they hold, 1 with the findings when not."""
    from billing_core.checks import check_ledger
    from billing_core.db import make_engine

    settings = _settings_or_exit()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        report = check_ledger(engine, limit=limit)
    finally:
        engine.dispose()
    for finding in report.findings:
        click.echo(str(finding))
    status = "ok" if report.ok else f"FAILED ({len(report.findings)} findings)"
    click.echo(f"ledger check {status}: {report.entries} entries, {report.accounts} accounts")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("account")
@click.argument("credits")
@click.option("--reason", required=True, help="Why: recorded on the entry.")
@click.option("--source", type=click.Choice(["promotional", "plan"]), default="promotional", show_default=True)
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=None)
@click.option("--idempotency-key", default=None, help="Defaults to a fresh key (each call grants again).")
def grant(
    account: str, credits: str, reason: str, source: str, expires_in_days: int | None, idempotency_key: str | None
) -> None:
    """Grant CREDITS (a decimal string, e.g. 12.5) to ACCOUNT."""
    import uuid
    from datetime import timedelta

    from billing_core.commands import GrantCredits
    from billing_core.db import make_engine, make_session_factory
    from billing_core.handlers import execute
    from billing_core.unit_of_work import utcnow
    from billing_core.units import parse_credits

    settings = _settings_or_exit()
    try:
        cmd = GrantCredits(
            account=account,
            amount_mc=parse_credits(credits),
            idempotency_key=idempotency_key or f"cli-grant:{uuid.uuid4()}",
            source=source,
            expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
            reason=reason,
        )
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            receipt = execute(make_session_factory(engine), cmd)
        finally:
            engine.dispose()
    except BillingError as exc:
        click.echo(f"billing: {exc.code}: {exc.message}", err=True)
        sys.exit(1)
    replay = " (replay)" if receipt.replayed else ""
    click.echo(f"granted {credits} credits to {account}{replay}")
    click.echo(f"entry {receipt.entry_id} grant {receipt.grant_id}")


@main.command()
@click.argument("account")
def balance(account: str) -> None:
    """Show ACCOUNT's balance: available, held, total (credits), and whether it is flagged negative."""
    from sqlalchemy import text

    from billing_core.db import make_engine
    from billing_core.units import format_credits

    settings = _settings_or_exit()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT a.balance_mc, h.balance_mc, w.negative_since FROM wallets w "
                    "JOIN ledger_accounts a ON a.id = w.available_account_id "
                    "JOIN ledger_accounts h ON h.id = w.held_account_id WHERE w.account = :acc"
                ),
                {"acc": account},
            ).first()
    finally:
        engine.dispose()
    available, held, negative_since = row if row else (0, 0, None)
    click.echo(
        f"{account}: available {format_credits(available)}  held {format_credits(held)}  "
        f"total {format_credits(available + held)} credits" + ("  [NEGATIVE, flagged]" if negative_since else "")
    )


@main.command()
def dev() -> None:
    """Run the local stack on an embedded default: throwaway PostgreSQL and Redis, migrated, until Ctrl-C.

    The web receiver, workers and the Stripe emulator join this command as they are built.
    """
    import signal
    import threading

    from alembic import command

    from billing_core.local_servers import ThrowawayPostgres, ThrowawayRedis

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ThrowawayPostgres(durable=True) as pg, ThrowawayRedis() as redis:
        pg.create_database("billing")
        url = pg.libpq_url("billing")
        command.upgrade(alembic_config(url), "head")
        click.echo("billing dev: PostgreSQL and Redis are up, database migrated. In another shell:")
        click.echo(f"  export DATABASE_URL={url}")
        click.echo(f"  export REDIS_URL={redis.url}")
        click.echo("Ctrl-C stops everything (the data is thrown away).", err=True)
        stop.wait()
    click.echo("billing dev: stopped", err=True)


if __name__ == "__main__":
    main()
