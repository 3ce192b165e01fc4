"""``billing limits``: an account's plan, token limits and usage against them."""

from __future__ import annotations

from typing import Any

import click

from billing_cli.environment import fail, sessions, settings_or_exit
from billing_core.errors import BillingError


@click.group()
def limits() -> None:
    """Token limits and plan quotas: show an account's usage, set its plan and overrides."""


def _limit(value: str | None) -> int | None:
    """``--hourly 5000`` or ``--hourly unlimited``."""
    assert value is not None
    if value.strip().lower() in ("unlimited", "none", "null"):
        return None
    try:
        number = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        fail(f"invalid_request: a limit is a whole number of tokens or 'unlimited', not {value!r}")
    if number < 0:
        fail(f"invalid_request: a limit cannot be negative, got {number}")
    return number


def _show(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


def _table_in_effect(settings: Any, session_factory: Any) -> Any:
    """The catalog version in effect now, as the API prices with it: the file's, or a version loaded with
    ``billing pricing load`` whose time has come (its plans included)."""
    from billing_core.pricing.catalog import load_price_table
    from billing_core.pricing.versions import PriceBook

    return PriceBook(load_price_table(settings.billing_pricing_file), session_factory=session_factory).current()


@limits.command("show")
@click.argument("account")
def limits_show(account: str) -> None:
    """ACCOUNT's plan, its limits, and the tokens used this hour, day and month."""
    from billing_core.db.wakeups import redis_client
    from billing_core.ledger.wallet_rows import wallet_exists
    from billing_core.pricing.limits import TokenLimits, policies

    settings = settings_or_exit()
    url = settings.limits_redis_url or settings.redis_url
    with sessions(settings) as session_factory:
        table = _table_in_effect(settings, session_factory)
        with session_factory() as session:
            if not wallet_exists(session, account):
                fail(f"unknown_account: no account {account!r}")
            policy = policies(session, [account], table)[account]
        # Without a Redis to ask (no REDIS_URL): the counters as last flushed into usage_records.
        token_limits = TokenLimits(redis_client(url or "redis://127.0.0.1:1/0"), prefix=settings.limits_prefix)
        state = token_limits.usage_view(account, policy, session_factory=session_factory)
    click.echo(f"{account}: plan {policy.plan}" + ("" if state.counted else "  (Redis unreachable: last flush)"))
    for w in state.windows:
        share = "" if w.limit is None else f" ({w.percentage}%)"
        click.echo(f"  {w.metric:<13} {w.current:>15,} / {_show(w.limit):<15}{share}  resets {w.resets_at.isoformat()}")


@limits.command("set")
@click.argument("account")
@click.option("--plan", default=None, help="A plan of the catalog (e.g. free, pro, business); 'default' clears it.")
@click.option("--hourly", default=None, help="Tokens per hour, or 'unlimited' (overrides the plan's).")
@click.option("--daily", default=None, help="Tokens per day, or 'unlimited'.")
@click.option("--monthly", default=None, help="Tokens per calendar month, or 'unlimited'.")
@click.option("--clear-overrides", is_flag=True, help="Back to the plan's limits (before the options above).")
def limits_set(
    account: str, plan: str | None, hourly: str | None, daily: str | None, monthly: str | None, clear_overrides: bool
) -> None:
    """Set ACCOUNT's plan and limit overrides (creates the account if it is new)."""
    from billing_core.accounts.profile import update_account
    from billing_core.ledger.commands import check_account
    from billing_core.pricing.limits import check_plan, policies

    settings = settings_or_exit()
    with sessions(settings) as session_factory:
        table = _table_in_effect(settings, session_factory)
    changes: dict[str, Any] = {}
    try:
        account = check_account(account)
        if plan is not None:
            changes["plan"] = None if plan == "default" else check_plan(table, plan)
        given = {
            name: _limit(value)
            for name, value in (("hourly_tokens", hourly), ("daily_tokens", daily), ("monthly_tokens", monthly))
            if value is not None
        }
        if clear_overrides and given:
            # Cleared first, then the ones given: two steps, as the API's PUT would need two calls.
            with sessions(settings) as session_factory:
                update_account(session_factory, account, limit_overrides=None)
            changes["limit_overrides"] = given
        elif clear_overrides:
            changes["limit_overrides"] = None
        elif given:
            changes["limit_overrides"] = given
        if not changes:
            fail("nothing to set: give --plan, --hourly, --daily, --monthly or --clear-overrides", exit_code=2)
        with sessions(settings) as session_factory:
            update_account(session_factory, account, **changes)
            with session_factory() as session:
                policy = policies(session, [account], table)[account]
    except BillingError as exc:
        fail(f"{exc.code}: {exc.message}")
    click.echo(
        f"{account}: plan {policy.plan}  hourly {_show(policy.hourly)}  daily {_show(policy.daily)}  "
        f"monthly {_show(policy.monthly)} tokens"
    )
