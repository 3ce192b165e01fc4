"""The operators' commands on the ledger and the inboxes: check, grant, balance, dead, replay."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from billing_cli.environment import database, fail, sessions, settings_or_exit
from billing_core.errors import BillingError
from billing_core.types import MAX_PRIORITY


@click.command()
@click.option("--limit", default=50, show_default=True, help="Findings shown per check.")
def check(limit: int) -> None:
    """Prove the ledger's invariants; exit 0 when they hold, 1 with the findings when not."""
    from billing_core.ledger.checks import check_ledger

    with database(settings_or_exit()) as engine:
        report = check_ledger(engine, limit=limit)
    for finding in report.findings:
        click.echo(str(finding))
    status = "ok" if report.ok else f"FAILED ({len(report.findings)} findings)"
    click.echo(f"ledger check {status}: {report.entries} entries, {report.accounts} accounts")
    sys.exit(0 if report.ok else 1)


def _operator() -> str:
    """Who runs the command, for the entry's ``actor``."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        return "unknown"


def _utc_time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """``--expires-at``: ISO 8601; a time without a zone is read as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2030-01-31T00:00:00Z") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


@click.command()
@click.argument("account")
@click.argument("credits")
@click.option("--reason", required=True, help="Why: recorded on the entry.")
@click.option(
    "--source",
    type=click.Choice(["promotion", "admin", "plan", "promotional"]),
    default="promotion",
    show_default=True,
    help="promotion, admin (an operator's grant) or plan; promotional is the old name of promotion.",
)
@click.option("--expires-at", callback=_utc_time, help="ISO 8601 time the credits expire (UTC unless a zone is given).")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=None)
@click.option(
    "--priority",
    type=click.IntRange(0, MAX_PRIORITY),
    default=None,
    help="Spending priority (lower is spent first among grants expiring together); default by source.",
)
@click.option("--idempotency-key", default=None, help="Defaults to a fresh key (each call grants again).")
def grant(
    account: str,
    credits: str,
    reason: str,
    source: str,
    expires_at: datetime | None,
    expires_in_days: int | None,
    priority: int | None,
    idempotency_key: str | None,
) -> None:
    """Grant CREDITS (a decimal string, e.g. 12.5) to ACCOUNT."""
    import uuid
    from datetime import timedelta

    from billing_core.db.unit_of_work import utcnow
    from billing_core.ledger.commands import GrantCredits
    from billing_core.ledger.grants import GRANTABLE_SOURCES, PRIORITY_BY_SOURCE, PUBLIC_SOURCE
    from billing_core.ledger.handlers import execute
    from billing_core.units import parse_credits

    if expires_at is not None and expires_in_days is not None:
        raise click.UsageError("give --expires-at or --expires-in-days, not both")
    if expires_in_days:
        expires_at = utcnow() + timedelta(days=expires_in_days)
    settings = settings_or_exit()
    try:
        cmd = GrantCredits.validated(
            account=account,
            amount_mc=parse_credits(credits),
            idempotency_key=idempotency_key or f"cli-grant:{uuid.uuid4()}",
            source=GRANTABLE_SOURCES[source],
            expires_at=expires_at,
            reason=reason,
            priority=priority,
            actor=f"cli:{_operator()}",
        )
        with sessions(settings) as session_factory:
            receipt = execute(session_factory, cmd)
    except BillingError as exc:
        fail(f"{exc.code}: {exc.message}")
    replay = " (replay)" if receipt.replayed else ""
    click.echo(f"granted {credits} credits to {account}{replay}")
    click.echo(f"entry {receipt.entry_id} grant {receipt.grant_id}")
    expiry = cmd.expires_at.isoformat() if cmd.expires_at else "never"
    shown = cmd.priority if cmd.priority is not None else PRIORITY_BY_SOURCE[cmd.source]
    click.echo(f"source {PUBLIC_SOURCE[cmd.source]} priority {shown} expires {expiry}")


@click.command()
@click.argument("account")
def balance(account: str) -> None:
    """Show ACCOUNT's balance: available, held, total (credits), and whether it is flagged negative."""
    from billing_core.ledger.balances import read_balance
    from billing_core.units import format_credits

    with database(settings_or_exit()) as engine, engine.connect() as conn:
        found = read_balance(conn, account)
    if found is None:
        # As the API's 404: an account without a wallet has no balance, and zeros would say it has one.
        fail(f"unknown_account: no account {account!r}")
    click.echo(
        f"{account}: available {format_credits(found.available_mc)}  held {format_credits(found.held_mc)}  "
        f"total {format_credits(found.total_mc)} credits" + ("  [NEGATIVE, flagged]" if found.negative else "")
    )


@click.command()
@click.option("--limit", default=100, show_default=True)
def dead(limit: int) -> None:
    """List dead letters: Stripe events and usage reports that failed too often to be retried again."""
    from billing_core.intake.dead_letters import list_dead

    with sessions(settings_or_exit()) as session_factory:
        letters = list_dead(session_factory, limit=limit)
    for letter in letters:
        click.echo(
            f"{letter.id}\t{letter.kind}\t{letter.attempts} attempts\t{letter.received_at.isoformat()}\t{letter.error}"
        )
    click.echo(f"{len(letters)} dead letter(s)", err=True)


@click.command()
@click.argument("letter_id")
def replay(letter_id: str) -> None:
    """Process a dead (or failed, or waiting) Stripe event (evt_...) or usage report (its idempotency key)
    again now, with a fresh attempt count, and print how it ended."""
    from billing_core.intake.dead_letters import replay as replay_letter
    from billing_core.stripe.gateway import StripeGateway

    settings = settings_or_exit()
    gateway = None
    if settings.stripe_api_key is not None:
        gateway = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    with sessions(settings) as session_factory:
        status = replay_letter(session_factory, gateway, letter_id)
    if status is None:
        fail(f"nothing to replay under {letter_id!r} (unknown, or already applied)")
    click.echo(f"{letter_id}: {status}")
