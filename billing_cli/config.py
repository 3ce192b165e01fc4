"""``billing config``: the settings kept in the database (``billing_core/db/config.py`` lists them)."""

from __future__ import annotations

import getpass
import json

import click

from billing_cli.environment import fail, sessions, settings_or_exit
from billing_core.errors import InvalidSetting, UnknownSetting


def _shown(value: object) -> str:
    return json.dumps(value)


@click.group()
def config() -> None:
    """Read and change the database settings (the sales guard's capacity and threshold, tokens per credit)."""


@config.command("get")
@click.argument("key", required=False)
def get(key: str | None) -> None:
    """Print KEY's value as JSON (alone, for scripts), or every setting with where its value comes from."""
    from billing_core.db.config import KNOWN_KEYS, BillingConfig, setting_source

    with sessions(settings_or_exit()) as session_factory, session_factory() as session:
        try:
            if key is not None:
                click.echo(_shown(setting_source(session, key)[0]))
                return
            for name in KNOWN_KEYS:
                value, updated_at, updated_by = setting_source(session, name)
                origin = "default" if updated_at is None else f"set {updated_at.isoformat()} by {updated_by or '?'}"
                description = BillingConfig.model_fields[name].description or ""
                click.echo(f"{name} = {_shown(value)}\t({origin})\t{description}")
        except UnknownSetting as exc:
            fail(f"{exc.code}: {exc.message}", exit_code=2)


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--by", "actor", default=None, help="Who changes it (recorded); defaults to cli:<user>.")
def set_(key: str, value: str, actor: str | None) -> None:
    """Set KEY to VALUE (JSON: 80, null, ...), validated first: a bad key or value changes nothing (exit 2)."""
    from billing_core.db.config import parse_value, set_setting, validate_setting
    from billing_core.db.unit_of_work import utcnow

    parsed = parse_value(value)
    try:
        validate_setting(key, parsed)  # before connecting: a typo needs no database
        with sessions(settings_or_exit()) as session_factory, session_factory() as session, session.begin():
            stored = set_setting(session, key, parsed, now=utcnow(), actor=actor or f"cli:{getpass.getuser()}")
    except (UnknownSetting, InvalidSetting) as exc:
        fail(f"{exc.code}: {exc.message}", exit_code=2)
    click.echo(f"{key} = {_shown(stored)}")


@click.command("sales-guard")
def sales_guard() -> None:
    """Show the sales guard's figures now: outstanding credits in tokens against the paused threshold."""
    from billing_core.pricing.sales_guard import sales_state
    from billing_core.units import format_credits

    with sessions(settings_or_exit()) as session_factory, session_factory() as session:
        state = sales_state(session)
    if state.capacity_tokens is None:
        click.echo(
            f"no guard (upstream_monthly_tokens is null); outstanding {format_credits(state.outstanding_mc)} credits"
        )
        return
    click.echo(
        f"sales {'PAUSED' if state.paused else 'open'}: outstanding {format_credits(state.outstanding_mc)} credits = "
        f"{state.outstanding_tokens} tokens; pause at {state.threshold_tokens} tokens "
        f"({state.threshold_percent}% of {state.capacity_tokens})"
    )
